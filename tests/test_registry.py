import pytest

from harness.registry import DuplicateNameError, Registry, UnknownNameError, get_registries
from harness.specs import MixerSpec, load_target


def test_unknown_name_suggests():
    with pytest.raises(UnknownNameError) as err:
        get_registries().mixers.get("sofmax")
    assert str(err.value) == "Unknown mixer 'sofmax'. Did you mean: softmax?"


def test_unknown_name_without_close_match_lists_available():
    with pytest.raises(UnknownNameError, match="Available: .*softmax"):
        get_registries().mixers.get("zzzzzz")


def test_duplicate_names_both_plugins():
    reg = Registry("mixer")
    reg.add(MixerSpec("a", "x:y"), "plugin_one", "1")
    with pytest.raises(DuplicateNameError, match="'plugin_one' and by plugin 'plugin_two'"):
        reg.add(MixerSpec("a", "x:z"), "plugin_two", "1")


def test_lazy_target_resolves_only_on_load():
    spec = MixerSpec("lazy", "harness.nn.softmax:SoftmaxAttention")
    from harness.nn.softmax import SoftmaxAttention

    assert spec.load() is SoftmaxAttention
    with pytest.raises(ValueError, match="package.module:attr"):
        load_target("no_colon")
