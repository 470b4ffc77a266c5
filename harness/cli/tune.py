"""``harness tune SUITE``: tune each variant with Optuna (see harness.tune)."""
from __future__ import annotations

import sys

import click

from harness.cli.common import SET_HELP, TRACKING_URI_HELP, exit_with_problems, load_suite_or_exit


@click.command("tune")
@click.argument("suite_path", metavar="SUITE", type=click.Path(dir_okay=False))
@click.option("-v", "--variant", "variants", multiple=True, help="Tune only these variants (repeatable).")
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="A study's total trials, shared by all workers (default: [tune] trials). Cumulative: a "
              "study's budget only grows, so re-running with the same N adds none; raise N to add trials.")
@click.option("--storage", default=None, help="Optuna storage: a database URL (default sqlite:///mlruns/optuna.db, "
              "postgresql://...) or a journal file ending in .log/.journal; workers on one storage share a study.")
@click.option("--study", "study_name", default=None, help="Study name (default: <suite>.<variant>; one variant).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes on this machine "
              "[default: 1]; with --executor ray, trials in flight at once [default: as many as fit the cluster].")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where trials train: this process and its --workers, or Ray tasks asking the suite's "
              "[resources] (needs the ray extra, and a --storage every worker reaches, e.g. postgresql+psycopg://).")
@click.option("--address", default=None, help="With --executor ray: the Ray cluster (host:port) [default: "
              "$RAY_ADDRESS, else the cluster `ray start` left on this machine, else a new local one].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--no-track", is_flag=True, help="Do not record the trials in MLflow.")
@click.option("--tracking-uri", default=None, help=TRACKING_URI_HELP)
@click.option("--worker-index", type=int, default=None, hidden=True)
@click.option("--parent-run-id", default=None, hidden=True)
def tune_command(suite_path: str, variants: tuple[str, ...], trials: int | None, storage: str | None,
                 study_name: str | None, workers: int | None, executor: str, address: str | None,
                 overrides: tuple[str, ...], no_track: bool, tracking_uri: str | None, worker_index: int | None,
                 parent_run_id: str | None) -> None:
    """Tune each variant with Optuna: one study per variant, the same trial budget for all."""
    from harness.executors import ExecutorError, require_ray
    from harness.profiling import keep_freed_memory
    from harness.suite import SuiteError
    from harness.tune import TuneError, tune

    if address and executor != "ray":
        raise click.UsageError("--address names a Ray cluster: add --executor ray")
    suite = load_suite_or_exit(suite_path, overrides)
    keep_freed_memory()
    try:
        if executor == "ray":
            require_ray("harness tune --executor ray")
        tune(suite, suite_path=suite_path, overrides=list(overrides), variants=list(variants) or None,
             trials=trials, storage=storage, study=study_name, workers=workers, track=not no_track,
             tracking_uri=tracking_uri, worker_index=worker_index, parent_run_id=parent_run_id,
             executor=executor, address=address, echo=click.echo)
    except SuiteError as exc:
        exit_with_problems(suite_path, exc.problems)
    except TuneError as exc:
        exit_with_problems(suite_path, str(exc).splitlines())
    except ExecutorError as exc:
        click.echo(f"harness tune: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        if worker_index is None:
            click.echo("Interrupted: the running trial is recorded failed; queued trials stay in the study and "
                       "the same command resumes them.", err=True)
        sys.exit(130)
