"""`harness new-plugin`: the package it writes installs into this environment (editable, no build
isolation), passes its own tests and runs its suite; then it is uninstalled."""
import subprocess
import sys
from importlib import metadata

import pytest
from click.testing import CliRunner

from harness.cli import cli
from harness.scaffold import ScaffoldError, names_for, write_plugin

PIP = [sys.executable, "-m", "pip"]


def _uninstall() -> None:
    subprocess.run([*PIP, "uninstall", "-y", "-q", "harness-demo"], capture_output=True, text=True, timeout=300)


def _installed() -> bool:
    return any(ep.name == "demo" for ep in metadata.entry_points(group="harness"))


@pytest.mark.slow
def test_new_plugin_installs_passes_its_tests_and_runs_its_suite(tmp_path):
    if _installed():  # left over from an interrupted run of this test
        _uninstall()
    out = CliRunner().invoke(cli, ["new-plugin", "demo", "--dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    folder = tmp_path / "demo"
    assert (folder / "pyproject.toml").read_text().count('demo = "harness_demo.plugin"') == 1
    try:
        done = subprocess.run([*PIP, "install", "-q", "--no-build-isolation", "--no-deps", "-e", str(folder)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
                              capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout + done.stderr
        listed = subprocess.run([sys.executable, "-c", "from harness.cli import main; main()", "list", "plugins",
                                 "--json"], capture_output=True, text=True, timeout=300)
        demo = [row for row in __import__("json").loads(listed.stdout) if row["name"] == "demo"]
        assert demo and demo[0]["mixers"] == 1 and demo[0]["source"].startswith(str(folder)), listed.stdout
        # the suite as written (3 seeds, 150 steps) is cut here to keep the test short
        done = subprocess.run([sys.executable, "-c", "from harness.cli import main; main()", "run",
                               "suites/demo.toml", "--no-track", "--set", "train.steps=4", "--set",
                               "train.eval_every=2", "--set", "suite.seeds=[0]"],
                              capture_output=True, text=True, timeout=600, cwd=folder)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "demo/seed0: test/accuracy" in done.stdout
    finally:
        _uninstall()
    assert not _installed()


def test_new_plugin_refuses_bad_names_and_full_folders(tmp_path):
    assert names_for("my-idea") == {"name": "my_idea", "dist": "harness-my-idea", "package": "harness_my_idea",
                                    "mixer": "my_idea.attention", "class_name": "MyIdeaAttention"}
    for bad in ("9lives", "My", "class", "harness_x", ""):
        with pytest.raises(ScaffoldError):
            names_for(bad)
    write_plugin("fresh", tmp_path)
    out = CliRunner().invoke(cli, ["new-plugin", "fresh", "--dir", str(tmp_path)])
    assert out.exit_code == 1 and "exists and is not empty" in out.output
    out = CliRunner().invoke(cli, ["new-plugin", "poh", "--dir", str(tmp_path)])  # an installed plugin's name
    assert out.exit_code == 1 and "already used by the installed distribution harness-poh" in out.output
