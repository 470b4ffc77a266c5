"""Speech recognition on a folder of WAV files with ``transcripts.tsv`` (the FSDD layout).

Split by speaker: one held-out speaker for test, another for validation, the rest train, so the
test WER measures generalisation to an unseen voice. FSDD clips are single words, so utterances
are built by concatenating 2-6 clips of one speaker with short silences (seeded, fixed per task
options), which makes WER a sequence metric. Log-mel features are computed once per task and
kept in memory; a batch is a tensor slice, so the data pipeline costs next to nothing per step.
"""
from __future__ import annotations

import csv
import wave
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn import functional as F

from harness.data_files import record
from harness.nn.encdec import BOS_ID, EOS_ID, PAD_ID, SUBSAMPLE
from harness.nn.mel import log_mel, normalise, seconds_to_frames, spec_augment
from harness.specs import TaskMeta
from harness.tasks.base import TaskDataError, TensorBatches

CHARS = " abcdefghijklmnopqrstuvwxyz"          # ids 3.. (0 pad/blank, 1 bos, 2 eos)
VOCAB_SIZE = 3 + len(CHARS)
CHAR_ID = {c: 3 + i for i, c in enumerate(CHARS)}
LONGEST_WORD = 8                               # characters budgeted per word (+1 space)
N_FFT, HOP = 256, 128                          # 32 ms windows, 16 ms hop at 8 kHz


def encode_text(text: str) -> list[int]:
    """Lower-case letters and spaces -> ids; other characters are dropped."""
    return [CHAR_ID[c] for c in text.lower() if c in CHAR_ID]


def decode_ids(ids: list[int]) -> str:
    """Ids up to the first eos (or pad) -> text."""
    chars = []
    for i in ids:
        if i in (EOS_ID, PAD_ID):
            break
        if i >= 3:
            chars.append(CHARS[i - 3])
    return "".join(chars)


@dataclass(frozen=True)
class Clip:
    path: Path
    transcript: str
    speaker: str


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV -> (float32 samples in [-1, 1] of the first channel, sample rate)."""
    try:
        with wave.open(str(path), "rb") as fh:
            width, channels, rate = fh.getsampwidth(), fh.getnchannels(), fh.getframerate()
            raw = fh.readframes(fh.getnframes())
    except (OSError, wave.Error, EOFError) as exc:
        raise TaskDataError(f"{path} is not a readable WAV file ({exc}); replace or remove it") from None
    if width != 2:
        raise TaskDataError(f"{path} has {8 * width}-bit samples; convert it to 16-bit PCM")
    samples = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)[:, 0]
    return samples.astype(np.float32) / 32768.0, rate


def read_clips(root: Path) -> list[Clip]:
    """The rows of ``root/transcripts.tsv`` (columns path, transcript, ..., speaker)."""
    table = root / "transcripts.tsv"
    if not table.is_file():
        raise TaskDataError(f"{table} is missing; point task.data_root at a folder with transcripts.tsv "
                            f"(columns path, transcript, speaker) and its WAV files, e.g. ../shared/data/fsdd")
    with table.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    missing = {"path", "transcript", "speaker"} - set(rows[0] if rows else {})
    if missing:
        raise TaskDataError(f"{table} lacks column(s) {', '.join(sorted(missing))}; it needs path, transcript, speaker")
    return [Clip(root / r["path"], r["transcript"].strip().lower(), r["speaker"]) for r in rows]


def speaker_split(speakers: list[str], test: str | None, val: str | None) -> dict[str, list[str]]:
    """Train/val/test speakers. Defaults: test = the last speaker in sorted order, val = the one before."""
    ordered = sorted(set(speakers))
    test = test or ordered[-1]
    val = val or next(s for s in reversed(ordered) if s != test)
    for role, name in (("test_speaker", test), ("val_speaker", val)):
        if name not in ordered:
            raise TaskDataError(f"task.{role} = {name!r} is not a speaker in transcripts.tsv; "
                                f"choose one of {', '.join(ordered)}")
    if test == val:
        raise TaskDataError("task.test_speaker and task.val_speaker must differ")
    train = [s for s in ordered if s not in (test, val)]
    if not train:
        raise TaskDataError(f"no speaker is left for training (speakers: {', '.join(ordered)})")
    return {"train": train, "val": [val], "test": [test]}


def concatenate(waves: list[np.ndarray], gaps: list[int]) -> np.ndarray:
    """Clips joined with ``gaps[i]`` zero samples between clip i and i+1 (len(gaps) = len(waves) - 1)."""
    parts: list[np.ndarray] = []
    for i, w in enumerate(waves):
        if i:
            parts.append(np.zeros(gaps[i - 1], dtype=np.float32))
        parts.append(w)
    return np.concatenate(parts)


class SpeechRecognition:
    """Character-level ASR: teacher-forced cross-entropy for training; greedy decoding scored by
    WER and CER (plus the teacher-forced loss) for evaluation.

    Options: ``data_root`` (folder with transcripts.tsv), ``test_speaker`` / ``val_speaker``
    (default: the last two speakers in sorted order), ``n_train`` / ``n_eval`` utterances (val and
    test each get n_eval), ``min_words`` / ``max_words`` clips per utterance, silences of
    ``silence_min``..``silence_max`` seconds between clips, utterances cut (whole clips) to
    ``max_seconds`` and ``max_chars``, ``n_mels`` log-mel bins, ``seed`` for building utterances
    (independent of the run seed: every variant and seed sees the same data). Training batches get
    SpecAugment masking: ``n_masks`` mel bands of up to ``freq_mask`` bins and as many time spans of
    up to ``time_mask`` frames (n_masks = 0: off); it is what lets a model trained on three voices
    generalise to a fourth.
    """

    metrics: tuple[str, ...] = ("wer", "cer", "loss")

    def __init__(self, data_root: str = "data/fsdd", test_speaker: str | None = None, val_speaker: str | None = None,
                 n_train: int = 2000, n_eval: int = 200, min_words: int = 2, max_words: int = 6,
                 silence_min: float = 0.05, silence_max: float = 0.25, max_seconds: float = 4.0,
                 max_chars: int = 40, n_mels: int = 40, sample_rate: int = 8000, n_masks: int = 2,
                 freq_mask: int = 6, time_mask: int = 10, seed: int = 0):
        if not 1 <= min_words <= max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, not {min_words}, {max_words}")
        self.root = Path(data_root).expanduser()
        self.test_speaker, self.val_speaker = test_speaker, val_speaker
        self.sizes = {"train": n_train, "val": n_eval, "test": n_eval}
        self.words, self.silence = (min_words, max_words), (silence_min, silence_max)
        self.max_seconds, self.max_chars, self.n_mels = max_seconds, max_chars, n_mels
        self.sample_rate, self.seed = sample_rate, seed
        self.masks = dict(n_masks=n_masks, freq_width=freq_mask, time_width=time_mask)
        # decoder positions: bos + characters (the target is the characters + eos)
        self.meta = TaskMeta("audio", vocab_size=VOCAB_SIZE, max_len=max_chars + 1, features=n_mels,
                             max_frames=seconds_to_frames(max_seconds, sample_rate, HOP), causal=True)

    def check_data(self) -> None:
        """Fail before training, with the fix, when the table, a WAV file or a speaker is missing."""
        clips = read_clips(self.root)
        absent = [c.path for c in clips if not c.path.is_file()]
        if absent:
            raise TaskDataError(f"{len(absent)} WAV file(s) listed in {self.root / 'transcripts.tsv'} are missing "
                                f"(e.g. {absent[0]}); restore them or drop their rows")
        speaker_split([c.speaker for c in clips], self.test_speaker, self.val_speaker)

    @cached_property
    def _clips_by_split(self) -> dict[str, dict[str, list[tuple[np.ndarray, str]]]]:
        """split -> speaker -> that speaker's (samples, word) clips."""
        clips = read_clips(self.root)
        record(self.root / "transcripts.tsv", self)  # sha256s go into the run manifest
        roles = speaker_split([c.speaker for c in clips], self.test_speaker, self.val_speaker)
        out: dict[str, dict[str, list[tuple[np.ndarray, str]]]] = {}
        for split, speakers in roles.items():
            out[split] = {s: [] for s in speakers}
            for clip in (c for c in clips if c.speaker in speakers):
                samples, rate = read_wav(clip.path)
                record(clip.path, self)
                if rate != self.sample_rate:
                    raise TaskDataError(f"{clip.path} is sampled at {rate} Hz, not task.sample_rate = "
                                        f"{self.sample_rate}; resample it or set task.sample_rate")
                out[split][clip.speaker].append((samples, clip.transcript))
        return out

    @property
    def speakers(self) -> dict[str, list[str]]:
        """split -> its speakers (sorted)."""
        return {split: sorted(by_speaker) for split, by_speaker in self._clips_by_split.items()}

    def _utterance(self, rng: np.random.Generator, clips: list[tuple[np.ndarray, str]]) -> tuple[np.ndarray, str]:
        """2-6 clips of one speaker with random silences, whole clips dropped from the end to fit
        max_seconds and max_chars (a single too-long clip is cut)."""
        k = int(rng.integers(self.words[0], self.words[1] + 1))
        chosen = [clips[i] for i in rng.choice(len(clips), size=min(k, len(clips)), replace=False)]
        low, high = (int(s * self.sample_rate) for s in self.silence)
        gaps = [int(g) for g in rng.integers(low, high + 1, size=len(chosen))]
        while len(chosen) > 1 and (sum(len(w) for w, _ in chosen) + sum(gaps[:len(chosen) - 1])
                                   > self.max_seconds * self.sample_rate
                                   or len(" ".join(t for _, t in chosen)) > self.max_chars):
            chosen.pop()
        samples = concatenate([w for w, _ in chosen], gaps[:len(chosen) - 1])
        limit = int(self.max_seconds * self.sample_rate)
        return samples[:limit], " ".join(t for _, t in chosen)[: self.max_chars]

    @cached_property
    def utterances(self) -> dict[str, list[tuple[np.ndarray, str]]]:
        """split -> [(samples, transcript)], built once from the task's own seed."""
        out = {}
        for index, (split, by_speaker) in enumerate(self._clips_by_split.items()):
            rng = np.random.default_rng([self.seed, index])
            speakers = sorted(by_speaker)
            picks = rng.integers(0, len(speakers), size=self.sizes[split])
            out[split] = [self._utterance(rng, by_speaker[speakers[p]]) for p in picks]
        return out

    def _tensors(self, utterances: list[tuple[np.ndarray, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> features (N, max_frames, n_mels), frame mask (N, max_frames), tokens (N, max_len + 1).
        Signals are zero-padded to max_seconds and transformed in chunks: one torch.stft call per
        chunk, not per utterance. A real frame near the end may see some of that zero padding."""
        n, frames, samples = len(utterances), self.meta.max_frames, int(self.max_seconds * self.sample_rate)
        waves = torch.zeros(n, samples)
        tokens = torch.full((n, self.meta.max_len + 1), PAD_ID, dtype=torch.long)
        for i, (wave_i, text) in enumerate(utterances):
            waves[i, :len(wave_i)] = torch.from_numpy(wave_i)
            ids = [BOS_ID, *encode_text(text), EOS_ID]
            tokens[i, :len(ids)] = torch.tensor(ids)
        lengths = torch.tensor([len(w) // HOP + 1 for w, _ in utterances])                  # (N,) real frames
        pad = torch.arange(frames)[None, :] < lengths[:, None]                              # (N, max_frames)
        mel = torch.cat([log_mel(chunk, self.sample_rate, n_mels=self.n_mels, n_fft=N_FFT, hop=HOP)
                         for chunk in waves.split(256)])[:, :frames]                        # (N, max_frames, n_mels)
        return normalise(mel, pad), pad, tokens

    @cached_property
    def _splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return {split: self._tensors(utts) for split, utts in self.utterances.items()}

    def splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return self._splits

    def batches(self, split: str, batch_size: int, seed: int = 0) -> TensorBatches:
        train = split == "train"
        return TensorBatches(self.splits()[split], batch_size, shuffle=train, seed=seed,
                             transform=self._augment if train and self.masks["n_masks"] else None)

    def _augment(self, features: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return spec_augment(features, gen, **self.masks)

    @property
    def audio_seconds_per_sample(self) -> float:
        """Mean training utterance length in seconds (the runner records audio seconds per second)."""
        return float(np.mean([len(w) for w, _ in self.utterances["train"]])) / self.sample_rate

    @property
    def tokens_per_sample(self) -> float:
        """Mean positions the mixers see per training utterance: encoder positions after the 4x
        subsampling plus decoder positions (bos + characters)."""
        _, pad, tokens = self.splits()["train"]
        encoder = (-(-pad.sum(1) // SUBSAMPLE)).float().mean()
        decoder = ((tokens != PAD_ID).sum(1) - 1).float().mean()
        return float(encoder + decoder)

    def example_inputs(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model's inputs for n validation utterances: (features, frame mask, decoder tokens)."""
        features, pad, tokens = self.splits()["val"]
        return features[:n], pad[:n], tokens[:n, :-1]

    def _forward(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits and targets, cut to the batch's longest utterance and transcript
        (the tensors are padded to the task's maxima)."""
        features, pad, tokens = batch
        frames = int(pad.sum(1).max())
        length = int((tokens != PAD_ID).sum(1).max())                    # bos + characters + eos
        logits = model(features[:, :frames], pad[:, :frames], tokens[:, :length - 1])   # (B, L, V)
        return logits, tokens[:, 1:length]                               # targets (B, L)

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        logits, targets = self._forward(model, batch)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=PAD_ID)

    def per_example_loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(B,): each utterance's mean loss over its characters (the batch loss weights by characters)."""
        logits, targets = self._forward(model, batch)                                     # (B, S, V), (B, S)
        char_loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=PAD_ID, reduction="none")
        return char_loss.sum(1) / (targets != PAD_ID).sum(1).clamp(min=1)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: TensorBatches, device: torch.device,
                 autocast: Callable[[], Any]) -> dict[str, float]:
        from harness.registry import metric

        hypotheses, references, nll, count = [], [], 0.0, 0
        for batch in batches:
            features, pad, tokens = (t.to(device) for t in batch)
            frames = int(pad.sum(1).max())
            with autocast():
                logits, targets = self._forward(model, (features, pad, tokens))
                hyp = model.greedy(features[:, :frames], pad[:, :frames])                 # (B, <= max_chars)
            nll += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=PAD_ID, reduction="sum").item()
            count += int((targets != PAD_ID).sum())
            hypotheses += [decode_ids(row) for row in hyp.tolist()]
            references += [decode_ids(row) for row in tokens[:, 1:].tolist()]
        scores = {name: float(metric(name).load()(hypotheses, references)) for name in ("wer", "cer")}
        return {**scores, "loss": nll / max(count, 1)}
