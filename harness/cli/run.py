"""``harness run SUITE``: every variant x seed, parameter-matched, tracked, summarised."""
from __future__ import annotations

import json
import signal
import sys
from typing import Any

import click

from harness.cli.common import SET_HELP, TRACKING_URI_HELP, exit_with_problems, load_suite_or_exit


def _best_values(suite_path: str, overrides: tuple[str, ...], variants: tuple[str, ...],
                 storage: str | None) -> dict[str, Any]:
    """Each variant's best tuned params as suite values (``variants.<v>.train.lr`` -> 0.003)."""
    from harness.tune import TuneError, best_values

    base = load_suite_or_exit(suite_path, overrides)
    try:
        best = best_values(base, storage, list(variants) or None, suite_path=suite_path)
    except TuneError as exc:
        exit_with_problems(suite_path, str(exc).splitlines())
    shown = " ".join(f"{k}={v!r}" for k, v in best.items())
    click.echo("best params: " + (shown or "none (the studies tuned no keys)"))
    return best


# Exit statuses of `harness run` (the epilog below documents them).
EXIT_SOME_FAILED = 3
EXIT_ALL_FAILED = 4
EPILOG = """\b
Exit status:
  0    every run finished (or was re-used from runs.jsonl)
  1    the suite has problems; nothing was run
  2    a usage error (an unknown option)
  3    some runs failed (see the table and runs.jsonl)
  4    every run failed
  130  interrupted by Ctrl-C (SIGINT)
  143  terminated by SIGTERM (timeout, a scheduler)
Interrupted or terminated, the training run is marked killed and every finished run is kept;
a re-run resumes after them."""


def exit_status(results: list[Any]) -> int:
    """0 when no run failed, EXIT_ALL_FAILED when every run did, else EXIT_SOME_FAILED."""
    from harness.runlog import FAILED_STATUSES

    failed = sum(r.status in FAILED_STATUSES for r in results)
    if not failed:
        return 0
    return EXIT_ALL_FAILED if failed == len(results) else EXIT_SOME_FAILED


def interrupted_message(exc: Any, output_dir: Any) -> str:
    """What a SuiteInterrupted leaves behind, in one line."""
    how = "Ctrl-C" if exc.signum == signal.SIGINT else "SIGTERM"
    if exc.killed is None and not exc.results:
        return f"{how}: interrupted before any run started; nothing to resume."
    kept = sum(r.status != "killed" for r in exc.results)
    where = f"{kept} finished run(s) are kept in {output_dir}/runs.jsonl and a re-run resumes after them."
    if exc.killed is None:
        return f"{how}: interrupted between runs; {where}"
    killed = getattr(exc, "killed_runs", None) or [exc.killed]
    if len(killed) > 1:  # Ray: every task in flight was cancelled
        return f"{how}: runs {', '.join(r.key for r in killed)} are marked killed; {where}"
    return f"{how}: run {exc.killed.key} is marked killed; {where}"


@click.command("run", epilog=EPILOG)
@click.argument("suite_path", metavar="SUITE", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("-v", "--variant", "variants", multiple=True, help="Run only these variants (repeatable).")
@click.option("--no-track", is_flag=True, help="Do not record the runs in MLflow.")
@click.option("--tracking-uri", default=None, help=TRACKING_URI_HELP)
@click.option("--out", "output_dir", default=None, help="Output folder (default: results/<suite name>).")
@click.option("--best", is_flag=True, help="Give each variant its best tuned params (study <suite>.<variant> "
              "from `harness tune`) and run it over all seeds.")
@click.option("--storage", default=None, help="Optuna storage for --best (default: sqlite:///mlruns/optuna.db).")
@click.option("--profile", is_flag=True, help="Profile every run (as [profile] enabled = true): torch.profiler "
              "trace and operator table, FLOPs per step and MFU.")
@click.option("--no-contract", is_flag=True, help="Skip the contract gate: on a causal or padded task every mixer "
              "is otherwise probed for leaks before training and refused if it leaks. The runs are tagged.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where runs train: one at a time in this process, or each (variant, seed) as a Ray task "
              "asking the suite's [resources] (needs the ray extra: pip install -e '.[ray]').")
@click.option("--address", default=None, help="With --executor ray: the Ray cluster (host:port that `ray start "
              "--head` printed) [default: $RAY_ADDRESS, else the cluster `ray start` left on this machine, else a "
              "new local one].")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Runs at once. Alone, N > 1 starts a "
              "private local Ray cluster and gives each run 1/N of the cores (threads divided); with --executor "
              "ray, at most N in flight, each with 1/N of the cluster's CPUs unless [resources] num_cpus is set.")
def run_command(suite_path: str, overrides: tuple[str, ...], variants: tuple[str, ...], no_track: bool,
                tracking_uri: str | None, output_dir: str | None, best: bool, storage: str | None,
                profile: bool, no_contract: bool, executor: str, address: str | None, jobs: int | None) -> None:
    """Run a suite: every variant x seed, parameter-matched, tracked, summarised."""
    from harness import tracking
    from harness.executors import ExecutorError, executor_for
    from harness.suite import SuiteError

    extra = (f"suite.output_dir={json.dumps(output_dir)}",) if output_dir else ()
    extra += ("profile.enabled=true",) if profile else ()
    if storage and not best:
        raise click.UsageError("--storage goes with --best")
    if address and executor != "ray":
        raise click.UsageError("--address names a Ray cluster: add --executor ray")
    try:
        runner_executor = executor_for(executor, address=address, jobs=jobs)
    except ExecutorError as exc:  # Ray asked for where it is not installed
        click.echo(f"harness run: {exc}", err=True)
        sys.exit(1)
    # tuned values apply first, so an explicit --set still wins
    values = _best_values(suite_path, overrides + extra, variants, storage) if best else None
    suite = load_suite_or_exit(suite_path, overrides + extra, values)
    tracking.configure(enabled=not no_track, tracking_uri=tracking_uri)
    from harness.profiling import keep_freed_memory
    from harness.runner import SuiteInterrupted, run_suite

    keep_freed_memory()
    try:
        results = run_suite(suite, variants=list(variants) or None, contract=not no_contract,
                            executor=runner_executor)
    except SuiteError as exc:
        exit_with_problems(suite_path, exc.problems)
    except ExecutorError as exc:
        click.echo(f"{suite_path}: {exc}; nothing was run.", err=True)
        sys.exit(1)
    except SuiteInterrupted as exc:
        click.echo(interrupted_message(exc, suite.output_dir), err=True)
        sys.exit(128 + exc.signum)
    status = exit_status(results)
    if status:
        failed = sum(r.status == "failed" for r in results)
        click.echo(f"{failed} of {len(results)} run(s) failed; see the table above and runs.jsonl.", err=True)
    sys.exit(status)
