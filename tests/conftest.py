import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def fake_plugin(tmp_path):
    """Install a throwaway distribution with a ``harness`` entry point onto a fresh sys.path entry.

    Returns a function (module_name, source, ep_name) -> environment for subprocesses.
    """

    def make(module_name: str, source: str, ep_name: str | None = None) -> dict[str, str]:
        ep_name = ep_name or module_name
        (tmp_path / f"{module_name}.py").write_text(source)
        dist = tmp_path / f"{module_name}-1.2.3.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module_name}\nVersion: 1.2.3\n")
        (dist / "entry_points.txt").write_text(f"[harness]\n{ep_name} = {module_name}\n")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
        env.pop("HARNESS_PLUGINS", None)
        env.pop("HARNESS_STRICT_PLUGINS", None)
        return env

    return make


@pytest.fixture
def harness_cmd():
    return [sys.executable, "-c", "from harness.cli import main; main()"]
