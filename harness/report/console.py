"""The summary on a terminal: a rich table fitted to the console's width, then the footnotes
(overrides, throughput on a busy machine), the explanation and the failed runs with their reasons."""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from harness.report.cells import (OVERRIDE_MARK, THROUGHPUT_HEADERS, SummaryTable, contended_note, explanation,
                                  failures, first_line, override_notes, summary_table)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from rich.console import Console

MEAN = "mean ± std"    # the console's name for the metric column (the metric is in the title)
# Columns (ids of ``cells.COLUMN_IDS``) a narrow terminal may leave out, least needed first (the
# files keep them all); the cost columns go last: a comparison without them misleads.
DROPPABLE = ("mixer", "memory", "throughput", "ci", "knob", "flops")
RIGHT_ALIGNED = {"params", "knob", "flops", "ci", "throughput", "memory"}


def default_console() -> "Console":
    """A rich console; 160 columns wide when stdout is not a terminal (a log file, a pipe), where
    nothing wraps the lines and rich's default of 80 would squeeze the table."""
    from rich.console import Console

    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        return Console(width=160)
    return Console()


def fit_columns(natural: list[int], narrowest: list[int], width: int) -> tuple[int, list[int] | None] | None:
    """(padding, fixed column widths or None for rich's own) for a SIMPLE_HEAD table in ``width``,
    or None when it cannot fit.

    Rich shrinks an over-wide table without regard to word boundaries and crops the last columns,
    so narrow a table here: take the widest column down one character at a time, never below its
    longest word; with padding 1 if that fits, else padding 0."""
    n = len(natural)
    for pad in (1, 0):
        avail = width - (n - 1) * (1 + pad) - 2
        if sum(natural) <= avail:
            return pad, None
        widths = list(natural)
        while sum(widths) > avail:
            candidates = [i for i in range(n) if widths[i] > narrowest[i]]
            if not candidates:
                break
            widest = max(candidates, key=lambda i: widths[i])
            widths[widest] -= 1
        if sum(widths) <= avail:
            return pad, widths
    return None


def _unwrapped(table: SummaryTable) -> set[int]:
    """Columns never wrapped: the variant and the mean ± std."""
    return {table.index("variant"), table.index("mean")}


def _fit(table: SummaryTable, width: int) -> tuple[int, list[int] | None, list[str]]:
    """(padding, column widths, names of the columns left out) that fit ``table`` in ``width``,
    dropping columns from ``table`` (least needed first) until it fits or none is droppable."""
    hidden: list[str] = []
    while True:
        keep = _unwrapped(table)
        texts = [[*(row[i] for row in table.rows), name] for i, name in enumerate(table.header)]
        natural = [max(len(text) for text in column) for column in texts]
        # the narrowest a column may get: its longest word, so wrapping never splits a number
        narrowest = [natural[i] if i in keep else max(len(w) for text in column for w in text.split() or [""])
                     for i, column in enumerate(texts)]
        fit = fit_columns(natural, narrowest, width)
        droppable = [column for column in DROPPABLE if column in table.columns]
        if fit is not None or not droppable:
            break
        hidden.append(table.header[table.index(droppable[0])])
        table.drop(droppable[0])
    pad, widths = fit if fit is not None else (0, None)   # still too narrow: rich folds the cells
    return pad, widths, hidden


def _rich_table(table: SummaryTable, heading: str, pad: int, widths: list[int] | None) -> Any:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    keep = _unwrapped(table)
    out = Table(title=heading, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD,
                pad_edge=False, padding=(0, pad), collapse_padding=True)
    for i, name in enumerate(table.header):
        # "fold", not "…", if rich must cut a cell: a cut-off number reads as another number
        out.add_column(name, justify="right" if table.columns[i] in RIGHT_ALIGNED else "left", no_wrap=i in keep,
                       width=widths[i] if widths else None, overflow="fold")
    metric_col = table.index("mean")
    for cells, is_best in zip(table.rows, table.best):
        cells = [escape(c) for c in cells]
        if is_best:
            cells[metric_col] = f"[bold]{cells[metric_col]}[/bold]"
        out.add_row(*cells)
    return out


def _print_notes(console: "Console", summary: "pd.DataFrame", metric: str, hidden: list[str],
                 frame: "pd.DataFrame | None") -> None:
    from rich.markup import escape

    if hidden:
        console.print(f"[dim]columns left out for the terminal width: {', '.join(hidden)} "
                      f"(all are in summary.csv)[/dim]")
        if "mixer" in hidden:
            mixers = ", ".join(f"{r.variant}={r.mixer}" for r in summary.itertuples(index=False)
                               if r.mixer and r.mixer != r.variant)
            console.print(f"mixers: {escape(mixers)}")
    for note in override_notes(summary):
        console.print(f"{OVERRIDE_MARK} per-variant overrides — {escape(note)}")
    busy = contended_note(summary)
    if busy and not set(THROUGHPUT_HEADERS.values()) & set(hidden):   # the mark is on the throughput column
        console.print(escape(busy))
    console.print(f"[dim]{escape(explanation(summary, metric))}[/dim]")
    failed = failures(summary, frame)
    if failed:
        console.print(f"[red]{len(failed)} run(s) did not finish:[/red]")
        for f in failed:
            console.print(f"  [red]✗[/red] {escape(f['variant'])} seed {f['seed']} ({f['status']}): "
                          f"{escape(first_line(f['error']))}")


def print_summary(
    summary: "pd.DataFrame",
    metric: str,
    console: "Console | None" = None,
    *,
    frame: "pd.DataFrame | None" = None,
    title: str | None = None,
) -> None:
    """Print the summary as a rich table, then override footnotes and failed runs with reasons.

    Failed runs come from ``frame`` when given, else from ``summary.attrs["failures"]``. On a
    terminal too narrow for every column, the least needed ones are left out (and named)."""
    console = console or default_console()
    if summary.empty:
        console.print("[yellow]no runs to report[/yellow]")
        return
    table = summary_table(summary, metric)
    table.header[table.index("mean")] = MEAN
    if all(not r.mixer or r.mixer == r.variant for r in summary.itertuples(index=False)):
        table.drop("mixer")   # it would repeat the variant names
    pad, widths, hidden = _fit(table, console.width)
    direction = "higher" if summary.attrs.get("higher_is_better", True) else "lower"
    heading = f"{title + ' · ' if title else ''}{metric} ({direction} is better)"
    console.print(_rich_table(table, heading, pad, widths))
    _print_notes(console, summary, metric, hidden, frame)
