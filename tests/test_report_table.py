"""The report's table: best among full seed sets, seeds finished / planned, Holm-adjusted p, killed
runs, the cost columns (knob, FLOPs/token), busy-machine marks; and the run's reporter, which keeps
a suite's folder complete."""
from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest

from harness import report
from harness.cli.report import report_command
from harness.specs import Run, RunResult

pd = pytest.importorskip("pandas")

METRIC = "test/accuracy"


def result(variant, seed, acc, *, status=None, knob="mlp_ratio", knob_value=None, contended=None,
           flops=1.5e6) -> RunResult:
    """A hand-made run: ``acc`` None -> failed (or ``status``); knob None -> no budget."""
    run = Run(suite="demo", variant=variant, seed=seed, task="tiny", model="vit", mixer="softmax", metric=METRIC,
              budget={"params": 60_000, "tolerance": 0.02, "knob": knob} if knob else None)
    if acc is None:
        return RunResult(run=run, status=status or "failed", error="RuntimeError: boom")
    efficiency = {"params": 60_000.0, "flops_per_token": flops, "samples_per_s": 1000.0 + seed,
                  "peak_mem_mb": 100.0, "decayed_params": 50_000.0, "threads": 2.0}
    if knob_value is not None:
        efficiency["knob_value"] = knob_value
    if contended is not None:
        efficiency["contended"] = contended
    return RunResult(run=run, status=status or "finished", metrics={METRIC: acc}, efficiency=efficiency,
                     history=[{"step": 10, "train/loss": 2.0}, {"step": 20, "train/loss": 1.5}],
                     run_id=f"{variant}-{seed}")


def lucky_results() -> list[RunResult]:
    """"lucky" finished one seed of three, with the highest mean (0.83) and yet a negative paired
    difference to the reference on that seed (0.83 - 0.84); "mop" finished all three."""
    return [
        result("softmax", 0, 0.80), result("softmax", 1, 0.82), result("softmax", 2, 0.84),
        result("mop", 0, 0.815), result("mop", 1, 0.825), result("mop", 2, 0.835),
        result("lucky", 0, None), result("lucky", 1, None, status="killed"), result("lucky", 2, 0.83),
    ]


def summary_of(results, planned_seeds=None):
    frame = report.results_frame(results)
    return report.summarize(frame, METRIC, True, "softmax", planned_seeds).set_index("variant")


def console_text(results, width=220) -> str:
    from rich.console import Console

    built = report.build_report(results, METRIC, reference="softmax", title="demo")
    console = Console(record=True, width=width, color_system=None)
    report.print_summary(built.summary, METRIC, console, frame=built.frame)
    return console.export_text()


# -- best, n and Holm ------------------------------------------------------------------------

def test_best_only_among_variants_with_every_planned_seed():
    s = summary_of(lucky_results())
    assert s.loc["lucky", "mean"] == pytest.approx(0.83) and s.loc["lucky", "delta"] == pytest.approx(-0.01)
    assert s.loc["lucky", "mean"] > s.loc["mop", "mean"]
    assert not s.loc["lucky", "full_seeds"] and s.loc["mop", "full_seeds"]
    assert s["best"].tolist() == [False, True, False] and s.index[1] == "mop"
    assert (s["n_planned"] == 3).all()


def test_no_best_without_a_full_seed_set_and_planned_seeds_count():
    # the suite planned seed 3 too: no variant finished it, so none is bold
    s = summary_of(lucky_results(), planned_seeds=[0, 1, 2, 3])
    assert (s["n_planned"] == 4).all() and not s["best"].any() and not s["full_seeds"].any()


def test_markdown_bolds_only_a_full_variant_and_shows_n_and_holm(tmp_path):
    written = report.write_reports(lucky_results(), tmp_path, metric=METRIC, reference="softmax", title="demo")
    md = written["results.md"].read_text()
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "**" in rows["mop"] and "**" not in rows["lucky"] and "**" not in rows["softmax"]
    assert "1/3, 1 failed, 1 killed" in rows["lucky"] and "3/3" in rows["mop"]
    assert "Holm p" in md
    summary = pd.read_csv(written["summary.csv"]).set_index("variant")
    assert {"n_planned", "full_seeds", "p_holm", "n_killed"} <= set(summary.columns)
    assert summary.loc["lucky", "n_killed"] == 1 and summary.loc["lucky", "n_failed"] == 1


def test_holm_column_adjusts_over_the_variants_of_the_table():
    results = [result("softmax", s, a) for s, a in enumerate([0.80, 0.82, 0.84])]
    results += [result("a", s, v) for s, v in enumerate([0.83, 0.84, 0.88])]     # diffs .03 .02 .04
    results += [result("b", s, v) for s, v in enumerate([0.81, 0.84, 0.86])]     # diffs .01 .02 .02
    s = summary_of(results)
    p_a, p_b = s.loc["a", "p_value"], s.loc["b", "p_value"]
    low, high = sorted([p_a, p_b])
    holm = {p_a: None, p_b: None}
    holm[low] = min(1.0, 2 * low)
    holm[high] = max(holm[low], high)
    assert s.loc["a", "p_holm"] == pytest.approx(holm[p_a]) and s.loc["b", "p_holm"] == pytest.approx(holm[p_b])
    assert math.isnan(s.loc["softmax", "p_holm"])
    text = console_text(results)
    assert f"Holm p={holm[p_a]:.3f}" in text and f"p={p_a:.3f}" in text


def test_report_command_takes_planned_seeds_from_suite_json(tmp_path):
    from click.testing import CliRunner

    with open(tmp_path / "runs.jsonl", "w") as fh:
        for r in lucky_results():
            fh.write(json.dumps(dataclasses.asdict(r)) + "\n")
    (tmp_path / "suite.json").write_text(json.dumps({"name": "demo", "metric": METRIC, "reference": "softmax",
                                                     "config": {"suite": {"seeds": [0, 1, 2, 3]}}}))
    res = CliRunner().invoke(report_command, [str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "3/4, 1 not run" in res.output and "1/4, 1 failed, 1 killed, 1 not run" in res.output
    assert not pd.read_csv(tmp_path / "summary.csv")["best"].any()


# -- killed vs failed ------------------------------------------------------------------------

def test_killed_runs_are_called_killed():
    results = [result("softmax", 0, 0.8), result("softmax", 1, 0.82), result("softmax", 2, None, status="killed")]
    s = summary_of(results)
    assert s.loc["softmax", "n_killed"] == 1 and s.loc["softmax", "n_failed"] == 0
    text = console_text(results)
    assert "2/3, 1 killed" in text and "failed" not in text.split("did not finish")[0]


# -- cost in view ----------------------------------------------------------------------------

def cost_results() -> list[RunResult]:
    return [result("softmax", 0, 0.80, knob_value=0.6875, flops=1.2e6, contended=0.0),
            result("softmax", 1, 0.82, knob_value=0.6875, flops=1.2e6, contended=0.0),
            result("wide", 0, 0.81, knob_value=2.1875, flops=2.5e6, contended=1.0),
            result("wide", 1, 0.83, knob_value=2.1875, flops=2.5e6, contended=0.0)]


def test_console_shows_knob_flops_and_busy_throughput():
    text = console_text(cost_results())
    header = next(line for line in text.splitlines() if "variant" in line)
    assert "mlp_ratio" in header and "FLOPs/token" in header and "decayed" not in text and "threads" not in header
    lines = {line.split()[0]: line for line in text.splitlines() if line.split()[:1] in (["softmax"], ["wide"])}
    assert "0.69" in lines["softmax"] and "1.20M" in lines["softmax"] and "‡" not in lines["softmax"]
    assert "2.19" in lines["wide"] and "2.50M" in lines["wide"] and "1,000‡" in lines["wide"]
    note = next(line for line in text.splitlines() if line.startswith("‡"))
    assert "wide (1 of 2 runs)" in note


def test_files_carry_knob_flops_contention_and_csv_only_figures(tmp_path):
    written = report.write_reports(cost_results(), tmp_path, metric=METRIC, reference="softmax", title="demo")
    md = written["results.md"].read_text()
    assert "| mlp_ratio |" in md and "| FLOPs/token |" in md and "1,000‡" in md and "\n‡ throughput" in md
    per_run = pd.read_csv(written["results.csv"])
    assert {"knob", "knob_value", "contended", "decayed_params", "threads"} <= set(per_run.columns)
    summary = pd.read_csv(written["summary.csv"]).set_index("variant")
    assert summary.loc["wide", "knob"] == "mlp_ratio" and summary.loc["wide", "knob_value"] == pytest.approx(2.1875)
    assert summary.loc["wide", "n_contended"] == 1 and summary.loc["softmax", "n_contended"] == 0
    assert summary.loc["wide", "decayed_params"] == 50_000 and summary.loc["wide", "threads"] == 2


def test_no_budget_no_knob_column_and_differing_knobs_named_in_cells():
    plain = [result("softmax", 0, 0.8, knob=None), result("other", 0, 0.7, knob=None)]
    table = report.cells.summary_table(summary_of(plain).reset_index(), METRIC)
    assert "knob" not in table.columns and "FLOPs/token" in table.header
    mixed = [result("softmax", 0, 0.8, knob_value=64), result("other", 0, 0.7, knob="depth", knob_value=3)]
    table = report.cells.summary_table(summary_of(mixed).reset_index(), METRIC)
    knob = table.index("knob")
    assert table.header[knob] == "knob" and [row[knob] for row in table.rows] == ["mlp_ratio 64", "depth 3"]


# -- the run's reporter ----------------------------------------------------------------------

def _suite(seeds=(0, 1, 2)):
    return SimpleNamespace(name="demo", reference="softmax", suite=SimpleNamespace(metric=METRIC, seeds=list(seeds)))


def test_reporter_after_one_variant_keeps_the_folder_complete(tmp_path, capsys):
    from harness.default_plugins.reporting import suite_finished
    from harness.runlog import RunLog

    log = RunLog(tmp_path)
    for r in lucky_results():
        log.append(r)
    again = [result("mop", s, v) for s, v in enumerate([0.9, 0.9, 0.9])]   # `harness run -v mop` appended these
    for r in again:
        log.append(r)
    suite_finished(suite=_suite(), results=again, output_dir=str(tmp_path))
    out = capsys.readouterr().out
    per_run = pd.read_csv(tmp_path / "results.csv")
    assert len(per_run) == 9 and set(per_run["variant"]) == {"softmax", "mop", "lucky"}
    assert per_run.loc[per_run["variant"] == "mop", METRIC].tolist() == [0.9, 0.9, 0.9]
    assert "covers all 9 runs" in out and "this invocation: 3" in out

    # a report there holds a run this folder's runs.jsonl lacks: warned, not overwritten
    per_run = pd.concat([per_run, per_run.iloc[[0]].assign(variant="elsewhere")])
    per_run.to_csv(tmp_path / "results.csv", index=False)
    suite_finished(suite=_suite(), results=again, output_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert "warning: not overwriting" in out and "elsewhere/seed0" in out
    assert len(pd.read_csv(tmp_path / "results.csv")) == 10


def test_throughput_is_shown_in_the_unit_the_task_declares():
    from harness import TaskSpec, hookimpl
    from harness.testing import temporary_plugin

    class Tasks:
        @hookimpl
        def register_tasks(register):
            register(TaskSpec("tiny", "x:y", throughput="audio_seconds"))

    results = [result("softmax", s, 0.8 + s / 100) for s in range(2)]
    for r in results:
        r.efficiency.update(tokens_per_s=64_000.0 + r.run.seed, audio_s_per_s=12_345.0)
    assert "samples/s" in console_text(results)            # "tiny" is not installed: samples
    with temporary_plugin(Tasks, name="tasks"):
        text = console_text(results)
    assert "audio s/s" in text and "12,345" in text and "samples/s" not in text
