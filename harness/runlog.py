"""``runs.jsonl``: one ``dataclasses.asdict(RunResult)`` per line, appended the moment a run ends.

One reader serves both the runner (resume) and ``harness report``: a later line for the same
(variant, seed) supersedes an earlier one, blank lines are skipped, and a line that is not a
result (a line cut short by a crash) is skipped and counted, never fatal, so a crash loses nothing
that finished before or after it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness.specs import Run, RunResult
from harness.tracking.schema import Artifact

FINISHED_STATUSES = ("finished", "skipped")   # skipped = re-used from an earlier invocation
FAILED_STATUSES = ("failed", "killed")

_RUN_FIELDS = {f.name for f in dataclasses.fields(Run)}
_RESULT_FIELDS = {f.name for f in dataclasses.fields(RunResult)}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def result_from_dict(data: Mapping[str, Any]) -> RunResult:
    """Rebuild a RunResult from ``dataclasses.asdict(result)``; unknown keys are ignored."""
    if not isinstance(data, Mapping) or not isinstance(data.get("run"), Mapping):
        raise ValueError("expected an object with a 'run' object")
    run_data = {k: v for k, v in data["run"].items() if k in _RUN_FIELDS}
    missing = [k for k in ("suite", "variant", "seed", "task", "model", "mixer", "metric") if k not in run_data]
    if missing:
        raise ValueError(f"run is missing {', '.join(missing)}")
    run_data["overrides"] = tuple(run_data.get("overrides") or ())
    run_data["seed"] = int(run_data["seed"])
    fields = {k: v for k, v in data.items() if k in _RESULT_FIELDS and k != "run"}
    if "status" not in fields:
        raise ValueError("result is missing status")
    return RunResult(run=Run(**run_data), **fields)


def latest_per_run(results: Iterable[RunResult]) -> list[RunResult]:
    """Last result per (variant, seed) wins, kept at the position of its first appearance."""
    latest: dict[tuple[str, int], RunResult] = {}
    for result in results:
        latest[(result.run.variant, int(result.run.seed))] = result
    return list(latest.values())


@dataclass
class RunLogContents:
    results: list[RunResult] = field(default_factory=list)   # every readable line, in file order
    bad_lines: list[str] = field(default_factory=list)        # "runs.jsonl:3: not valid JSON (...)"


class RunLog:
    """The ``runs.jsonl`` of one output folder (or the file itself)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        self.path = path if path.suffix == ".jsonl" else path / Artifact.RUNS

    def read(self) -> RunLogContents:
        contents = RunLogContents()
        if not self.path.is_file():
            return contents
        with self.path.open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    contents.results.append(result_from_dict(json.loads(line)))
                except json.JSONDecodeError as exc:
                    contents.bad_lines.append(f"{self.path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})")
                except (TypeError, ValueError) as exc:
                    contents.bad_lines.append(f"{self.path}:{lineno}: not a run result ({exc})")
        return contents

    def finished(self) -> dict[str, RunResult]:
        """config_hash -> the last finished result (what a re-run skips)."""
        return {r.run.config_hash: r for r in self.read().results if r.status in FINISHED_STATUSES}

    def append(self, result: RunResult) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(_jsonable(asdict(result))) + "\n"
        if self.path.exists() and self.path.stat().st_size:
            with self.path.open("rb") as fh:
                fh.seek(-1, 2)
                if fh.read(1) != b"\n":  # a line cut short by a crash must not swallow this one
                    line = "\n" + line
        with self.path.open("a") as fh:
            fh.write(line)
