"""Hook specifications of harness. Implement them with ``@harness.hookimpl``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    import click

    from harness.specs import ComponentSpec, MetricSpec, MixerSpec, ModelSpec, Run, RunResult, TaskSpec
    from harness.suite import Suite

hookspec = pluggy.HookspecMarker("harness")
hookimpl = pluggy.HookimplMarker("harness")


# -- Registration: called once, when a registry is first used -------------------------------

@hookspec
def register_mixers(register: Callable[[MixerSpec], None]) -> None:
    """Register sequence mixers: ``register(MixerSpec("name", "pkg.module:Class", ...))``."""


@hookspec
def register_models(register: Callable[[ModelSpec], None]) -> None:
    """Register backbones and whole-model wrappers that host a mixer (``vit``, ``lm``, ...)."""


@hookspec
def register_tasks(register: Callable[[TaskSpec], None]) -> None:
    """Register tasks: data, loss and evaluation."""


@hookspec
def register_metrics(register: Callable[[MetricSpec], None]) -> None:
    """Register metrics with their direction (``higher_is_better``)."""


@hookspec
def register_components(register: Callable[[ComponentSpec], None]) -> None:
    """Register plugin-defined components of any kind, e.g. ``("m3po.gate", "jsd")``."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``harness`` command line. Import heavy modules inside the command."""


# -- Observers: trackers and reporters ------------------------------------------------------

@hookspec
def suite_started(suite: Suite, runs: list[Run], output_dir: str) -> None:
    """Called once before the first run of a suite, with every planned run."""


@hookspec
def run_started(run: Run) -> str | None:
    """Called before a run trains; trackers open their run here and return its id (the runner
    stores the first id returned as ``RunResult.run_id``), others return None."""


@hookspec
def metrics_logged(run: Run, metrics: dict[str, float], step: int) -> None:
    """Called at every logging step with plain floats (``train/loss``, ``val/accuracy``, ...)."""


@hookspec
def run_finished(run: Run, result: RunResult) -> None:
    """Called after every run, failed, skipped and killed ones included (``result.status``)."""


@hookspec
def suite_finished(suite: Suite, results: list[RunResult], output_dir: str) -> None:
    """Called once after all runs; reporters write tables, plots and artifacts."""


