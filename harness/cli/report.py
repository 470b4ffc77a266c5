"""``harness report``: summarize a suite's results (a results directory or an MLflow experiment).

Thin: the reading, choosing, statistics and output live in ``harness.report``, imported inside the
command so that ``harness --help`` loads neither pandas nor mlflow.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from harness.cli.common import TRACKING_URI_HELP


def _open_source(experiment_or_dir: str, tracking_uri: str | None, parent_run_id: str | None) -> Any:
    from harness.report import ReportError
    from harness.report.sources import open_source
    from harness.report.cells import first_line

    try:
        return open_source(experiment_or_dir, tracking_uri, parent_run_id)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # MLflow/database errors: one line, no traceback
        raise click.ClickException(f"could not read results from {experiment_or_dir!r}: "
                                   f"{type(exc).__name__}: {first_line(str(exc))}") from None


def _print_notes(source: Any) -> None:
    """What was read (MLflow parent runs), lines skipped, runs an invocation lacks: on stderr."""
    for note in source.notes:
        click.echo(note, err=True)
    if source.missing:
        click.echo(f"warning: {source.missing} planned run(s) have no child run under MLflow "
                   f"parent {source.parent_run_id} (results re-used from an earlier invocation "
                   f"are reported from the suite's runs.jsonl); the table shows the rest.", err=True)


@click.command("report")
@click.argument("experiment_or_dir")
@click.option("--tracking-uri", default=None, help=TRACKING_URI_HELP)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where to write the reports [default: the results dir itself, or results/<experiment>].")
@click.option("--metric", default=None, help="Metric to compare [default: the suite's metric].")
@click.option("--reference", default=None, help="Reference variant for Δ [default: the suite's reference].")
@click.option("--higher-is-better/--lower-is-better", "higher_is_better", default=None,
              help="Metric direction [default: the one recorded for the suite's metric, else the metric "
                   "registry's].")
@click.option("--parent-run", "parent_run_id", default=None,
              help="MLflow parent run id: report that invocation alone [default: every invocation of the "
                   "experiment, merged: per (variant, seed) the latest finished run, else the latest].")
def report_command(experiment_or_dir: str, tracking_uri: str | None, out_dir: str | None,
                   metric: str | None, reference: str | None, higher_is_better: bool | None,
                   parent_run_id: str | None) -> None:
    """Summarize a suite: EXPERIMENT_OR_DIR is a results directory (with runs.jsonl) or an MLflow
    experiment name (the suite's name; every invocation merged). Prints the table and writes CSV,
    Markdown and plots, never over a folder that holds runs the report lacks."""
    from harness.report import ReportError, build_report, default_console, print_summary, write_report
    from harness.report.sources import choose_settings

    source = _open_source(experiment_or_dir, tracking_uri, parent_run_id)
    _print_notes(source)
    try:
        settings = choose_settings(source, metric, reference, higher_is_better)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None

    console = default_console()
    report = build_report(source.results, settings.metric, higher_is_better=settings.higher_is_better,
                          reference=settings.reference, title=source.title, planned_seeds=source.planned_seeds)
    print_summary(report.summary, report.metric, console, frame=report.frame, title=report.title)
    out = Path(out_dir) if out_dir else source.default_out
    try:
        written = write_report(report, out)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"could not write reports to {out}: {exc}") from None
    console.print(f"wrote {', '.join(written)} to {out}")
