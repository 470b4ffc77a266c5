"""The summary as text, shared by the console and Markdown: the table's header and cell strings
(numbers formatted alike in both), the notes under it and one-line error messages."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.report.frame import failed_runs
from harness.report.stats import is_finite

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

OVERRIDE_MARK = "†"
CONTENDED_MARK = "‡"


@dataclass
class SummaryTable:
    """Header, a stable id per column (``COLUMN_IDS``), one list of cell strings per variant, and
    which row is the best."""

    header: list[str]
    columns: list[str]
    rows: list[list[str]]
    best: list[bool]

    def index(self, column: str) -> int:
        return self.columns.index(column)

    def drop(self, column: str) -> None:
        """Leave out the column with id ``column``."""
        i = self.index(column)
        for cells in (self.header, self.columns, *self.rows):
            del cells[i]


# Column ids, in table order; "knob" and "flops" only where the results have them.
COLUMN_IDS = ("variant", "mixer", "params", "knob", "flops", "mean", "ci", "delta", "throughput",
              "memory", "finished")


def decimals(summary: "pd.DataFrame") -> int:
    """Decimals that give the largest mean 4 significant digits (0.82 -> 4, 35.1 -> 2)."""
    values = [abs(float(v)) for v in summary["mean"] if is_finite(v) and float(v) != 0.0]
    if not values:
        return 4
    return int(min(6, max(0, 3 - math.floor(math.log10(max(values))))))


def fmt_count(value: Any) -> str:
    """A count with a k/M/G suffix and 2 decimals (199000 -> 199.00k); "–" for no number."""
    if not is_finite(value):
        return "–"
    value = float(value)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def fmt_p(p: Any) -> str:
    if not is_finite(p):
        return "p=n/a"
    return "p<0.001" if float(p) < 0.001 else f"p={float(p):.3f}"


def fmt_knob(value: Any) -> str:
    """A knob's matched value: a whole number as such (dim 48), else 2 decimals (mlp_ratio 0.69)."""
    if not is_finite(value):
        return "–"
    value = float(value)
    return f"{value:.0f}" if value == round(value) else f"{value:.2f}"


def _fmt_thousands(value: Any) -> str:
    return f"{value:,.0f}" if is_finite(value) else "–"


# TaskSpec.throughput -> (column header, summary column)
THROUGHPUT = {"samples": ("samples/s", "samples_per_s"), "tokens": ("tokens/s", "tokens_per_s"),
              "audio_seconds": ("audio s/s", "audio_s_per_s")}
THROUGHPUT_HEADERS = {column: header for header, column in THROUGHPUT.values()}


@dataclass(frozen=True)
class _Layout:
    dec: int              # decimals of the metric
    throughput: str       # the summary column the throughput cells show
    knobs: tuple[str, ...]  # the knob names of the variants (none: no knob column)
    show_flops: bool
    ref_n: int            # finished seeds of the reference


def _delta_cell(r: Any, layout: _Layout) -> str:
    if r.reference:
        return "ref"
    if not is_finite(r.delta):
        return "–"
    notes = [fmt_p(r.p_value)]
    if is_finite(r.p_holm):
        notes.append(f"Holm {fmt_p(r.p_holm)}")
    if r.n_paired < max(int(r.n), layout.ref_n):   # shown only where fewer seeds were paired than finished
        notes.append(f"n={r.n_paired}")
    return f"{r.delta:+.{layout.dec}f} ({', '.join(notes)})"


def _finished_cell(r: Any) -> str:
    """Seeds finished / planned, then why the others did not: "2/3, 1 killed"."""
    counts = {"failed": int(r.n_failed), "killed": int(r.n_killed),
              "running": int(r.n_runs) - int(r.n_finished) - int(r.n_failed) - int(r.n_killed),
              "not run": int(r.n_planned) - int(r.n_runs)}
    return ", ".join([f"{r.n_finished}/{r.n_planned}", *(f"{n} {what}" for what, n in counts.items() if n > 0)])


def _row_cells(r: Any, layout: _Layout) -> list[str]:
    dec = layout.dec
    params = fmt_count(r.params)
    if is_finite(r.param_gap_pct):
        params += f" ({r.param_gap_pct:+.1f}%)"
    mean = "–"
    if is_finite(r.mean):
        mean = f"{r.mean:.{dec}f}" + (f" ± {r.std:.{dec}f}" if is_finite(r.std) else "")
    throughput = _fmt_thousands(getattr(r, layout.throughput))
    if is_finite(r.n_contended) and r.n_contended > 0 and throughput != "–":
        throughput += CONTENDED_MARK
    cells = [f"{r.variant}{OVERRIDE_MARK}" if r.overridden else str(r.variant), str(r.mixer or ""), params]
    if layout.knobs:
        value = fmt_knob(r.knob_value)
        cells.append(value if len(layout.knobs) == 1 or not r.knob else f"{r.knob} {value}")
    if layout.show_flops:
        cells.append(fmt_count(r.flops_per_token))
    cells += [mean, f"±{r.ci95:.{dec}f}" if is_finite(r.ci95) else "–", _delta_cell(r, layout), throughput,
              _fmt_thousands(r.peak_mem_mb), _finished_cell(r)]
    return cells


def _layout(summary: "pd.DataFrame") -> _Layout:
    has_ref = summary["reference"].any()
    has_knob = summary["knob_value"].notna().any()
    return _Layout(
        dec=decimals(summary),
        throughput=THROUGHPUT[summary.attrs.get("throughput", "samples")][1],
        knobs=tuple(dict.fromkeys(k for k in summary["knob"] if k)) if has_knob else (),
        show_flops=summary["flops_per_token"].notna().any(),
        ref_n=int(summary.loc[summary["reference"].astype(bool), "n"].max()) if has_ref else 0,
    )


def summary_table(summary: "pd.DataFrame", metric: str) -> SummaryTable:
    """The cells of a non-empty summary; the knob and FLOPs/token columns only where there is data
    for them (the knob's column is named after it when the variants share one)."""
    layout = _layout(summary)
    names = {"variant": "variant", "mixer": "mixer", "params": "params (gap)",
             "knob": layout.knobs[0] if len(layout.knobs) == 1 else "knob", "flops": "FLOPs/token",
             "mean": f"{metric} mean ± std", "ci": "95% CI", "delta": "Δ vs ref (p, Holm p)",
             "throughput": THROUGHPUT_HEADERS[layout.throughput], "memory": "peak MB",
             "finished": "finished"}
    columns = [c for c in COLUMN_IDS
               if (c != "knob" or layout.knobs) and (c != "flops" or layout.show_flops)]
    records = list(summary.itertuples(index=False))
    return SummaryTable([names[c] for c in columns], columns, [_row_cells(r, layout) for r in records],
                        [bool(r.best) for r in records])


def override_notes(summary: "pd.DataFrame") -> list[str]:
    """"variant: key,key" for each variant with per-variant overrides."""
    return [f"{r.variant}: {r.overrides}" for r in summary.itertuples(index=False) if r.overridden]


def first_line(text: str | None, limit: int = 300) -> str:
    """One line of an error: a traceback's last line (its message), else the first line."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return "no error message"
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def failures(summary: "pd.DataFrame", frame: "pd.DataFrame | None") -> list[dict[str, Any]]:
    """The failed runs: from ``frame`` when given, else from ``summary.attrs["failures"]``."""
    if frame is not None and not frame.empty:
        return failed_runs(frame)
    return list(summary.attrs.get("failures", []))


def contended_note(summary: "pd.DataFrame") -> str | None:
    """The footnote of the throughput mark: which variants had runs timed on a busy machine."""
    busy = [f"{r.variant} ({int(r.n_contended)} of {int(r.n_finished)} runs)" for r in summary.itertuples(index=False)
            if is_finite(r.n_contended) and r.n_contended > 0]
    if not busy:
        return None
    return (f"{CONTENDED_MARK} throughput measured while the machine was busier than its cores (other processes "
            f"competed for them), so it reads low: {', '.join(busy)}.")


def explanation(summary: "pd.DataFrame", metric: str) -> str:
    """The sentence under the table that says what each column means."""
    reference = summary.attrs.get("reference") or (
        summary.loc[summary["reference"], "variant"].iloc[0] if summary["reference"].any() else "?")
    direction = "higher" if summary.attrs.get("higher_is_better", True) else "lower"
    knobs = _layout(summary).knobs
    knob = f"{' / '.join(knobs)} = the value the budget matcher chose to meet the target; " if knobs else ""
    return (f"{metric}: mean ± std (ddof=1) over finished seeds, {direction} is better; bold = best mean among "
            f"the variants that finished every planned seed; finished = seeds finished / planned; "
            f"95% CI = Student-t half-width; Δ = variant − {reference} averaged over shared seeds, "
            f"p = paired t-test (n = shared seeds), Holm p = p adjusted (Holm-Bonferroni) over the variants "
            f"compared with {reference}; params = mean achieved, gap vs the budget target; {knob}"
            f"FLOPs/token = forward FLOPs per token; {OVERRIDE_MARK} = variant with per-variant overrides.")
