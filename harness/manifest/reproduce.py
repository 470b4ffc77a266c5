"""``harness reproduce RUN_ID``: fetch a run's manifest from MLflow, list what differs from this
environment, re-run it from the manifest alone (no suite file), and compare the final metrics.

Errors a user can fix (unknown run, no manifest, unreachable store, drift without
``--allow-drift``) are ``ReproduceError`` with one line; the CLI prints it without a traceback.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.manifest.compare import DEFAULT_ATOL, DEFAULT_RTOL, MetricCheck, compare, exact_expected
from harness.manifest.drift import Difference, data_differences, differences


class ReproduceError(Exception):
    """One line for the user; ``status``: the exit status."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


@dataclass
class Original:
    run_id: str
    uri: str
    manifest: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]


@dataclass
class Outcome:
    new_run_id: str | None
    exact: bool
    checks: list[MetricCheck]
    drift: list[Difference]
    data_drift: list[Difference] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """identical | within_tolerance | differs (metrics, or data the re-run read)."""
        if self.data_drift or not self.checks or not all(c.ok for c in self.checks):
            return "differs"
        return "identical" if all(c.recorded == c.now for c in self.checks) else "within_tolerance"


@contextlib.contextmanager
def _quick_http() -> Iterator[None]:
    """An unreachable tracking server fails in seconds, not after MLflow's minutes of retries."""
    quiet = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
             "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}   # one small file: no bar
    saved = {k: os.environ.get(k) for k in quiet}
    for key, value in quiet.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def fetch(run_id: str, tracking_uri: str | None = None) -> Original:
    """The run, its manifest and its final metrics; ReproduceError when any is missing."""
    from harness.tracking import RunWriter
    from harness.tracking.client import sqlite_path, tracking_uri as resolve_uri
    from harness.redact import redact
    from harness.tracking.schema import Artifact, Role, Tag

    uri = resolve_uri(tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():  # MLflow would create an empty store there
        raise ReproduceError(f"no MLflow store at {uri} ({db} does not exist); pass --tracking-uri")
    with _quick_http():
        try:
            client = RunWriter(tracking_uri).client
            run = client.get_run(run_id)
        except Exception as exc:  # noqa: BLE001 - MLflow raises several kinds for one cause
            code = getattr(exc, "error_code", "")
            if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in str(exc).lower():
                raise ReproduceError(f"no run {run_id!r} in {redact(uri)}") from None
            raise ReproduceError(f"cannot read the tracking store {redact(uri)}: {_first_line(exc)}") from None
        tags = dict(run.data.tags)
        _check_reproducible(run_id, tags)
        try:
            names = {a.path for a in client.list_artifacts(run_id)}
            if Artifact.MANIFEST not in names:
                raise FileNotFoundError
            with tempfile.TemporaryDirectory() as tmp:
                path = client.download_artifacts(run_id, Artifact.MANIFEST, tmp)
                manifest = json.loads(Path(path).read_text())
        except (FileNotFoundError, OSError, ValueError):
            why = tags.get(Tag.MANIFEST, "")
            hint = (f" ({why})" if why.startswith("not recorded") else
                    " (it was recorded before harness wrote manifests, or is not a run or trial)")
            role = tags.get(Tag.ROLE)
            if role in (Role.PARENT, Role.TUNE_PARENT):
                hint = f" (it is a {role} run; reproduce one of its child runs)"
            raise ReproduceError(f"run {run_id} has no {Artifact.MANIFEST}{hint}") from None
    return Original(run_id, uri, manifest, dict(run.data.metrics), tags)


def _check_reproducible(run_id: str, tags: dict[str, str]) -> None:
    from harness.tracking.schema import Role, Tag

    if tags.get(Tag.REUSED_RUN_ID):
        raise ReproduceError(f"run {run_id} re-used the result of run {tags[Tag.REUSED_RUN_ID]}; reproduce that one")
    if tags.get(Tag.ROLE) == Role.TUNE_TRIAL and tags.get(Tag.TRIAL_STATE, "COMPLETE") != "COMPLETE":
        raise ReproduceError(f"trial run {run_id} ended {tags[Tag.TRIAL_STATE]}; only a complete trial has "
                             f"final metrics to compare")
    if tags.get(Tag.STATUS) not in (None, "finished"):
        raise ReproduceError(f"run {run_id} ended {tags[Tag.STATUS]}; only a finished run has final metrics "
                             f"to compare")


def rerun_suite(original: Original, output_dir: str | None = None) -> Any:
    """The manifest's suite, pinned to the run's device type and torch threads (so CPU reductions
    add up in the same order), writing to a fresh folder (never resuming the original's runs)."""
    from harness.suite import SuiteError, parse_suite

    m = original.manifest
    data = json.loads(json.dumps(m["suite"]))
    pins = {"threads": m["determinism"]["threads"], "device": m["device"]["type"]}
    data.setdefault("train", {}).update(pins)
    for variant in data["variants"].values():
        for key in pins:
            if key in variant.get("train", {}):
                variant["train"][key] = pins[key]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data["suite"]["output_dir"] = output_dir or str(
        Path("results") / data["suite"]["name"] / "reproduce" / f"{original.run_id[:12]}-{stamp}")
    try:
        return parse_suite(data)
    except SuiteError as exc:
        raise ReproduceError(f"the manifest's suite no longer loads: {exc.problems[0]}") from None


def reproduce(original: Original, *, allow_drift: bool = False, rtol: float = DEFAULT_RTOL,
              atol: float = DEFAULT_ATOL, output_dir: str | None = None,
              echo: Callable[[str], None] = print) -> Outcome:
    """List the drift, refuse it unless ``allow_drift``, re-run, compare; the new run is tagged
    ``reproduces=<run id>`` and ``harness.reproduction=<verdict>``."""
    from harness import data_files, tracking
    from harness.manifest.environment import apply_determinism
    from harness.runner import run_suite
    from harness.tracking.schema import MAX_TAG_CHARS, Tag

    m = original.manifest
    drift = differences(m)
    for d in drift:
        echo(f"drift: {d.line()}")
    blocking = [d for d in drift if d.blocking]
    if blocking and not allow_drift:
        raise ReproduceError(f"{len(blocking)} manifest entr{'y differs' if len(blocking) == 1 else 'ies differ'} "
                             f"from this environment (listed above); the re-run would not be a reproduction. "
                             f"Pass --allow-drift to re-run anyway")
    suite = rerun_suite(original, output_dir)
    apply_determinism(m["determinism"])
    tags = {Tag.REPRODUCES: original.run_id}
    if blocking:
        tags[Tag.DRIFT] = "; ".join(d.line() for d in blocking)[:MAX_TAG_CHARS]
    tracking.configure(enabled=True, tracking_uri=original.uri, tags=tags)
    contract = original.tags.get(Tag.CONTRACT) != "skipped"
    try:
        results = run_suite(suite, contract=contract)
    finally:
        tracking.configure(enabled=True, tracking_uri=None)
    result = results[0]
    if result.status != "finished":
        raise ReproduceError(f"the re-run {result.status}: {result.error or 'no reason recorded'}", status=3)
    exact = exact_expected(m)
    run = result.run
    outcome = Outcome(result.run_id, exact, compare(original.metrics, result.metrics, exact=exact, rtol=rtol,
                                                    atol=atol), drift,
                      data_differences(m.get("data_files", {}), data_files.files_for(run.task, run.task_options)))
    if result.run_id:
        tracking.RunWriter(original.uri).tags(result.run_id, {Tag.REPRODUCTION: outcome.verdict})
    return outcome
