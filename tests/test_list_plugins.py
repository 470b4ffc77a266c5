"""`harness list plugins`: version, source (checkout and commit, or wheel) and what each registered."""
import json

from click.testing import CliRunner

from harness import MixerSpec, hookimpl
from harness.cli import cli
from harness.manifest.sources import Source
from harness.testing import temporary_plugin


class _Extra:
    @hookimpl
    def register_mixers(register):
        register(MixerSpec("listtest.mixer", "harness.nn.softmax:SoftmaxAttention"))


def test_list_plugins_shows_version_source_and_counts():
    with temporary_plugin(_Extra, name="listtest"):
        out = CliRunner().invoke(cli, ["list", "plugins", "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["name"]: r for r in json.loads(out.output)}
    core = rows["harness.mixers"]
    assert core["version"] and core["mixers"] >= 2 and core["models"] == 0 and core["tasks"] == 0
    assert rows["harness.tasks"]["tasks"] >= 5 and rows["harness.models"]["models"] >= 3
    info = core["source_info"]
    assert info["kind"] in ("checkout", "wheel")
    if info["kind"] == "checkout" and info["commit"]:     # the repository's own checkout, as in CI
        assert core["source"].startswith(f"{info['path']} @ {info['commit'][:7]}")
    assert rows["listtest"]["mixers"] == 1 and rows["listtest"]["source"] == "runtime"
    out = CliRunner().invoke(cli, ["list", "plugins"])
    assert out.exit_code == 0 and "source" in out.output and "mixers" in out.output


def test_list_plugins_names_an_installed_wheel(fake_plugin, harness_cmd):
    import subprocess

    env = fake_plugin("wheelplugin", "")
    out = subprocess.run([*harness_cmd, "list", "plugins", "--json"], capture_output=True, text=True, env=env,
                         timeout=300)
    row = [r for r in json.loads(out.stdout) if r["name"] == "wheelplugin"][0]
    # a module on PYTHONPATH outside git is a folder, not a wheel; in site-packages it is a wheel
    assert row["version"] == "1.2.3" and row["source_info"]["kind"] == "checkout" and "(not in git)" in row["source"]
    assert Source("wheel", "/x").describe() == "installed wheel"
