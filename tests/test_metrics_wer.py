"""WER and CER: equal to jiwer's, and to hand-computed edit distances."""
import jiwer
import pytest

from harness.metrics import cer, wer
from harness.registry import metric


def test_hand_computed_example():
    # one substituted word of three; one substituted character ("two" -> "too") of 13 ("one two three")
    assert wer(["one too three"], ["one two three"]) == pytest.approx(1 / 3)
    assert cer(["one too three"], ["one two three"]) == pytest.approx(1 / 13)


def test_split_totals_not_mean_of_rows():
    # 1 deletion over 2 + 4 reference words = 1/6 (a per-row mean would be 1/4)
    hyps, refs = ["one", "two three four five"], ["one two", "two three four five"]
    assert wer(hyps, refs) == pytest.approx(1 / 6)


def test_equal_to_jiwer():
    refs = ["zero one two", "nine eight", "seven six five four"]
    hyps = ["zero one", "nine eight eight", "seven sixty five four"]
    assert wer(hyps, refs) == pytest.approx(jiwer.wer(refs, hyps))
    assert cer(hyps, refs) == pytest.approx(jiwer.cer(refs, hyps))


def test_registered_lower_is_better():
    for name, fn in (("wer", wer), ("cer", cer)):
        spec = metric(name)
        assert spec.higher_is_better is False
        assert spec.load() is fn
