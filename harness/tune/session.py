"""``harness tune``: check every chosen variant, then tune each in turn (its study, its MLflow
parent run, its workers: local processes, or Ray tasks with ``--executor ray``) and print the best
trial per variant."""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any, Callable

import optuna

from harness import tracking
from harness.suite import Suite, SuiteError
from harness.tune.best import best_path, set_items, write_best
from harness.tune.errors import TuneError
from harness.tune.mlflow_runs import VariantRuns
from harness.tune.space import Param, format_value, space_for
from harness.tune.storage import DEFAULT_STORAGE, SQLITE_PREFIX, display_url, is_journal, open_storage
from harness.tune.study import create_or_join, describe_pruner, study_name, summarize, waiting_trials
from harness.tune.trial_suite import check_space, trial_config, trial_steps, tuned_metric, variant_values
from harness.tune.trials import TrialContext, work
from harness.tune.workers import interrupt_on_signals, share_cpus, spawn_workers, stop_workers, wait_workers


@dataclass
class Prepared:
    """A variant checked before any trial trains: its space, where that came from, its trial data."""

    variant: str
    space: dict[str, Param]
    source: str
    data: dict[str, Any]


@dataclass
class Session:
    """One ``harness tune`` invocation, as every variant's study sees it."""

    suite: Suite
    suite_path: str
    overrides: list[str]
    trials: int
    url: str
    storage: Any                  # the opened Optuna storage
    study: str | None             # --study, for one variant
    workers: int
    writer: tracking.RunWriter | None   # None with --no-track
    task: Any
    metric: str
    direction: str
    worker_index: int | None
    parent_run_id: str | None
    echo: Callable[[str], None]
    cluster: Any = None           # a harness.executors.cluster.Cluster with --executor ray
    resources: Any = None         # what each trial asks of it (harness.executors.resources.TaskResources)
    at_once: int = 1              # Ray tasks in flight

    @property
    def joined(self) -> bool:
        """A worker spawned by --workers: it joins the study, never creates or tops it up, and starts no workers."""
        return self.worker_index is not None


def _chosen_variants(suite: Suite, variants: list[str] | None, study: str | None, workers: int | None) -> list[str]:
    if variants:
        unknown = [v for v in variants if v not in suite.variants]
        if unknown:
            from harness.registry import suggest

            raise SuiteError([f"-v {u}: no such variant.{suggest(u, list(suite.variants))}" for u in unknown])
    chosen = list(variants or suite.variants)
    if study and len(chosen) > 1:
        raise TuneError(f"--study {study} names one study; pick one variant with -v (studies default to "
                        f"{suite.name}.<variant>)")
    if workers is not None and workers < 1:
        raise TuneError("--workers must be at least 1")
    return chosen


def _prepare(suite: Suite, variant: str) -> Prepared:
    space, source = space_for(suite, variant)
    return Prepared(variant, space, source, check_space(suite, variant, space))


def _variant_runs(s: Session, p: Prepared, name: str, steps: int, waiting: int) -> VariantRuns:
    """The variant's MLflow runs: a new tune-parent, or the spawning process's in a worker; none
    when nothing is left to run."""
    runs = VariantRuns(s.writer, s.suite.name, p.variant, name)
    if not (s.writer and waiting):
        return runs
    if s.joined and s.parent_run_id:
        runs.join(s.parent_run_id)
        return runs
    shown = display_url(s.url)
    runs.open_parent(storage=shown, metric=s.metric, direction=s.direction, params={
        "study": name, "storage": shown, "trials": s.trials, "metric": s.metric,
        "executor": "ray" if s.cluster else "local", "workers": s.at_once if s.cluster else s.workers,
        "direction": s.direction, "seed": s.suite.tune.seed, "steps": steps, "space_source": p.source,
        "space": json.dumps({k: q.as_dict() for k, q in p.space.items()}),
        "sampler": "TPE (seeded per trial)", "pruner": describe_pruner(steps)})
    return runs


def _record_best(s: Session, variant: str, name: str, study: optuna.Study, runs: VariantRuns) -> dict[str, Any]:
    """The variant's summary, written to its study's best_params file and attached to the parent run."""
    summary = summarize(study)
    summary.update(study=name, storage=display_url(s.url), metric=s.metric, direction=s.direction,
                   overrides=set_items(variant_values(variant, summary["params"])))
    path = write_best(s.suite, variant, summary)
    left = summary["trials"].get("running", 0) + summary["trials"].get("waiting", 0)
    if left:
        s.echo(f"study {name}: {left} trial(s) still running or queued (another worker, or one that died)")
    runs.attach(path)
    return summary


def _run_study(s: Session, p: Prepared, name: str, study: optuna.Study, ctx: TrialContext,
               waiting: int) -> dict[str, Any] | None:
    """Work through the queue with this process and its spawned workers; the summary (not in a worker)."""
    procs: list[subprocess.Popen[bytes]] = []
    status = "FINISHED"
    try:
        if s.cluster is not None:
            from harness.tune.ray_trials import work_on_ray

            work_on_ray(study, s.storage, ctx, _job(s, p, name, ctx.steps), s.cluster, s.resources, s.at_once, s.echo)
            return _record_best(s, p.variant, name, study, ctx.runs)
        if not s.joined and s.workers > 1 and waiting:
            procs = spawn_workers(s.workers, suite_path=s.suite_path, variant=p.variant, trials=s.trials,
                                  storage=s.url, study=name, overrides=s.overrides, track=s.writer is not None,
                                  tracking_uri=s.writer.uri if s.writer else None, parent_id=ctx.runs.parent_id)
        work(study, s.storage, ctx)
        wait_workers(procs, s.echo)
        return None if s.joined else _record_best(s, p.variant, name, study, ctx.runs)
    except BaseException:
        status = "KILLED"
        stop_workers(procs)
        raise
    finally:
        if not s.joined and ctx.runs.parent_id:
            ctx.runs.close_parent(summarize(study), s.metric, status)


def _job(s: Session, p: Prepared, name: str, steps: int) -> Any:
    """What every Ray worker needs to run any trial of the variant's study."""
    from harness.tune.ray_trials import TrialJob

    return TrialJob(url=s.url, study=name, suite=s.suite, variant=p.variant, data=p.data, space=p.space,
                    metric=s.metric, steps=steps, seed=s.suite.tune.seed, trials=s.trials, threads=s.resources.threads)


def _tune_variant(s: Session, p: Prepared) -> dict[str, Any] | None:
    steps = trial_steps(s.suite, p.data, p.variant)
    name = s.study or study_name(s.suite, p.variant)
    study = create_or_join(name, s.storage, direction=s.direction, trials=s.trials, seed=s.suite.tune.seed,
                           steps=steps, space=p.space, metric=s.metric, config=trial_config(p.data),
                           join_only=s.joined, echo=s.echo)
    waiting = waiting_trials(study)
    if not s.joined:
        how = f"{s.at_once} Ray task(s) at once" if s.cluster else f"{s.workers} worker(s)"
        s.echo(f"tuning {p.variant}: study {name} in {display_url(s.url)}, {s.trials} trials ({waiting} to run), "
               f"{how}, {steps} steps each; {s.direction} {s.metric}; space from {p.source}: "
               + ", ".join(q.describe() for q in p.space.values()))
    runs = _variant_runs(s, p, name, steps, waiting)
    ctx = TrialContext(s.suite, p.variant, p.data, p.space, s.metric, steps, s.task, runs, s.worker_index or 0,
                       s.echo)
    if not waiting and not s.joined:
        s.echo(f"study {name}: no queued trials left; raise --trials above the study's budget to add some")
    return _run_study(s, p, name, study, ctx, waiting)


def tune(suite: Suite, *, suite_path: str, overrides: list[str], variants: list[str] | None = None,
         trials: int | None = None, storage: str | None = None, study: str | None = None,
         workers: int | None = None, track: bool = True, tracking_uri: str | None = None,
         worker_index: int | None = None, parent_run_id: str | None = None, executor: str = "local",
         address: str | None = None, echo: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Tune each variant in turn; returns a summary per variant. ``worker_index`` marks a process
    started by ``--workers`` (it joins the study, never creates or tops it up, and starts no workers).
    ``executor="ray"``: trials run as Ray tasks on the cluster at ``address`` (``ray_trials``), at
    most ``workers`` at once (default: as many as fit)."""
    from harness.plan import build_task

    tracking.configure(enabled=track, tracking_uri=tracking_uri)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    chosen = _chosen_variants(suite, variants, study, workers)
    metric, direction = tuned_metric(suite)
    prepared = [_prepare(suite, v) for v in chosen]  # every chosen variant, before the first trial trains
    url = storage or DEFAULT_STORAGE
    if executor == "ray":
        url = _shared_storage(url, echo)
    session = Session(suite=suite, suite_path=suite_path, overrides=overrides, trials=trials or suite.tune.trials,
                      url=url, storage=open_storage(url), study=study, workers=workers or 1,
                      writer=tracking.RunWriter() if track else None,
                      task=build_task(suite) if executor != "ray" else None, metric=metric,
                      direction=direction, worker_index=worker_index, parent_run_id=parent_run_id, echo=echo)
    if session.joined:
        interrupt_on_signals()
    elif executor == "ray":
        return _on_ray(session, prepared, address, workers)
    elif session.workers > 1:
        share_cpus(session.workers)
    return _tune_all(session, prepared)


def _shared_storage(url: str, echo: Callable[[str], None]) -> str:
    """Ray workers open the storage themselves: a file storage by its absolute path (and only on
    this machine), a server database as it is."""
    from pathlib import Path

    if is_journal(url):
        path = str(Path(url).resolve())
    elif url.startswith(SQLITE_PREFIX) and url[len(SQLITE_PREFIX):] not in ("", ":memory:"):
        path = str(Path(url[len(SQLITE_PREFIX):]).resolve())
        url = SQLITE_PREFIX + path
    else:
        return url
    echo(f"note: storage {path} is a file: Ray workers on other machines cannot reach it; share a study "
         f"across machines with a PostgreSQL --storage (postgresql+psycopg://user:password@host/db)")
    return path if is_journal(url) else url


def _on_ray(session: Session, prepared: list[Prepared], address: str | None, workers: int | None
            ) -> dict[str, dict[str, Any]]:
    """Tune on the Ray cluster: connected for the whole invocation, trials as tasks."""
    from harness.executors.cluster import connect
    from harness.executors.resources import task_resources

    with connect(address, why="harness tune --executor ray") as cluster:
        interrupt_on_signals()  # ray.init made SIGTERM exit at once: interrupt instead, so trials are recorded
        session.cluster = cluster
        session.resources = task_resources(session.suite.resources, cluster_cpus=cluster.cpus)
        cluster.check_fits(session.resources.num_cpus, session.resources.num_gpus)
        fit = cluster.capacity(session.resources.num_cpus, session.resources.num_gpus)
        session.at_once = workers or fit
        session.echo(f"executor ray: {cluster.describe()}; {session.resources.describe().replace('run', 'trial')}, "
                     f"up to {session.at_once} at once")
        return _tune_all(session, prepared)


def _tune_all(session: Session, prepared: list[Prepared]) -> dict[str, dict[str, Any]]:
    suite, echo = session.suite, session.echo
    results: dict[str, dict[str, Any]] = {}
    for p in prepared:
        summary = _tune_variant(session, p)
        if summary is not None:
            results[p.variant] = summary
    if not session.joined:
        _print_table(suite, results, session.metric, echo)
        if results:
            files = ", ".join(str(best_path(suite, s["study"])) for s in results.values())
            shown = f" --storage {display_url(session.url)}" if session.url != DEFAULT_STORAGE else ""
            echo(f"Best params (one file per study, by storage): {files}. Re-run them over all seeds: "
                 f"harness run {session.suite_path} --best" + shown)
    return results


def _print_table(suite: Suite, results: dict[str, dict[str, Any]], metric: str, echo: Callable[[str], None]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{suite.name}: best trial per variant")
    for col in ("variant", "study", "complete", "pruned", "failed", "best trial", f"best {metric}", "params"):
        table.add_column(col, no_wrap=col in ("variant", "study"))
    for variant, s in results.items():
        t = s["trials"]
        table.add_row(variant, s["study"], str(t.get("complete", 0)), str(t.get("pruned", 0)), str(t.get("fail", 0)),
                      "-" if s["best_trial"] is None else str(s["best_trial"]),
                      "-" if s["best_value"] is None else f"{s['best_value']:.4f}",
                      ", ".join(f"{k}={format_value(v)}" for k, v in s["params"].items()) or "-")
    console = Console(width=max(Console().width, 120))
    with console.capture() as cap:
        console.print(table)
    echo(cap.get().rstrip("\n"))
