"""The manifest of one run: everything needed to re-run it without its suite file and to tell
whether the environment it is re-run in differs. Logged to the run in MLflow as ``manifest.json``
plus a few params and tags (``log_manifest``).

Recorded, never hashed into the resume key (``Suite.runs``): the git commit and dirty flag of the
project and of each plugin installed from a checkout, and the data hashes.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

FORMAT = 1


def run_suite_data(suite: Any, variant: str, seed: int) -> dict[str, Any]:
    """The suite reduced to one (variant, seed), as plain data: ``parse_suite`` of it gives back
    exactly this run (extends, --set and tuned values are already applied)."""
    data = json.loads(json.dumps(suite.model_dump(), default=str))
    data["variants"] = {variant: data["variants"][variant]}
    data["suite"]["seeds"] = [seed]
    data["suite"]["reference"] = variant
    data["suite"]["output_dir"] = None          # a re-run writes elsewhere (see manifest.reproduce)
    return data


def build_manifest(suite: Any, run: Any, *, role: str) -> dict[str, Any]:
    """The manifest of ``run`` (a ``harness.specs.Run`` of ``suite``), once it has trained: the
    task's data files are known by then (tasks read lazily)."""
    from harness import data_files
    from harness.manifest import environment
    from harness.manifest.sources import core_source, plugin_sources
    from harness.train import effective_train

    train = effective_train(run.train)
    files = data_files.files_for(run.task, run.task_options)
    return {
        "format": FORMAT,
        "run": {"suite": run.suite, "variant": run.variant, "seed": run.seed, "role": role,
                "config_hash": run.config_hash, "metric": run.metric},
        "suite": run_suite_data(suite, run.variant, run.seed),
        "resolved": {"task": run.task, "task_options": run.task_options, "model": run.model,
                     "model_config": run.model_config, "mixer": run.mixer, "mixer_options": run.mixer_options,
                     "train": train, "budget": run.budget},
        "seed": run.seed,
        "versions": environment.versions(),
        "sources": {"harness": core_source().as_dict(),
                    **{name: s.as_dict() for name, s in plugin_sources().items()}},
        "device": environment.device(train),
        "determinism": environment.determinism(int(train["threads"])),
        "system": environment.system(),
        "cwd": os.getcwd(),
        "data_files": files,
    }


def manifest_params(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's scalars as MLflow params (``manifest.*``), for the runs table and search."""
    from harness.tracking.schema import MANIFEST_PARAM_PREFIX as P

    v, det = manifest["versions"], manifest["determinism"]
    core = manifest["sources"]["harness"]
    params: dict[str, Any] = {
        f"{P}python": v["python"], f"{P}torch": v["torch"], f"{P}numpy": v["numpy"], f"{P}harness": v["harness"],
        f"{P}git_commit": core.get("commit"), f"{P}git_dirty": core.get("dirty"),
        f"{P}device": manifest["device"]["type"], f"{P}seed": manifest["seed"], f"{P}threads": det["threads"],
        f"{P}deterministic_algorithms": det["deterministic_algorithms"],
        f"{P}os": manifest["system"]["os"], f"{P}data_files": len(manifest["data_files"]),
    }
    params.update({f"{P}plugin.{name}": version for name, version in v["plugins"].items()})
    if manifest["data_files"]:
        from harness.data_files import digest

        params[f"{P}data_sha256"] = digest(manifest["data_files"])
    return params


def log_manifest(writer: Any, run_id: str, suite: Any, run: Any, *, role: str) -> dict[str, Any]:
    """Build the manifest of ``run`` and log it to MLflow run ``run_id`` through ``writer``."""
    from harness.tracking.schema import Artifact, Tag

    manifest = build_manifest(suite, run, role=role)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Artifact.MANIFEST
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        writer.artifact(run_id, path)
    writer.params(run_id, manifest_params(manifest))
    core = manifest["sources"]["harness"]
    writer.tags(run_id, {Tag.GIT_DIRTY: str(bool(core.get("dirty"))).lower(), Tag.MANIFEST: Artifact.MANIFEST})
    return manifest
