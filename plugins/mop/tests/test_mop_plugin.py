"""The installed plugin registers its mixers and models, truthfully and lazily."""
import subprocess
import sys

from harness.registry import get_registries

MIXERS = ("mop.crossview", "mop.multihop", "mop.edgewise", "mop.quartet")


def test_registered_once_installed():
    regs = get_registries()
    for name in MIXERS:
        spec = regs.mixers.get(name)
        assert spec.plugin == "mop" and spec.causal_ok and spec.padding_ok
        for option, space in spec.search_space.items():
            assert "choices" in space or {"low", "high", "log"} <= set(space), (name, option)
    assert regs.mixers.get("mop.edgewise").complexity == "T^3"
    assert regs.mixers.get("mop.quartet").kv_cache
    for name in ("mop.vit", "mop.gpt", "mop.whisper"):
        assert regs.models.get(name).plugin == "mop"
    assert regs.models.get("mop.whisper").inputs == ("audio",)


def test_plugin_module_does_not_import_torch():
    code = "import sys, harness_mop.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plugin_preset_choices_match_the_gate_heads():
    from harness_mop import plugin
    from harness_mop.gate_heads import PRESETS

    assert plugin.PRESETS == list(PRESETS)
