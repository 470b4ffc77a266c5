"""``runs.jsonl``: one ``dataclasses.asdict(RunResult)`` per line, appended the moment a run ends.

One reader serves both the runner (resume) and ``harness report``: blank lines are skipped, and a
line that is not a result (a line cut short by a crash) is skipped and counted, never fatal, so a
crash loses nothing that finished before or after it (``RunLogContents.warning`` says which lines
were skipped). Where several results share a (variant, seed), ``merge_per_run`` keeps the one a
report shows: the latest finished, else the latest of any status; the runner resumes from the
finished ones alike.
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


def merge_per_run(results: Iterable[RunResult]) -> list[RunResult]:
    """One result per (variant, seed), kept at the position of its first appearance: the latest
    finished one, else the latest of any status. A run that finished keeps its result when a later
    attempt failed or was killed (as resume keeps it), whether the results come from one
    runs.jsonl or from every invocation of a suite in MLflow."""
    chosen: dict[tuple[str, int], RunResult] = {}
    for result in results:
        key = (result.run.variant, int(result.run.seed))
        previous = chosen.get(key)
        if previous is None or result.status in FINISHED_STATUSES or previous.status not in FINISHED_STATUSES:
            chosen[key] = result
    return list(chosen.values())


@dataclass
class RunLogContents:
    results: list[RunResult] = field(default_factory=list)          # every readable line, in file order
    skipped: list[tuple[int, str]] = field(default_factory=list)    # (line number, why it is no result)
    path: Path | None = None

    def warning(self) -> str | None:
        """One line naming the file, the lines skipped and why the first was, or None when every
        line was read."""
        if not self.skipped:
            return None
        numbers = ", ".join(str(n) for n, _ in self.skipped)
        plural = "s" if len(self.skipped) > 1 else ""
        return (f"warning: {self.path}: skipped line{plural} {numbers}, not a run result "
                f"({self.skipped[0][1]}; a crash can cut the last line short)")


class RunLog:
    """The ``runs.jsonl`` of one output folder (or the file itself)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        self.path = path if path.suffix == ".jsonl" else path / Artifact.RUNS

    def read(self) -> RunLogContents:
        contents = RunLogContents(path=self.path)
        if not self.path.is_file():
            return contents
        with self.path.open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    contents.results.append(result_from_dict(json.loads(line)))
                except json.JSONDecodeError as exc:
                    contents.skipped.append((lineno, f"line {lineno}: not valid JSON ({exc.msg}: column {exc.colno})"))
                except (TypeError, ValueError) as exc:
                    contents.skipped.append((lineno, f"line {lineno}: {exc}"))
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
