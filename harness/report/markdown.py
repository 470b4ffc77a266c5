"""The summary as Markdown (results.md): the table, footnotes (overrides, throughput on a busy
machine), the explanation and a section of failed runs."""
from __future__ import annotations

from typing import TYPE_CHECKING

from harness.report.cells import (OVERRIDE_MARK, contended_note, explanation, failures, first_line, override_notes,
                                  summary_table)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def md_escape(text: str) -> str:
    """Text safe inside a Markdown table cell: no pipe, no line break."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table_lines(summary: "pd.DataFrame", metric: str) -> list[str]:
    table = summary_table(summary, metric)
    mean = table.index("mean")
    left = {"variant", "mixer", "finished"}
    lines = ["| " + " | ".join(md_escape(h) for h in table.header) + " |",
             "|" + "|".join("---" if c in left else "---:" for c in table.columns) + "|"]
    for cells, is_best in zip(table.rows, table.best):
        cells = [md_escape(c) for c in cells]
        if is_best:
            cells[mean] = f"**{cells[mean]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _failure_lines(summary: "pd.DataFrame", frame: "pd.DataFrame") -> list[str]:
    failed = failures(summary, frame)
    if not failed:
        return ["None."]
    return [f"- `{f['variant']}` seed {f['seed']} ({f['status']}): {md_escape(first_line(f['error']))}"
            for f in failed]


def markdown_report(summary: "pd.DataFrame", frame: "pd.DataFrame", metric: str, title: str) -> str:
    """The whole of results.md."""
    lines = [f"# {title}", ""]
    if summary.empty:
        return "\n".join([*lines, "No runs.", ""])
    lines += [*_table_lines(summary, metric), ""]
    lines += [f"{OVERRIDE_MARK} per-variant overrides — {md_escape(note)}  " for note in override_notes(summary)]
    busy = contended_note(summary)
    lines += [f"{md_escape(busy)}  "] if busy else []
    lines += [explanation(summary, metric), "", "## Failed runs", "", *_failure_lines(summary, frame), ""]
    return "\n".join(lines)
