"""`harness validate`: model config keys, "did you mean" everywhere, one pass, --keys, several suites, device."""
import textwrap

import pytest
from click.testing import CliRunner

from harness import ModelSpec
from harness.cli import cli
from harness.plan import plan_suite
from harness.registry import get_registries
from harness.specs import BUDGET_KNOBS
from harness.suite import SuiteError, load_suite
from harness.validate import validate_file

SMOKE = "suites/smoke.toml"
HINT = " (see `harness validate --keys`)"

BASE = """
[suite]
name = "t"
task = "digits"
model = "vit"
[model]
dim = 32
depth = 1
heads = 4
patch = 2
[train]
steps = 5
[variants.a]
mixer = "softmax"
[variants.b]
mixer = "softmax"
"""


def write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def problems(tmp_path, text, *overrides):
    return validate_file(write(tmp_path, text), overrides).problems


def test_unknown_model_key_is_said_once_with_a_suggestion(tmp_path):
    found = problems(tmp_path, BASE.replace("heads = 4", "head = 4") + 'model = { mlp_ration = 2 }\n')
    assert found == ["model.head: unknown key; did you mean heads?" + HINT,
                     "variants.b.model.mlp_ration: unknown key; did you mean mlp_ratio?" + HINT]
    assert not any("unexpected keyword" in p for p in found)


def test_model_keys_follow_the_variants_model():
    """mop.vit's gate keys are its config's; vit has none of them."""
    suite = load_suite(SMOKE, ["variants.mop.mixer=softmax", "variants.mop.model_name=mop.vit",
                               "variants.mop.model.views=3", "variants.softmax.model.views=3"])
    with pytest.raises(SuiteError) as err:
        plan_suite(suite, match=False)
    assert err.value.problems == ["variants.softmax.model.views: unknown key; model 'vit' keys: depth, dim, heads, "
                                  "mlp_ratio, patch" + HINT]


def test_registered_models_declare_their_config_and_knobs_stay_in_it():
    extra = {"mop.vit": {"views", "kernels"}, "mop.gpt": {"views", "kernels", "kernel_size"}}
    for spec in get_registries().models:
        keys = spec.config_fields()
        assert keys is not None, spec.name
        assert set(spec.budget_knobs()) <= set(keys) and spec.budget_knobs(), spec.name
        assert extra.get(spec.name, set()) <= set(keys), spec.name
    from harness.nn.lm import LMConfig

    assert ModelSpec("m", "x:y").budget_knobs() == BUDGET_KNOBS  # no config: every knob, as before
    assert ModelSpec("m", "x:y", config=LMConfig, knobs=("dim",)).budget_knobs() == ("dim",)
    with pytest.raises(ValueError, match="declares budget knob.* patch"):
        ModelSpec("m", "x:y", config=LMConfig, knobs=("dim", "patch")).budget_knobs()


@pytest.mark.parametrize("edit, expected", [
    (("[train]", "[trian]\nsteps = 5\n[train]"), "trian: unknown key; did you mean train?"),
    (("steps = 5", "learning_rate = 0.1"), "train.learning_rate: unknown key; did you mean lr?"),
    (("steps = 5", "num_steps = 5"), "train.num_steps: unknown key; did you mean steps?"),
    (('model = "vit"', 'model = "vit"\nseed = [1]'), "suite.seed: unknown key; did you mean seeds?"),
    (("[train]", "[budget]\nparams = 9000\ntolerence = 0.1\n[train]"), "budget.tolerence: unknown key; did you mean tolerance?"),
    (("[train]", "[tune]\ntrails = 3\n[train]"), "tune.trails: unknown key; did you mean trials?"),
    (("[train]", "[profile]\nenable = true\n[train]"), "profile.enable: unknown key; did you mean enabled?"),
    (('[variants.b]\nmixer = "softmax"', '[variants.b]\nmixr = "softmax"'), "variants.b.mixr: unknown key; did you mean mixer?"),
    (('[variants.b]\nmixer = "softmax"', '[variants.b]\nmixer = "softmax"\ntrain = { learning_rate = 1 }'),
     "variants.b.train.learning_rate: unknown key; did you mean lr?"),
    (('[variants.b]\nmixer = "softmax"', '[variants.b]\nmixer = "softmax"\noptions = { dropot = 0.1 }'),
     "variants.b.options.dropot: unknown key; did you mean dropout?"),
    (("[model]", '[task]\ndata_rot = "x"\n[model]', "digits", "cifar10"),
     "task.data_rot: unknown key; did you mean data_root?"),
])
def test_every_unknown_key_suggests_the_key_meant(tmp_path, edit, expected):
    text = BASE
    for old, new in zip(edit[::2], edit[1::2]):
        text = text.replace(old, new, 1)
    assert expected + HINT in problems(tmp_path, text)


def test_schema_problems_do_not_hide_the_rest(tmp_path):
    text = BASE.replace("steps = 5", 'steps = 5\nlr = "fast"').replace('mixer = "softmax"\n', 'mixer = "sofmax"\n', 1)
    found = problems(tmp_path, text.replace('name = "t"', 'name = "t"\nseeds = [0, "x"]'))
    assert found[:2] == ["suite.seeds.1: Input should be a valid integer, unable to parse string as an integer (got 'x')",
                         "train.lr: Input should be a valid number, unable to parse string as a number (got 'fast')"]
    assert found[2:] == ["variants.a.mixer: Unknown mixer 'sofmax'. Did you mean: softmax?"]
    # a missing required key drops its table; the other variant is still checked
    found = problems(tmp_path, BASE.replace('[variants.b]\nmixer = "softmax"', '[variants.b]\n[variants.c]\nmixer = "x"'))
    assert found[0] == "variants.b.mixer: required key is missing" and "variants.c.mixer: Unknown mixer 'x'." in found[1]
    assert problems(tmp_path, BASE.replace('name = "t"\n', "")) == ["suite.name: required key is missing"]


def test_cuda_device_is_refused_where_torch_sees_none(tmp_path, monkeypatch):
    import torch

    path = write(tmp_path, BASE)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    found = validate_file(path, ["train.device=cuda", "variants.b.train.device=cuda"]).problems
    assert found == [f"{key}: 'cuda' but torch sees no CUDA device here; set it to \"auto\" (CUDA when there is one) "
                     f"or \"cpu\"" for key in ("train.device", "variants.b.train.device")]
    assert plan_suite(load_suite(path, ["train.device=cuda"]))  # only validate asks: planning does not
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert validate_file(path, ["train.device=cuda"]).problems == []


def invoke(*args):
    return CliRunner().invoke(cli, ["validate", *map(str, args)])


def test_keys_lists_sections_model_configs_and_mixer_options():
    out = invoke("--keys")
    assert out.exit_code == 0, out.output
    lines = [line.split() for line in out.output.splitlines()]
    assert ["lr", "float", "0.003"] in lines and ["name", "str", "required"] in lines
    assert "[model] and variants.<name>.model of model 'vit'" in out.output and ["patch", "int", "4"] in lines
    assert "of model 'mop.gpt'" in out.output and ["kernel_size", "int", "3"] in lines
    assert "variants.<name>.options of mixer 'softmax'" in out.output and ["dropout", "float", "0.0"] in lines
    assert "variants.<name>.options of mixer 'mop.multihop'" in out.output and ["hops", "int", "3"] in lines


def test_several_suites_one_summary(tmp_path):
    bad = write(tmp_path, BASE.replace("heads = 4", "head = 4"), "bad.toml")
    out = invoke(SMOKE, bad, SMOKE)
    assert out.exit_code == 1
    assert out.output.count(f"{SMOKE}: OK") == 2 and f"{bad}: model.head: unknown key" in out.stderr
    assert out.stderr.splitlines()[-1] == f"2 of 3 suites valid; with problems: {bad}"
    out = invoke(SMOKE, SMOKE)
    assert out.exit_code == 0 and out.output.splitlines()[-1] == "2 of 2 suites valid"
    assert invoke().exit_code == 2


def test_file_problems_name_the_path_once(tmp_path):
    syntax = write(tmp_path, "[suite\n", "syntax.toml")
    out = invoke(syntax)
    assert out.exit_code == 1 and out.stderr.splitlines()[0].startswith(f"{syntax}: not valid TOML: ")
    assert out.stderr.count("syntax.toml") == 1
    out = invoke(tmp_path / "nope.toml")
    assert out.stderr.splitlines()[0] == f"{tmp_path / 'nope.toml'}: no such suite file"
    child = write(tmp_path, 'extends = "syntax.toml"\n', "child.toml")
    assert f"{child}: extends: {syntax}: not valid TOML" in invoke(child).stderr


class BrokenConfig:
    from harness import hookimpl

    @hookimpl
    def register_models(register):
        register(ModelSpec("test.broken_config", "harness.nn.vit:build_vit", inputs=("image",),
                           config="harness.nn.vit:NoSuchConfig"))


def test_a_model_config_that_fails_to_load_is_one_problem():
    from harness.testing import temporary_plugin

    with temporary_plugin(BrokenConfig, name="broken_config"):
        suite = load_suite(SMOKE, ["suite.model=test.broken_config"])
        with pytest.raises(SuiteError) as err:
            plan_suite(suite)
    assert [p.split(":")[0] for p in err.value.problems] == ["variants.softmax", "variants.softmax_narrow_mlp"]
    assert all("loading the config of 'test.broken_config' failed: AttributeError" in p for p in err.value.problems)
