"""The installed plugin registers its mixers, model, task and metrics, truthfully and lazily."""
import subprocess
import sys

from harness.registry import get_registries


def test_registered_once_installed():
    regs = get_registries()
    soft, topk = regs.mixers.get("poh.heads"), regs.mixers.get("poh.heads_topk")
    for spec in (soft, topk):
        assert spec.plugin == "poh" and spec.causal_ok and spec.padding_ok and not spec.kv_cache
        for option, space in spec.search_space.items():
            assert "choices" in space or {"low", "high", "log"} <= set(space), (spec.name, option)
    # surrogate gradients are declared exactly where the straight-through top-k is used
    assert not soft.surrogate_gradients and topk.surrogate_gradients
    assert regs.models.get("poh.refiner").plugin == "poh"
    assert set(regs.models.get("poh.refiner").budget_knobs()) == {"dim", "depth", "mlp_ratio"}
    task = regs.tasks.get("sort")
    assert task.causal and task.metrics == ("element_accuracy", "perfect_sort", "loss")
    assert regs.metrics.get("element_accuracy").higher_is_better
    assert regs.metrics.get("perfect_sort").higher_is_better


def test_plugin_module_does_not_import_torch():
    code = "import sys, harness_poh.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_mixer_defaults_are_constructor_options():
    import inspect

    regs = get_registries()
    for name in ("poh.heads", "poh.heads_topk"):
        spec = regs.mixers.get(name)
        params = inspect.signature(spec.load()).parameters
        assert set(spec.defaults) <= set(params), name
        assert all(params[k].default == v for k, v in spec.defaults.items()), name
