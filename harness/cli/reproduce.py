"""``harness reproduce RUN_ID``: re-run a tracked run from its manifest and compare its metrics."""
from __future__ import annotations

import sys

import click

from harness.cli.common import TRACKING_URI_HELP

EPILOG = """\b
Exit status:
  0  reproduced: the final metrics are identical (CPU, or deterministic algorithms)
     or within the tolerance (elsewhere)
  1  nothing was re-run: unknown run, no manifest, unreachable store, or drift
     without --allow-drift
  3  the re-run failed
  4  the re-run finished but its metrics (or the data it read) differ"""


@click.command("reproduce", epilog=EPILOG)
@click.argument("run_id")
@click.option("--tracking-uri", default=None, help=TRACKING_URI_HELP)
@click.option("--allow-drift", is_flag=True, help="Re-run even where versions, commits or data hashes differ "
              "from the manifest (the new run is tagged harness.drift and is not called a reproduction).")
@click.option("--rtol", type=float, default=None, help="Relative tolerance where exact equality is not expected "
              "(GPU without deterministic algorithms) [default: 0.01].")
@click.option("--atol", type=float, default=None, help="Absolute tolerance, added to --rtol's [default: 0.001].")
@click.option("--out", "output_dir", default=None,
              help="Output folder (default: results/<suite>/reproduce/<run id>-<time>).")
def reproduce_command(run_id: str, tracking_uri: str | None, allow_drift: bool, rtol: float | None,
                      atol: float | None, output_dir: str | None) -> None:
    """Re-run RUN_ID (an MLflow run or tuning-trial id) from its manifest alone, log it as a new run
    tagged reproduces=RUN_ID, and compare its final metrics with the original's."""
    from harness.manifest.compare import DEFAULT_ATOL, DEFAULT_RTOL
    from harness.manifest.reproduce import ReproduceError, fetch, reproduce

    rtol = DEFAULT_RTOL if rtol is None else rtol
    atol = DEFAULT_ATOL if atol is None else atol
    try:
        original = fetch(run_id, tracking_uri)
        run = original.manifest["run"]
        click.echo(f"reproducing {run['suite']} {run['variant']}/seed{run['seed']} ({run['role']} {run_id})")
        outcome = reproduce(original, allow_drift=allow_drift, rtol=rtol, atol=atol, output_dir=output_dir,
                            echo=click.echo)
    except ReproduceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.status)
    how = "exact equality" if outcome.exact else f"|new - old| <= {atol:g} + {rtol:g} * |old|"
    for c in outcome.checks:
        click.echo(f"  {c.name:<28} recorded {c.recorded:.10g}  now {c.now:.10g}  {'ok' if c.ok else 'DIFFERS'}")
    for d in outcome.data_drift:
        click.echo(f"  data read by the re-run differs: {d.line()}")
    drifted = any(d.blocking for d in outcome.drift)
    noun = "re-run (with drift)" if drifted else "reproduction"
    verdict = outcome.verdict
    if not outcome.checks:
        click.echo("error: the original run recorded none of the re-run's metrics; nothing to compare", err=True)
        sys.exit(4)
    click.echo(f"{noun} {outcome.new_run_id}: metrics {verdict.replace('_', ' ')} ({how}); tagged "
               f"reproduces={run_id}")
    sys.exit(0 if verdict != "differs" else 4)
