"""The installed plugin registers the maw mixer and its three routers, truthfully and lazily."""
import inspect
import subprocess
import sys

from harness.registry import get_registries

ROUTERS = ("maw.soft", "maw.supervised", "maw.grpo")


def test_registered_once_installed():
    regs = get_registries()
    spec = regs.mixers.get("maw")
    assert spec.plugin == "maw" and spec.causal_ok and spec.padding_ok and not spec.kv_cache
    assert spec.surrogate_gradients               # straight-through or sampled routing, whichever router
    assert spec.complexity == "T^2" and not spec.needs_grid and not spec.fixed_len
    for option, space in spec.search_space.items():
        assert "choices" in space or {"low", "high"} <= set(space), option
    assert set(spec.search_space["router"]["choices"]) == set(ROUTERS)
    for name in ROUTERS:
        component = regs.component("maw.router", name)
        assert component.plugin == "maw" and component.kind == "maw.router" and component.description


def test_plugin_module_does_not_import_torch():
    code = "import sys, harness_maw.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_mixer_defaults_are_constructor_options():
    spec = get_registries().mixers.get("maw")
    params = inspect.signature(spec.load()).parameters
    assert set(spec.defaults) <= set(params)
    assert all(params[k].default == v for k, v in spec.defaults.items())


def test_router_targets_load_and_share_the_constructor_contract():
    for name in ROUTERS:
        cls = get_registries().component("maw.router", name).load()
        params = inspect.signature(cls).parameters
        assert {"dim", "heads", "depths", "per_head"} <= set(params), name
