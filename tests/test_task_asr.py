"""The asr task: speaker split, utterance building, features, data errors, a run through the runner."""
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import tracking
from harness.runner import run_suite
from harness.suite import load_suite
from harness.tasks.audio import HOP, SpeechRecognition, concatenate, decode_ids, speaker_split
from harness.tasks.base import TaskDataError

FSDD = Path(__file__).resolve().parents[2] / "shared/data/fsdd"
WORD_SAMPLES = {"zero": 400, "one": 480, "two": 560, "three": 640}
AMPLITUDE = {"ann": 0.25, "bob": 0.5, "cat": 0.75}
RATE = 8000


def write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(RATE)
        fh.writeframes((samples * 32767).astype("<i2").tobytes())


@pytest.fixture
def folder(tmp_path) -> Path:
    """Three speakers saying four words; a clip's length tells its word, its amplitude its speaker."""
    rows = ["path\ttranscript\tdigit\tspeaker"]
    for speaker, amp in AMPLITUDE.items():
        for digit, (word, n) in enumerate(WORD_SAMPLES.items()):
            write_wav(tmp_path / f"{word}_{speaker}.wav", np.full(n, amp))
            rows.append(f"{word}_{speaker}.wav\t{word}\t{digit}\t{speaker}")
    (tmp_path / "transcripts.tsv").write_text("\n".join(rows) + "\n")
    return tmp_path


def small(folder, **options) -> SpeechRecognition:
    return SpeechRecognition(str(folder), n_train=12, n_eval=4, min_words=2, max_words=3, n_mels=16,
                             max_seconds=1.0, silence_min=0.01, silence_max=0.02, **options)


def test_speaker_split_defaults_and_options():
    assert speaker_split(["cat", "ann", "bob", "ann"], None, None) == {"train": ["ann"], "val": ["bob"],
                                                                      "test": ["cat"]}
    assert speaker_split(["ann", "bob", "cat"], "ann", "cat") == {"train": ["bob"], "val": ["cat"], "test": ["ann"]}
    with pytest.raises(TaskDataError, match="not a speaker"):
        speaker_split(["ann", "bob", "cat"], "dan", None)
    with pytest.raises(TaskDataError, match="must differ"):
        speaker_split(["ann", "bob", "cat"], "ann", "ann")


def test_concatenate_inserts_silences():
    out = concatenate([np.ones(3, np.float32), np.full(2, 2.0, np.float32)], [4])
    assert out.tolist() == [1, 1, 1, 0, 0, 0, 0, 2, 2]


def test_utterances_join_clips_of_one_speaker(folder):
    task = small(folder)
    low, high = int(0.01 * RATE), int(0.02 * RATE)
    for split, speaker in (("train", "ann"), ("val", "bob"), ("test", "cat")):
        assert len(task.utterances[split]) == task.sizes[split]
        for samples, text in task.utterances[split]:
            words = text.split(" ")
            assert 2 <= len(words) <= 3 and len(set(words)) == len(words)        # clips drawn without replacement
            voiced = samples[samples != 0]
            assert len(voiced) == sum(WORD_SAMPLES[w] for w in words)
            assert (len(words) - 1) * low <= len(samples) - len(voiced) <= (len(words) - 1) * high
            assert np.allclose(voiced, AMPLITUDE[speaker], atol=1e-3)          # one speaker per utterance


def test_same_options_same_data(folder):
    a, b = small(folder), small(folder)
    assert [t for _, t in a.utterances["train"]] == [t for _, t in b.utterances["train"]]
    assert [t for _, t in small(folder, seed=1).utterances["train"]] != [t for _, t in a.utterances["train"]]


def test_features_tokens_and_throughput_attributes(folder):
    task = small(folder)
    features, pad, tokens = task.splits()["train"]
    assert features.shape == (12, task.meta.max_frames, 16) and torch.isfinite(features).all()
    assert pad.sum(1).tolist() == [len(s) // HOP + 1 for s, _ in task.utterances["train"]]
    assert (features[~pad] == 0).all()
    assert [decode_ids(row) for row in tokens[:, 1:].tolist()] == [t for _, t in task.utterances["train"]]
    assert task.audio_seconds_per_sample == pytest.approx(np.mean([len(s) for s, _ in task.utterances["train"]]) / RATE)
    example = task.example_inputs(2)
    assert [tuple(t.shape) for t in example] == [(2, task.meta.max_frames, 16), (2, task.meta.max_frames),
                                                  (2, task.meta.max_len)]


def test_only_training_batches_are_augmented(folder):
    task = small(folder, n_masks=2, freq_mask=4, time_mask=3)
    features = task.splits()["val"][0]
    assert torch.equal(next(iter(task.batches("val", 4)))[0], features[:4])
    train = next(iter(task.batches("train", 12)))[0]
    assert (train == 0).sum() > (task.splits()["train"][0] == 0).sum()
    no_masks = small(folder, n_masks=0)
    assert (next(iter(no_masks.batches("train", 12)))[0] == 0).sum() == (no_masks.splits()["train"][0] == 0).sum()


def test_missing_data_says_how_to_fix(tmp_path, folder):
    with pytest.raises(TaskDataError, match="data_root"):
        SpeechRecognition(str(tmp_path / "nowhere")).check_data()
    (folder / "one_bob.wav").unlink()
    with pytest.raises(TaskDataError, match="missing"):
        small(folder).check_data()


def test_a_few_steps_through_the_runner(folder, tmp_path, monkeypatch):
    suite_file = tmp_path / "asr.toml"
    suite_file.write_text(f"""
[suite]
name = "asr_tiny"
task = "asr"
model = "encdec"
metric = "test/wer"
seeds = [0]
[task]
data_root = "{folder}"
n_train = 12
n_eval = 4
max_words = 3
max_seconds = 1.0
max_chars = 12
n_mels = 16
[model]
dim = 16
depth = 1
decoder_depth = 1
heads = 2
[train]
steps = 4
batch_size = 4
eval_every = 2
log_every = 2
[variants.softmax]
mixer = "softmax"
""")
    monkeypatch.chdir(tmp_path)
    tracking.configure(enabled=False)
    [result] = run_suite(load_suite(str(suite_file)), contract=False)   # the gate has its own tests
    assert result.status == "finished", result
    assert 0.0 <= result.metrics["test/wer"] and 0.0 <= result.metrics["test/cer"] and "val/loss" in result.metrics
    assert result.efficiency["audio_s_per_s"] > 0 and result.efficiency["flops_per_token"] > 0


@pytest.mark.skipif(not FSDD.is_dir(), reason=f"FSDD is not at {FSDD} (shared test data; absent in a user's clone)")
def test_fsdd_held_out_speakers():
    task = SpeechRecognition(str(FSDD), n_train=6, n_eval=3)
    task.check_data()
    assert task.speakers == {"train": ["george", "jackson", "lucas"], "val": ["nicolas"], "test": ["theo"]}
    features, pad, _ = task.splits()["test"]
    assert features.shape == (3, task.meta.max_frames, 40) and torch.isfinite(features).all()
