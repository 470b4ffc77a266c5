"""From run results to tables: one row per run (``results_frame``), one row per variant
(``summarize``).

Per variant, over its finished seeds (``finished`` and ``skipped``: a skipped run re-used an earlier
result and carries its metrics; ``failed`` and ``killed`` runs are counted and excluded): mean, std
(ddof=1), the 95% CI half-width, and the delta vs the reference variant with its paired t-test
p-value on the seeds both finished, Holm-adjusted over the variants of the table (see
``harness.report.stats``). Only a variant that finished every planned seed can be the best: a mean
over fewer seeds is not comparable with the others.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

from harness.report.errors import ReportError
from harness.report.stats import ci95_half_width, holm_adjust, is_finite, mean_std, paired_t_test
from harness.runlog import FAILED_STATUSES, FINISHED_STATUSES
from harness.specs import RunResult

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

_FRAME_FIXED = ("variant", "mixer", "seed", "status", "error", "overrides", "knob", "task")

SUMMARY_COLUMNS = (
    "variant", "mixer", "reference", "n_planned", "n_runs", "n_finished", "n_failed", "n_killed",
    "full_seeds", "params", "target_params", "param_gap_pct", "knob", "knob_value", "flops_per_token",
    "metric", "n", "mean", "std", "ci95", "n_paired", "delta", "p_value", "p_holm",
    "samples_per_s", "tokens_per_s", "audio_s_per_s", "n_contended", "peak_mem_mb", "decayed_params", "threads",
    "overridden", "overrides", "best",
)
# efficiency figures averaged over a variant's finished runs
_MEAN_FIGURES = ("samples_per_s", "tokens_per_s", "audio_s_per_s", "peak_mem_mb", "flops_per_token", "knob_value",
                 "decayed_params", "threads")


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _frame_row(result: RunResult, value_keys: list[str]) -> dict[str, Any]:
    """The row of one run; metric and efficiency keys not seen before are added to ``value_keys``."""
    run = result.run
    row: dict[str, Any] = {
        "variant": run.variant,
        "mixer": run.mixer,
        "seed": int(run.seed),
        "status": result.status,
        "error": result.error,
        "overrides": ",".join(run.overrides or ()),
        # the config key the budget matcher searched; its matched value is efficiency["knob_value"]
        "knob": str((run.budget or {}).get("knob") or ""),
        "task": run.task,
    }
    for source in (result.metrics or {}, result.efficiency or {}):
        for key, value in source.items():
            if key in _FRAME_FIXED or key == "run_id":
                continue
            if key not in value_keys:
                value_keys.append(key)
            row.setdefault(key, _to_float(value))
    row["run_id"] = result.run_id
    return row


def results_frame(results: Iterable[RunResult]) -> "pd.DataFrame":
    """One row per run: variant, mixer, seed, status, error, overrides (comma-separated keys), knob
    (the budget's knob, "" without a budget), then every metric and efficiency key seen as a column
    (NaN where a run lacks it), then run_id."""
    import pandas as pd

    value_keys: list[str] = []
    rows = [_frame_row(result, value_keys) for result in results]
    frame = pd.DataFrame(rows, columns=[*_FRAME_FIXED, *value_keys, "run_id"])
    for key in value_keys:
        frame[key] = pd.to_numeric(frame[key], errors="coerce").astype(float)
    if not frame.empty:
        frame["seed"] = frame["seed"].astype(int)
    return frame


def failed_runs(frame: "pd.DataFrame") -> list[dict[str, Any]]:
    """{variant, seed, status, error} of each failed or killed run, in frame order."""
    if frame.empty:
        return []
    failed = frame[frame["status"].isin(FAILED_STATUSES)]
    return [{"variant": r.variant, "seed": int(r.seed), "status": r.status,
             "error": r.error if isinstance(r.error, str) else None}
            for r in failed.itertuples(index=False)]


def _nanmean(series: "pd.Series") -> float:
    values = series.dropna()
    return float(values.mean()) if len(values) else math.nan


def _finished_values(rows: "pd.DataFrame", metric: str) -> dict[int, float]:
    """seed -> metric of the finished runs among ``rows`` with a finite value."""
    if metric not in rows.columns:
        return {}
    ok = rows[rows["status"].isin(FINISHED_STATUSES)]
    return {int(s): float(v) for s, v in zip(ok["seed"], ok[metric]) if is_finite(v)}


def _efficiency(finished: "pd.DataFrame") -> dict[str, float]:
    """Mean params, target, signed gap (%) and speed/memory/cost figures over a variant's finished
    runs, and how many of them ran on a machine busier than its cores (NaN where none says)."""
    def col(name: str) -> float:
        return _nanmean(finished[name]) if name in finished.columns else math.nan

    params, target = col("params"), col("target_params")
    if "param_gap" in finished.columns and finished["param_gap"].notna().any():
        gap_pct = 100.0 * _nanmean(finished["param_gap"])
    elif is_finite(params) and is_finite(target) and target:
        gap_pct = 100.0 * (params - target) / target
    else:
        gap_pct = math.nan
    figures = {"params": params, "target_params": target, "param_gap_pct": gap_pct}
    figures.update({k: col(k) for k in _MEAN_FIGURES})
    figures["n_contended"] = math.nan
    if "contended" in finished.columns and finished["contended"].notna().any():
        figures["n_contended"] = float((finished["contended"] > 0.5).sum())
    return figures


def _status_counts(rows: "pd.DataFrame") -> dict[str, int]:
    """Runs in all, finished (or re-used), failed, and killed (interrupted, not broken)."""
    status = rows["status"]
    return {"n_runs": int(len(rows)), "n_finished": int(status.isin(FINISHED_STATUSES).sum()),
            "n_failed": int((status == "failed").sum()), "n_killed": int((status == "killed").sum())}


def _variant_record(rows: "pd.DataFrame", metric: str, ref_values: dict[int, float] | None,
                    planned: set[int]) -> dict[str, Any]:
    """The summary row of one variant's runs; ``ref_values`` is None for the reference itself."""
    finished = rows[rows["status"].isin(FINISHED_STATUSES)]
    values = _finished_values(rows, metric)
    n = len(values)
    mean, std = mean_std(list(values.values()))
    if ref_values is None:
        n_paired, delta, p_value = n, math.nan, math.nan
    else:
        n_paired, delta, p_value = paired_t_test(values, ref_values)
    override_keys = sorted({k for o in rows["overrides"] for k in str(o or "").split(",") if k})
    mixers = [m for m in rows["mixer"] if m]
    knobs = [k for k in rows["knob"] if k] if "knob" in rows.columns else []
    record = {
        "variant": rows["variant"].iloc[0], "mixer": mixers[0] if mixers else "",
        "reference": ref_values is None, "n_planned": len(planned), **_status_counts(rows),
        "full_seeds": planned <= set(values), "knob": knobs[0] if knobs else "",
        "metric": metric, "n": n, "mean": mean, "std": std,
        "ci95": ci95_half_width(std, n), "n_paired": n_paired, "delta": delta, "p_value": p_value,
        "overridden": bool(override_keys), "overrides": ",".join(override_keys), "best": False,
    }
    record.update(_efficiency(finished))
    return record


def _mark_best(out: "pd.DataFrame", higher_is_better: bool) -> None:
    """Bold goes to the best mean among the variants that finished every planned seed."""
    means = out["mean"].astype(float).where(out["full_seeds"].astype(bool))
    if means.notna().any():
        best = means.idxmax() if higher_is_better else means.idxmin()
        out.loc[best, "best"] = True


def summarize(
    frame: "pd.DataFrame",
    metric: str,
    higher_is_better: bool = True,
    reference: str | None = None,
    planned_seeds: Iterable[int] | None = None,
) -> "pd.DataFrame":
    """One row per variant, the reference first, then suite order (first appearance in ``frame``).

    Columns: variant, mixer, reference (bool), n_planned (planned seeds: ``planned_seeds`` and
    every seed in ``frame``), n_runs, n_finished, n_failed, n_killed, full_seeds (finished every
    planned seed with a value), params (mean achieved), target_params, param_gap_pct (signed,
    100 * (achieved - target) / target), knob (the budget's knob) and knob_value (its matched
    value), flops_per_token, metric (its name), n (finished seeds with a finite metric), mean, std,
    ci95 (half-width), n_paired, delta (mean of variant - reference on shared seeds; NaN on the
    reference row), p_value (paired t-test), p_holm (p_value Holm-adjusted over the table's
    variants), samples_per_s, tokens_per_s, n_contended (finished runs measured on a machine
    busier than its cores), peak_mem_mb, decayed_params, threads (means over finished runs),
    overridden (bool), overrides (union of per-variant override keys), best (bool, by direction,
    among the variants with full_seeds only).

    ``summary.attrs`` holds ``metric``, ``reference``, ``higher_is_better``, ``planned_seeds`` and
    ``failures`` (a list of {variant, seed, status, error} for failed and killed runs), which
    ``print_summary`` shows.
    """
    import pandas as pd

    planned = {int(s) for s in planned_seeds or ()} | {int(s) for s in frame["seed"]}
    if frame.empty:
        out = pd.DataFrame(columns=list(SUMMARY_COLUMNS))
        out.attrs.update(metric=metric, reference=reference, higher_is_better=higher_is_better,
                         planned_seeds=sorted(planned), failures=[])
        return out

    variants = list(dict.fromkeys(frame["variant"]))
    if reference is None:
        reference = variants[0]
    if reference not in variants:
        raise ReportError(f"reference variant {reference!r} is not among the results "
                          f"(variants: {', '.join(variants)})")
    ref_values = _finished_values(frame[frame["variant"] == reference], metric)
    records = [_variant_record(frame[frame["variant"] == variant], metric,
                               None if variant == reference else ref_values, planned)
               for variant in [reference, *[v for v in variants if v != reference]]]
    out = pd.DataFrame.from_records(records, columns=list(SUMMARY_COLUMNS))
    out["p_holm"] = holm_adjust(out["p_value"].astype(float).tolist())
    _mark_best(out, higher_is_better)
    out.attrs.update(metric=metric, reference=reference, higher_is_better=bool(higher_is_better),
                     planned_seeds=sorted(planned), failures=failed_runs(frame),
                     throughput=throughput_unit(frame["task"]))
    return out


def throughput_unit(tasks: Iterable[str]) -> str:
    """The unit the table shows throughput in: the one the (first) task declares (TaskSpec.throughput:
    samples, tokens or audio_seconds), samples for a task that is not installed."""
    from harness.registry import get_registries

    registered = get_registries().tasks
    for task in tasks:
        if task in registered:
            return registered.get(task).throughput
    return "samples"
