"""Plugin loading: third-party entry points, broken plugins, strict mode, allowlist, duplicates."""
import json
import subprocess
import sys

from harness import plugins
from harness.registry import get_registries
from harness.testing import temporary_plugin

GOOD = '''
from harness import MixerSpec, hookimpl

@hookimpl
def register_mixers(register):
    register(MixerSpec("thirdparty.mean", "thirdparty_mixer:MeanMixer", causal_ok=True, padding_ok=True))
'''
GOOD_MODULE = GOOD.replace("thirdparty_mixer:MeanMixer", "goodplug:MeanMixer") + '''
import torch
from torch import nn

class MeanMixer(nn.Module):
    """Causal running mean over real tokens, then a projection: a tiny honest mixer."""

    def __init__(self, dim, *, heads, ctx, **options):
        super().__init__()
        self.causal = ctx.causal
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, pad=None):
        w = torch.ones(x.shape[:2], dtype=x.dtype) if pad is None else pad.to(x.dtype)   # (B, T)
        t = x.shape[1]
        m = torch.ones(t, t, dtype=x.dtype)
        if self.causal:
            m = m.tril()
        m = m * w[:, None, :]                                                           # (B, T, T)
        m = m + torch.eye(t, dtype=x.dtype) * (m.sum(-1, keepdim=True) == 0)
        return self.proj((m / m.sum(-1, keepdim=True)) @ x)
'''
BROKEN = "raise ImportError('this plugin is broken on purpose')\n"
DUPLICATE = '''
from harness import MixerSpec, hookimpl

@hookimpl
def register_mixers(register):
    register(MixerSpec("softmax", "dupplug:X"))
'''


def run(cmd, env, *args):
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=120)


def test_third_party_mixer_appears(fake_plugin, harness_cmd):
    env = fake_plugin("goodplug", GOOD_MODULE)
    out = run(harness_cmd, env, "list", "mixers", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["thirdparty.mean"]["plugin"] == "goodplug"
    assert rows["thirdparty.mean"]["version"] == "1.2.3"
    assert rows["softmax"]["causal_ok"] is True


def test_third_party_mixer_is_contract_checked_by_core_tests(fake_plugin):
    env = fake_plugin("goodplug", GOOD_MODULE)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header",
                          "tests/test_mixer_contract.py", "-k", "registered and thirdparty"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=plugins_root())
    assert "1 passed" in out.stdout, out.stdout + out.stderr


def plugins_root():
    from pathlib import Path
    return Path(__file__).resolve().parents[1]


def test_broken_plugin_is_reported_and_rest_works(fake_plugin, harness_cmd):
    env = fake_plugin("brokenplug", BROKEN)
    out = run(harness_cmd, env, "list", "plugins", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert "this plugin is broken on purpose" in rows["brokenplug"]["error"]
    assert "brokenplug" in out.stderr  # reported by name
    mixers = run(harness_cmd, env, "list", "mixers", "--json")
    assert mixers.returncode == 0 and "softmax" in mixers.stdout


def test_strict_mode_reraises(fake_plugin, harness_cmd):
    env = fake_plugin("brokenplug", BROKEN)
    env["HARNESS_STRICT_PLUGINS"] = "1"
    out = run(harness_cmd, env, "list", "mixers")
    assert out.returncode != 0
    assert "ImportError: this plugin is broken on purpose" in out.stderr


def test_allowlist_restricts_third_party_plugins(fake_plugin, harness_cmd):
    env = fake_plugin("goodplug", GOOD_MODULE)
    env["HARNESS_PLUGINS"] = "someotherplugin"
    out = run(harness_cmd, env, "list", "mixers", "--json")
    names = [r["name"] for r in json.loads(out.stdout)]
    assert "thirdparty.mean" not in names and "softmax" in names


def test_duplicate_name_names_both_plugins(fake_plugin, harness_cmd):
    env = fake_plugin("dupplug", DUPLICATE)
    out = run(harness_cmd, env, "list", "plugins", "--json")
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert "'softmax' is registered twice" in rows["dupplug"]["error"]
    assert "harness.mixers" in rows["dupplug"]["error"] and "dupplug" in rows["dupplug"]["error"]


COMMANDS = '''
import click
from harness import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command("hello")
    def hello():
        click.echo("hello from a plugin")
'''


def test_plugin_adds_a_command(fake_plugin, harness_cmd):
    env = fake_plugin("cmdplug", COMMANDS)
    out = run(harness_cmd, env, "hello")
    assert out.returncode == 0 and "hello from a plugin" in out.stdout


def test_default_plugins_registered_like_third_parties():
    infos = {i.name: i for i in plugins.plugin_infos()}
    assert {"harness.mixers", "harness.models"} <= set(infos)
    assert get_registries().mixers.get("softmax").plugin == "harness.mixers"


def test_temporary_plugin_registers_and_unregisters():
    class Extra:
        from harness import MixerSpec, hookimpl

        @hookimpl
        def register_mixers(register):
            from harness import MixerSpec
            register(MixerSpec("temp.softmax", "harness.nn.softmax:SoftmaxAttention"))

    with temporary_plugin(Extra, name="extra"):
        assert "temp.softmax" in get_registries().mixers
    assert "temp.softmax" not in get_registries().mixers
