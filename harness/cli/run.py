"""``harness run SUITE``: every variant x seed, parameter-matched, tracked, summarised."""
from __future__ import annotations

import json
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


@click.command("run")
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
def run_command(suite_path: str, overrides: tuple[str, ...], variants: tuple[str, ...], no_track: bool,
                tracking_uri: str | None, output_dir: str | None, best: bool, storage: str | None,
                profile: bool) -> None:
    """Run a suite: every variant x seed, parameter-matched, tracked, summarised."""
    from harness import tracking
    from harness.suite import SuiteError

    extra = (f"suite.output_dir={json.dumps(output_dir)}",) if output_dir else ()
    extra += ("profile.enabled=true",) if profile else ()
    if storage and not best:
        raise click.UsageError("--storage goes with --best")
    # tuned values apply first, so an explicit --set still wins
    values = _best_values(suite_path, overrides + extra, variants, storage) if best else None
    suite = load_suite_or_exit(suite_path, overrides + extra, values)
    tracking.configure(enabled=not no_track, tracking_uri=tracking_uri)
    from harness.profiling import keep_freed_memory
    from harness.runner import run_suite

    keep_freed_memory()
    try:
        results = run_suite(suite, variants=list(variants) or None)
    except SuiteError as exc:
        exit_with_problems(suite_path, exc.problems)
    except KeyboardInterrupt:
        click.echo(f"Interrupted: the current run is marked killed; finished runs are kept in "
                   f"{suite.output_dir}/runs.jsonl and a re-run resumes after them.", err=True)
        sys.exit(130)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        click.echo(f"{len(failed)} run(s) failed; see the table above and runs.jsonl.", err=True)
