"""The default executor: one run at a time in this process, its metrics into MLflow as they are
logged and a progress bar per run. Needs nothing beyond harness itself."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator


class LocalExecutor:
    name = "local"
    in_process = True          # the driver builds the task once and hands it to every run

    @contextlib.contextmanager
    def session(self, execution: Any, runs: list[Any]) -> Iterator[None]:
        yield

    def train(self, runs: list[Any], ex: Any) -> None:
        from harness.runner import run_in_process

        for run in runs:
            with ex.interrupts.held():
                ex.begin(run)
            result = run_in_process(run, ex.plans[run.variant], ex.task, ex.hook, ex.progress, ex.console,
                                    ex.suite.output_dir)
            with ex.interrupts.held():
                ex.finish(run, result)
