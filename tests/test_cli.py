import json
import subprocess
import sys

from click.testing import CliRunner

from harness import __version__
from harness.cli import cli


def test_version():
    out = CliRunner().invoke(cli, ["--version"])
    assert out.exit_code == 0 and __version__ in out.output


def test_list_mixers_json_shows_capabilities():
    out = CliRunner().invoke(cli, ["list", "mixers", "--json"])
    assert out.exit_code == 0
    softmax = {r["name"]: r for r in json.loads(out.output)}["softmax"]
    assert softmax["causal_ok"] and softmax["padding_ok"] and softmax["kv_cache"]
    assert softmax["complexity"] == "T^2" and softmax["plugin"] == "harness.mixers"


def test_list_table_kinds():
    for kind in ("mixers", "models", "tasks", "metrics", "components", "plugins"):
        out = CliRunner().invoke(cli, ["list", kind])
        assert out.exit_code == 0, out.output


def test_list_tables_show_descriptions_cut_to_fit_and_say_when_empty():
    out = CliRunner().invoke(cli, ["list", "models"])
    assert out.exit_code == 0 and "vision transformer: patch embed" in out.output
    assert max(map(len, out.output.splitlines())) <= 120
    out = CliRunner().invoke(cli, ["list", "mixers"])  # rich markup in a description is text: [q1,q2] stays
    assert "MoP mode C: [q1,q2]" in out.output and "…" in out.output
    out = CliRunner().invoke(cli, ["list", "components"])
    assert out.exit_code == 0 and "maw.soft" in out.output


def test_list_says_when_a_kind_is_empty(monkeypatch):
    import harness.cli.list as list_module

    monkeypatch.setattr(list_module, "rows", lambda kind: [])
    out = CliRunner().invoke(cli, ["list", "components"])
    assert out.exit_code == 0 and out.output == "no components registered\n"


def test_help_and_list_do_not_import_torch_or_mlflow():
    code = ("import sys; from harness.cli import main\n"
            "for args in (['--help'], ['list'], ['list', 'plugins'], ['list', 'models'], ['validate', '--help']):\n"
            "    try: main(args)\n"
            "    except SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'mlflow', 'optuna', 'pandas') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
