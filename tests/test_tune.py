"""Optuna tuning: studies, the shared trial budget, pruning, MLflow layout, `run --best`, errors."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from harness import MixerSpec, hookimpl, tracking
from harness.cli import cli
from harness.nn.softmax import SoftmaxAttention
from harness.suite import SuiteError, load_suite
from harness.testing import temporary_plugin
from harness.tune import TuneError, best_values, check_space, open_storage, parse_space, space_for, write_best

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "suites" / "smoke.toml")
FAST = ["train.steps=8", "train.eval_every=4", "train.log_every=4", "train.batch_size=32"]
SETS = [arg for item in FAST for arg in ("--set", item)]
HARNESS = [sys.executable, "-c", "from harness.cli import main; main()"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    tracking.configure()  # the tune command configured tracking for this process; restore the default


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def load_study(storage, name="smoke.softmax"):
    return optuna.load_study(study_name=name, storage=open_storage(str(storage)))


def assert_finished(study, n):
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(n)), [t.number for t in trials]
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), (t.number, t.state, t.user_attrs)
        if t.state == TrialState.COMPLETE:
            assert math.isfinite(t.value)


def test_tune_one_variant_journal_mlflow_and_best(in_tmp):
    journal, mlflow_uri = in_tmp / "optuna.journal", f"sqlite:///{in_tmp}/mlflow.db"
    out = invoke("tune", SMOKE, "-v", "softmax", "--trials", 4, "--storage", journal, "--tracking-uri", mlflow_uri,
                 *SETS)
    assert out.exit_code == 0, out.output
    assert out.output.count("softmax #") == 4 and "best trial per variant" in out.output
    study = load_study(journal)
    assert_finished(study, 4)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert all(set(t.params) == {"train.lr"} for t in study.trials)

    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("smoke-tune")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("harness.role") == "tune-parent"]
    children = [r for r in runs if r.data.tags.get("harness.role") == "tune-trial"]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.data.tags["harness.study"] == "smoke.softmax" and parent.data.tags["harness.variant"] == "softmax"
    states = {t.number: t.state.name for t in study.trials}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        number = int(child.data.params["trial"])
        assert child.data.tags["harness.trial_state"] == states[number]
        assert float(child.data.params["train.lr"]) == pytest.approx(study.trials[number].params["train.lr"])
        assert "val/accuracy" in child.data.metrics
        assert not any(k.startswith("test/") for k in child.data.metrics)  # tuning never looks at test

    best_file = in_tmp / "results" / "smoke" / "best_params.smoke.softmax.json"
    assert f"Best params (one file per study, by storage): {best_file.relative_to(in_tmp)}." in out.output
    best = json.loads(best_file.read_text())["storages"][str(journal)]
    assert best["best_trial"] == study.best_trial.number and best["metric"] == "val/accuracy"

    values = best_values(load_suite(SMOKE, FAST), str(journal), ["softmax"])
    assert values == {"variants.softmax.train.lr": study.best_params["train.lr"]}
    tuned = load_suite(SMOKE, FAST, values=values)
    assert tuned.variants["softmax"].train["lr"] == study.best_params["train.lr"]


def test_two_processes_share_one_study(in_tmp):
    """Two `harness tune` processes started together on one journal finish exactly N trials."""
    journal, n = in_tmp / "shared.journal", 6
    cmd = [*HARNESS, "tune", SMOKE, "-v", "softmax", "--trials", str(n), "--storage", str(journal), "--no-track", *SETS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two torch processes on a small CI machine
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert_finished(load_study(journal), n)  # numbers 0..n-1: none lost, none duplicated, none left RUNNING
    lines = [line for out in outputs for line in out.splitlines() if line.startswith("softmax #")]
    assert sorted(int(line.split("#")[1].split()[0]) for line in lines) == list(range(n))


def test_workers_option_spawns_workers_on_sqlite(in_tmp):
    storage, mlflow_uri = f"sqlite:///{in_tmp}/optuna.db", f"sqlite:///{in_tmp}/mlflow.db"
    out = invoke("tune", SMOKE, "-v", "softmax", "--trials", 4, "--workers", 2, "--storage", storage,
                 "--tracking-uri", mlflow_uri, *SETS)
    assert out.exit_code == 0, out.output
    assert_finished(load_study(storage), 4)

    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke-tune").experiment_id])
    parent = [r for r in runs if r.data.tags.get("harness.role") == "tune-parent"]
    children = [r for r in runs if r.data.tags.get("harness.role") == "tune-trial"]
    assert len(parent) == 1 and len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent[0].info.run_id}
    # Running the command again resumes nothing and adds no trial: the budget is per study.
    again = invoke("tune", SMOKE, "-v", "softmax", "--trials", 4, "--storage", storage, "--no-track", *SETS)
    assert again.exit_code == 0, again.output
    assert "softmax #" not in again.output
    assert_finished(load_study(storage), 4)
    # Trials trained another way would not be comparable: the study refuses them.
    other = invoke("tune", SMOKE, "-v", "softmax", "--storage", storage, "--no-track", *SETS, "--set", "train.steps=6")
    assert other.exit_code == 1 and "another configuration of this variant (train.steps: 8 -> 6)" in other.output


def test_invalid_space_key_is_one_line(in_tmp):
    out = invoke("tune", SMOKE, "-v", "softmax", "--no-track", "--storage", in_tmp / "s.journal",
                 "--set", 'tune.space={"train.lrr" = {low = 1e-4, high = 1e-2}}')
    assert out.exit_code == 1
    problem = [line for line in out.output.splitlines() if "tune.space" in line]
    assert len(problem) == 1 and "tune.space.train.lrr" in problem[0] and "Did you mean: lr" in problem[0]
    assert "Traceback" not in out.output and not (in_tmp / "s.journal").exists()


@pytest.mark.parametrize("space, expected", [
    ({"optim.lr": {"low": 0.1, "high": 1.0}}, "tune.space.optim.lr: keys look like"),
    ({"train.lr": {"low": 0.1, "high": 0.01}}, "tune.space.train.lr: low (0.1) is above high (0.01)"),
    ({"train.lr": {"low": 0.0, "high": 0.01, "log": True}}, "a log range needs low > 0"),
    ({"train.lr": {"lo": 0.1, "high": 1.0}}, "unknown field(s) lo"),
    ({"train.lr": {"choices": []}}, "tune.space.train.lr.choices: expected a non-empty list"),
    ({"train.lr": 0.1}, "tune.space.train.lr: expected a table"),
])
def test_space_entries_are_checked(space, expected):
    with pytest.raises(SuiteError) as exc:
        parse_space(space)
    assert len(exc.value.problems) == 1 and exc.value.problems[0].startswith("tune.space.")
    assert expected in exc.value.problems[0]


def test_space_values_are_checked_against_the_variant():
    suite = load_suite(SMOKE, FAST)
    with pytest.raises(SuiteError) as exc:
        check_space(suite, "softmax", parse_space({"options.rank": {"low": 2, "high": 8}}))
    assert exc.value.problems[0].startswith("tune.space.options.rank: no tried value works")
    with pytest.raises(SuiteError) as exc:
        check_space(suite, "softmax", parse_space({"train.warmup": {"low": 0.0, "high": 2.0}}))
    assert exc.value.problems[0].startswith("tune.space.train.warmup: 2.0 is not allowed")
    with pytest.raises(SuiteError, match="the budget matcher sets mlp_ratio"):
        check_space(suite, "softmax", parse_space({"model.mlp_ratio": {"low": 1.0, "high": 4.0}}))
    check_space(suite, "softmax", parse_space({"model.depth": {"low": 1, "high": 3}, "options.dropout":
                                               {"choices": [0.0, 0.1]}}))


def test_tuning_on_test_is_refused(in_tmp):
    out = invoke("tune", SMOKE, "--no-track", "--set", "tune.metric=test/accuracy")
    assert out.exit_code == 1 and "tune.metric: tune on the validation split" in out.output


def test_study_name_needs_one_variant(in_tmp):
    out = invoke("tune", SMOKE, "--no-track", "--study", "mine", "--storage", in_tmp / "s.journal")
    assert out.exit_code == 1 and "--study mine names one study; pick one variant" in out.output


def test_best_without_a_study_is_a_clear_error(in_tmp):
    out = invoke("run", SMOKE, "--best", "--no-track")  # no storage at all yet
    assert out.exit_code == 1 and "no such database" in out.output and "harness tune" in out.output
    journal = in_tmp / "other.journal"
    storage = open_storage(str(journal))
    optuna.create_study(study_name="smoke.softmax", storage=storage, direction="maximize")
    out = invoke("run", SMOKE, "--best", "--no-track", "--storage", journal)
    assert out.exit_code == 1
    assert "study 'smoke.softmax' has no completed trial" in out.output
    assert f"no study 'smoke.softmax_narrow_mlp' in {journal}" in out.output
    assert f"harness tune {SMOKE} -v softmax_narrow_mlp --storage {journal}" in out.output
    with pytest.raises(TuneError, match="no study 'smoke.softmax_narrow_mlp'"):
        best_values(load_suite(SMOKE), str(journal), ["softmax_narrow_mlp"])


def test_best_params_files_per_study_keep_every_storage(in_tmp):
    suite = load_suite(SMOKE)
    entry = {"study": "smoke.softmax", "best_value": 0.5}
    write_best(suite, "softmax", {**entry, "storage": "a.journal"})
    path = write_best(suite, "softmax", {**entry, "storage": "sqlite:///b.db", "best_value": 0.7})
    other = write_best(suite, "softmax", {**entry, "study": "mine/1", "storage": "a.journal"})
    assert path.resolve() == in_tmp / "results" / "smoke" / "best_params.smoke.softmax.json"
    assert other.name == "best_params.mine_1.json"
    data = json.loads(path.read_text())
    assert data["study"] == "smoke.softmax" and data["variant"] == "softmax"
    assert {k: v["best_value"] for k, v in data["storages"].items()} == {"a.journal": 0.5, "sqlite:///b.db": 0.7}


def test_trials_help_says_the_budget_is_cumulative():
    out = invoke("tune", "--help")
    assert "Cumulative: a study's budget only grows" in " ".join(out.output.split())


def test_storage_urls(in_tmp):
    with pytest.raises(TuneError, match="journal file path ending in .log or .journal"):
        open_storage("optuna.db")
    assert type(open_storage(str(in_tmp / "a.log"))).__name__ == "JournalStorage"
    assert type(open_storage(f"sqlite:///{in_tmp}/a.db")).__name__ == "RDBStorage"


def test_best_values_are_the_best_trials_typed_params(in_tmp):
    journal = in_tmp / "best.journal"
    params = {"train.lr": 1.2345e-05, "model.depth": 3, "options.flag": True, "options.preset": "mix 5"}
    dists = {"train.lr": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
             "model.depth": optuna.distributions.IntDistribution(1, 4),
             "options.flag": optuna.distributions.CategoricalDistribution([True, False]),
             "options.preset": optuna.distributions.CategoricalDistribution(["mix 5", "plain"])}
    study = optuna.create_study(study_name="smoke.softmax", storage=open_storage(str(journal)), direction="maximize")
    worse = {**params, "train.lr": 1e-3, "model.depth": 1, "options.flag": False, "options.preset": "plain"}
    study.add_trial(optuna.trial.create_trial(params=worse, distributions=dists, value=0.5))
    study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.9))
    values = best_values(load_suite(SMOKE, FAST), str(journal), ["softmax"])
    assert values == {f"variants.softmax.{k}": v for k, v in params.items()}
    assert [type(v) for v in values.values()] == [float, int, bool, str]
    tuned = load_suite(SMOKE, [*FAST, "variants.softmax.model.depth=2"], values=values)  # an explicit --set wins
    variant = tuned.variants["softmax"]
    assert variant.train["lr"] == 1.2345e-05 and variant.model["depth"] == 2
    assert variant.options == {**variant.options, "flag": True, "preset": "mix 5"}


class SpacedMixers:
    @hookimpl
    def register_mixers(register):
        register(MixerSpec("test.spaced", "harness.nn.softmax:SoftmaxAttention",
                           search_space={"dropout": {"choices": [0.0, 0.1]}}))


def test_space_falls_back_to_the_mixer_declaration():
    with temporary_plugin(SpacedMixers, name="spaced"):
        suite = load_suite(SMOKE, [*FAST, "variants.softmax.mixer=test.spaced"])
        space, source = space_for(suite, "softmax")
        assert set(space) == {"options.dropout", "train.lr"} and "test.spaced" in source
        assert space["options.dropout"].choices == (0.0, 0.1) and space["train.lr"].log
        own = load_suite(SMOKE, [*FAST, 'tune.space={"train.weight_decay" = {low = 0.0, high = 0.1}}'])
        assert set(space_for(own, "softmax")[0]) == {"train.weight_decay"}  # [tune].space wins


class NaNAttention(SoftmaxAttention):
    def forward(self, x, pad=None):
        return super().forward(x, pad) * float("nan")


class NaNMixer:
    @hookimpl
    def register_mixers(register):
        register(MixerSpec("test.tune_nan", NaNAttention))


def test_diverging_trials_are_pruned_with_the_reason(in_tmp):
    journal = in_tmp / "nan.journal"
    with temporary_plugin(NaNMixer, name="tune_nan"):
        out = invoke("tune", SMOKE, "-v", "softmax", "--trials", 2, "--storage", journal, "--no-track", *SETS,
                     "--set", "variants.softmax.mixer=test.tune_nan")
    assert out.exit_code == 0, out.output
    trials = load_study(journal).trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(t.user_attrs["harness.error"].startswith("diverged: training loss became nan") for t in trials)
    assert "diverged at step" in out.output
