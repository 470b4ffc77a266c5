"""The installed plugin registers token_mixer, truthfully and lazily."""
import subprocess
import sys

from harness.registry import get_registries


def test_registered_once_installed_with_honest_capabilities():
    spec = get_registries().mixers.get("token_mixer")
    assert spec.plugin == "token_mixer"
    assert not spec.causal_ok and not spec.padding_ok and spec.fixed_len
    assert not spec.needs_grid and not spec.kv_cache and not spec.surrogate_gradients
    assert spec.complexity == "T"
    assert spec.load().__name__ == "TokenMixer"
    for option, space in spec.search_space.items():
        assert option in spec.defaults
        assert "choices" in space or {"low", "high", "log"} <= set(space), option


def test_defaults_match_the_constructor():
    import inspect

    from harness_token_mixer.mixer import TokenMixer

    spec = get_registries().mixers.get("token_mixer")
    params = inspect.signature(TokenMixer).parameters
    assert {k: params[k].default for k in spec.defaults} == dict(spec.defaults)


def test_plugin_module_does_not_import_torch():
    code = "import sys, harness_token_mixer.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
