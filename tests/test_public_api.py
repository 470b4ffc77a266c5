"""What plugin authors import from ``harness`` itself."""
import subprocess
import sys


def test_seq_context_is_exported_without_importing_torch_up_front():
    code = ("import sys, harness\n"
            "light = 'torch' not in sys.modules\n"
            "from harness import SeqContext\n"
            "from harness.nn.context import SeqContext as Original\n"
            "print(light, SeqContext is Original, SeqContext(max_len=4, causal=True).causal)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True", "True"], out.stderr


def test_unknown_attribute_is_an_attribute_error():
    import harness

    try:
        harness.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("harness.NoSuchThing should not exist")
