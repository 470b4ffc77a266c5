"""Each study's best trial: ``results/<suite>/best_params.<study>.json`` after tuning (keyed by
storage inside), and the values ``harness run SUITE --best`` gives every variant, read from the
studies themselves, before re-running it over all seeds."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import optuna

from harness.suite import Suite
from harness.tune.errors import TuneError
from harness.tune.storage import DEFAULT_STORAGE, display_url, open_storage
from harness.tune.study import study_name
from harness.tune.trial_suite import variant_values


def best_path(suite: Suite, study: str) -> Path:
    """One file per study, so that a variant, or a --study of its own, never overwrites another's."""
    return suite.output_dir / f"best_params.{re.sub(r'[^A-Za-z0-9._-]+', '_', study)}.json"


def set_items(values: dict[str, Any]) -> list[str]:
    """Suite values as the ``--set`` items that give them, for people to copy from a best_params file
    (TOML and JSON spell booleans, finite numbers and strings alike, and --set reads both)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def write_best(suite: Suite, variant: str, entry: dict[str, Any]) -> Path:
    """Record a study's summary (``entry``, with its ``study`` and ``storage``) in the study's file,
    under its storage: a study of the same name in another storage keeps its own entry."""
    path = best_path(suite, entry["study"])
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            pass
    storages = data.get("storages") if isinstance(data.get("storages"), dict) else {}
    storages[entry["storage"]] = entry
    data = {"suite": suite.name, "variant": variant, "study": entry["study"], "storages": storages}
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def _best_params(store: Any, suite: Suite, variant: str, shown: str, tune_hint: str) -> dict[str, Any] | str:
    """The best trial's params of the variant's study, or the problem that there is none."""
    name = study_name(suite, variant)
    try:
        study = optuna.load_study(study_name=name, storage=store)
    except KeyError:
        return f"--best: no study {name!r} in {shown} for variant {variant!r}; tune it first: {tune_hint}"
    try:
        return dict(study.best_trial.params)
    except ValueError:
        return f"--best: study {name!r} has no completed trial yet; run {tune_hint}"


def best_values(suite: Suite, storage: str | None = None, variants: list[str] | None = None, *,
                suite_path: str = "SUITE") -> dict[str, Any]:
    """Each variant's best trial's params as suite values (``{"variants.<v>.train.lr": 0.003}``),
    from studies ``<suite>.<variant>``. Raises TuneError naming every variant without a usable study
    and the command that makes one."""
    url = storage or DEFAULT_STORAGE
    store_flag = f" --storage {url}" if storage else ""
    try:
        store = open_storage(url, must_exist=True)
    except TuneError as exc:
        raise TuneError(f"{exc} (no tuning results; run `harness tune {suite_path}{store_flag}` first)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for variant in variants or list(suite.variants):
        found = _best_params(store, suite, variant, display_url(url),
                             f"harness tune {suite_path} -v {variant}{store_flag}")
        if isinstance(found, str):
            problems.append(found)
        else:
            values.update(variant_values(variant, found))
    if problems:
        raise TuneError("\n".join(problems))
    return values
