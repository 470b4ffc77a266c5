"""Capabilities the core enforces: a causal task refuses token_mixer before anything is built or
trained, in `harness validate` and `harness run`; so does a padded task; a width T does not
divide is a planning problem naming the fix."""
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli.run import run_command
from harness.plan import plan_suite
from harness.suite import SuiteError, load_suite

CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 60

LM_SUITE = """
[suite]
name = "tm_causal"
task = "charlm"
model = "lm"
metric = "test/bpc"
seeds = [0]
reference = "softmax"

[task]
corpus = "{corpus}"
seq_len = 16

[model]
dim = 32
depth = 1
heads = 4

[train]
steps = 2
batch_size = 4

[variants.softmax]
mixer = "softmax"

[variants.token_mixer]
mixer = "token_mixer"
"""

REFUSAL = ("variants.token_mixer.mixer: 'token_mixer' is not causal (causal_ok=False) but task 'charlm' is "
           "causal; pick a causal mixer")


@pytest.fixture
def lm_suite(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    path = tmp_path / "lm.toml"
    path.write_text(LM_SUITE.format(corpus=corpus.as_posix()))
    return path


def test_validate_refuses_it_on_a_causal_task(lm_suite):
    harness = Path(sys.executable).with_name("harness")       # the console script of this environment
    out = subprocess.run([str(harness), "validate", str(lm_suite)], capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert REFUSAL in out.stdout + out.stderr
    assert "1 problem(s); nothing was run." in out.stdout + out.stderr


def test_run_refuses_it_before_training(lm_suite, tmp_path):
    out_dir = tmp_path / "results"
    result = CliRunner().invoke(run_command, ["--no-track", "--out", str(out_dir), str(lm_suite)])
    assert result.exit_code == 1, result.output
    assert REFUSAL in result.output
    assert not (out_dir / "runs.jsonl").exists()                 # nothing ran, not even the softmax variant


LISTOPS_SUITE = """
[suite]
name = "tm_padded"
task = "listops"
model = "encoder"
metric = "test/accuracy"
seeds = [0]

[task]
min_len = 8
max_len = 16
n_train = 50
n_eval = 20

[model]
dim = 32
depth = 1
heads = 4

[train]
steps = 2
batch_size = 4

[variants.token_mixer]
mixer = "token_mixer"
"""


def test_plan_refuses_it_on_a_padded_task(tmp_path):
    """The core trims padded batches to their longest sequence, which a fixed-length mixer cannot take."""
    path = tmp_path / "listops.toml"
    path.write_text(LISTOPS_SUITE)
    with pytest.raises(SuiteError) as err:
        plan_suite(load_suite(path), match=False)
    assert err.value.problems == ["variants.token_mixer.mixer: 'token_mixer' does not support padding but task "
                                  "'listops' pads"]


VIT_SUITE = """
[suite]
name = "tm_width"
task = "digits"
model = "vit"
metric = "test/accuracy"
seeds = [0]

[model]
dim = {dim}
depth = 1
heads = 4
patch = 2

[train]
steps = 2
batch_size = 4

[variants.token_mixer]
mixer = "token_mixer"
options = {options}
"""


def test_width_not_divisible_by_the_tokens_is_a_planning_problem(tmp_path):
    path = tmp_path / "vit.toml"
    path.write_text(VIT_SUITE.format(dim=36, options="{}"))      # digits, patch 2: 16 tokens
    with pytest.raises(SuiteError) as err:
        plan_suite(load_suite(path), match=False)
    (problem,) = err.value.problems
    assert "dim 36 must be divisible by the sequence length 16" in problem
    path.write_text(VIT_SUITE.format(dim=36, options='{ mismatch = "project" }'))
    assert set(plan_suite(load_suite(path), match=False)) == {"token_mixer"}
    path.write_text(VIT_SUITE.format(dim=48, options="{}"))
    assert set(plan_suite(load_suite(path), match=False)) == {"token_mixer"}
