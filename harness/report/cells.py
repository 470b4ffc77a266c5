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
MEAN_COLUMN = 3        # index of the "<metric> mean ± std" column, the one the best row bolds


@dataclass
class SummaryTable:
    """Header, one list of cell strings per variant, and which row is the best."""

    header: list[str]
    rows: list[list[str]]
    best: list[bool]

    def drop(self, name: str) -> None:
        """Leave out the column called ``name``."""
        i = self.header.index(name)
        del self.header[i]
        for row in self.rows:
            del row[i]


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


def _fmt_thousands(value: Any) -> str:
    return f"{value:,.0f}" if is_finite(value) else "–"


@dataclass(frozen=True)
class _Layout:
    dec: int              # decimals of the metric
    show_tokens: bool     # tokens/s instead of samples/s
    show_flops: bool
    ref_n: int            # finished seeds of the reference


def _row_cells(r: Any, layout: _Layout) -> list[str]:
    dec = layout.dec
    params = fmt_count(r.params)
    if is_finite(r.param_gap_pct):
        params += f" ({r.param_gap_pct:+.1f}%)"
    mean = "–"
    if is_finite(r.mean):
        mean = f"{r.mean:.{dec}f}" + (f" ± {r.std:.{dec}f}" if is_finite(r.std) else "")
    if r.reference:
        delta = "ref"
    elif is_finite(r.delta):
        # n shown only where fewer seeds were paired than either side finished
        n_note = f" n={r.n_paired}" if r.n_paired < max(int(r.n), layout.ref_n) else ""
        delta = f"{r.delta:+.{dec}f} ({fmt_p(r.p_value)}{n_note})"
    else:
        delta = "–"
    cells = [f"{r.variant}{OVERRIDE_MARK}" if r.overridden else str(r.variant), str(r.mixer or ""), params,
             mean, f"±{r.ci95:.{dec}f}" if is_finite(r.ci95) else "–", delta,
             _fmt_thousands(r.tokens_per_s if layout.show_tokens else r.samples_per_s),
             _fmt_thousands(r.peak_mem_mb)]
    if layout.show_flops:
        cells.append(fmt_count(r.flops_per_token))
    cells.append(f"{r.n_finished}/{r.n_runs}" + (f", {r.n_failed} failed" if r.n_failed else ""))
    return cells


def summary_table(summary: "pd.DataFrame", metric: str, *, flops: bool = False) -> SummaryTable:
    """The cells of a non-empty summary; a FLOPs/token column only with ``flops`` and data for it."""
    has_ref = summary["reference"].any()
    layout = _Layout(
        dec=decimals(summary),
        show_tokens=summary["tokens_per_s"].notna().any() and not summary["samples_per_s"].notna().any(),
        show_flops=flops and summary["flops_per_token"].notna().any(),
        ref_n=int(summary.loc[summary["reference"].astype(bool), "n"].max()) if has_ref else 0,
    )
    header = ["variant", "mixer", "params (gap)", f"{metric} mean ± std", "95% CI",
              "Δ vs ref (p)", "tokens/s" if layout.show_tokens else "samples/s", "peak MB"]
    if layout.show_flops:
        header.append("FLOPs/token")
    header.append("finished")
    records = list(summary.itertuples(index=False))
    return SummaryTable(header, [_row_cells(r, layout) for r in records], [bool(r.best) for r in records])


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


def explanation(summary: "pd.DataFrame", metric: str) -> str:
    """The sentence under the table that says what each column means."""
    reference = summary.attrs.get("reference") or (
        summary.loc[summary["reference"], "variant"].iloc[0] if summary["reference"].any() else "?")
    direction = "higher" if summary.attrs.get("higher_is_better", True) else "lower"
    return (f"{metric}: mean ± std (ddof=1) over finished seeds, {direction} is better, best in bold; "
            f"95% CI = Student-t half-width; Δ = variant − {reference} averaged over shared seeds, "
            f"p = paired t-test (n = shared seeds); params = mean achieved, gap vs the budget target; "
            f"{OVERRIDE_MARK} = variant with per-variant overrides.")
