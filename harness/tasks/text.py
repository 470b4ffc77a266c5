"""Character-level language modelling on one text file (tinyshakespeare by default).

The corpus is read once into a single int tensor of character ids; the vocabulary is its distinct
characters, sorted, so the ids are the same on every machine. The split is contiguous by position
(90% train, 5% validation, 5% test), so no window sees text from another split. Training windows
are drawn at random positions of the train part (seeded); evaluation reads the non-overlapping
windows of a split in order. Metrics are over every evaluated character: mean cross-entropy
``loss`` (nats), ``bpc`` = loss / ln 2 and ``perplexity`` = exp(loss).
"""
from __future__ import annotations

import math
import urllib.request
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.nn import functional as F

from harness.data_files import record
from harness.specs import TaskMeta
from harness.tasks.base import TaskDataError, TensorBatches

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SPLIT_FRACTIONS = (0.90, 0.05)          # train, validation; test is the rest
SAMPLE_FILE = "sample.txt"


def split_bounds(n: int) -> dict[str, tuple[int, int]]:
    """The [start, stop) character range of each split of an n-character corpus."""
    n_train, n_val = int(n * SPLIT_FRACTIONS[0]), int(n * SPLIT_FRACTIONS[1])
    return {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}


def encode(text: str, vocab: str) -> torch.Tensor:
    """Character ids of ``text`` under the sorted ``vocab``, vectorised (no Python loop per character)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)                    # (N,) code points
    table = np.frombuffer(vocab.encode("utf-32-le"), dtype=np.uint32)                   # (V,) sorted
    return torch.from_numpy(np.searchsorted(table, codes).astype(np.int64))             # (N,)


def eval_windows(ids: torch.Tensor, seq_len: int, cap: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping (inputs, targets) windows of a split, each (W, seq_len): window i predicts
    characters i*L+1 .. (i+1)*L, so every character after the first is a target at most once.
    ``cap`` keeps that many windows, evenly spread over the split, to bound evaluation time."""
    n_windows = (len(ids) - 1) // seq_len
    inputs = ids[:n_windows * seq_len].view(n_windows, seq_len)                          # (W, L)
    targets = ids[1:n_windows * seq_len + 1].view(n_windows, seq_len)                    # (W, L)
    if cap is not None and cap < n_windows:
        keep = torch.linspace(0, n_windows - 1, cap).round().long().unique()            # (cap,)
        inputs, targets = inputs[keep], targets[keep]
    return inputs, targets


class RandomWindows:
    """Endless seeded batches of random (inputs, targets) windows from one contiguous split.

    ``unfold`` views every window of seq_len + 1 characters without copying; a batch is one gather
    of B rows from that view, so the data side costs nothing next to a model step.
    """

    def __init__(self, ids: torch.Tensor, seq_len: int, batch_size: int, seed: int = 0):
        self.windows = ids.unfold(0, seq_len + 1, 1)                                     # (N - L, L + 1) view
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            starts = torch.randint(0, len(self.windows), (self.batch_size,), generator=self.generator)  # (B,)
            rows = self.windows[starts]                                                  # (B, L + 1)
            yield rows[:, :-1], rows[:, 1:]


def lm_metrics(nll_sum: float, count: int) -> dict[str, float]:
    """loss (nats per character), bpc and perplexity from a summed cross-entropy over count characters."""
    loss = nll_sum / count
    return {"loss": loss, "bpc": loss / math.log(2), "perplexity": math.exp(loss)}


def download_corpus(path: Path, url: str = TINYSHAKESPEARE_URL) -> None:
    """Fetch ``url`` into ``path`` (through a temporary file, so a failed download leaves nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    try:
        urllib.request.urlretrieve(url, partial)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise TaskDataError(f"downloading {url} into {path} failed ({type(exc).__name__}: {exc}); "
                            f"download it by hand to {path}") from None
    partial.replace(path)


@torch.no_grad()
def sample_continuation(model: torch.nn.Module, prompt: torch.Tensor, n_new: int, temperature: float,
                        seed: int = 0) -> torch.Tensor:
    """``n_new`` ids sampled after ``prompt`` (P,) with ``model.generate``, in chunks that fit the
    model's context: a KV-cached generate refuses to run past ``max_len``, so each chunk restarts
    from the last half-context of what was generated so far."""
    device = next(model.parameters()).device
    context = model.max_len // 2
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = prompt.to(device)[None]                                                        # (1, P)
    while out.shape[1] - len(prompt) < n_new:
        step = min(model.max_len - min(context, out.shape[1]), n_new - (out.shape[1] - len(prompt)))
        tail = out[:, -context:]                                                         # (1, <= max_len / 2)
        grown = model.generate(tail, step, temperature=temperature, generator=generator)  # (1, tail + step)
        out = torch.cat([out, grown[:, tail.shape[1]:]], dim=1)
    model.train(was_training)
    return out[0, len(prompt):].cpu()                                                    # (n_new,)


class CharLM:
    """Next-character prediction on a text file. Options (the suite's ``[task]``):

    - ``corpus``: the text file (UTF-8); a relative path is resolved against the directory
      ``harness`` runs in.
    - ``download``: when the corpus is absent, fetch tinyshakespeare into ``corpus`` first.
    - ``seq_len``: characters per window (the model's context).
    - ``eval_windows``: at most this many evaluation windows per split, evenly spread (None: all),
      to bound evaluation time.
    - ``sample_chars``, ``sample_temperature``: the continuation written by ``artifacts()``.
    """

    metrics: tuple[str, ...] = ("loss", "bpc", "perplexity")

    def __init__(self, corpus: str = "data/tinyshakespeare.txt", download: bool = False, seq_len: int = 128,
                 eval_windows: int | None = None, sample_chars: int = 200, sample_temperature: float = 0.8):
        if seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, got {seq_len}")
        self.path = Path(corpus).expanduser().resolve()
        self.download, self.seq_len, self.eval_cap = download, seq_len, eval_windows
        self.sample_chars, self.sample_temperature = sample_chars, sample_temperature
        self.tokens_per_sample = seq_len   # every window position is a predicted character

    def check_data(self) -> None:
        """Fail before training, with the fix, when the corpus is absent, unreadable or too short."""
        if not self.path.is_file():
            if not self.download:
                raise TaskDataError(f"corpus {self.path} not found; set task.corpus to a UTF-8 text file "
                                    f"(relative to the directory harness runs in) or task.download = true "
                                    f"to fetch tinyshakespeare there")
            download_corpus(self.path)
        self.split_ids()  # reading the corpus is the rest of the check: encoding, length

    @cached_property
    def _text(self) -> str:
        try:
            text = self.path.read_text(encoding="utf-8")
            record(self.path, self)  # its sha256 goes into the run manifest
            return text
        except (OSError, UnicodeDecodeError) as exc:
            raise TaskDataError(f"corpus {self.path} is not a readable UTF-8 text file "
                                f"({type(exc).__name__}: {exc}); point task.corpus at one") from None

    @cached_property
    def _data(self) -> tuple[str, dict[str, torch.Tensor]]:
        """The vocabulary and each split's character ids (views of one tensor)."""
        text = self._text
        need = math.ceil((self.seq_len + 1) / SPLIT_FRACTIONS[1]) + 1
        if len(text) < need:
            raise TaskDataError(f"corpus {self.path} has {len(text):,} characters; seq_len={self.seq_len} needs "
                                f"at least {need:,} (each split must hold one window); use a longer corpus "
                                f"or a smaller task.seq_len")
        vocab = "".join(sorted(set(text)))
        ids = encode(text, vocab)                                                        # (N,)
        return vocab, {name: ids[a:b] for name, (a, b) in split_bounds(len(ids)).items()}

    @property
    def vocab(self) -> str:
        return self._data[0]

    def split_ids(self) -> dict[str, torch.Tensor]:
        return self._data[1]

    @cached_property
    def meta(self) -> TaskMeta:
        return TaskMeta("tokens", vocab_size=len(self.vocab), max_len=self.seq_len, causal=True)

    def batches(self, split: str, batch_size: int, seed: int = 0) -> RandomWindows | TensorBatches:
        ids = self.split_ids()[split]
        if split == "train":
            return RandomWindows(ids, self.seq_len, batch_size, seed)
        return TensorBatches(eval_windows(ids, self.seq_len, self.eval_cap), batch_size, shuffle=False)

    def example_inputs(self, n: int) -> tuple[torch.Tensor]:
        return (eval_windows(self.split_ids()["val"], self.seq_len)[0][:n],)            # (n, L)

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.per_example_loss(model, batch).mean()   # windows have equal lengths

    def per_example_loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(B,): each window's mean next-character loss."""
        inputs, targets = batch
        logits = model(inputs)                                                           # (B, L, V)
        return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(1)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: TensorBatches, device: torch.device,
                 autocast: Callable[[], object]) -> dict[str, float]:
        nll_sum, count = torch.zeros((), dtype=torch.float64, device=device), 0
        for inputs, targets in batches:
            with autocast():
                logits = model(inputs.to(device)).float()                                # (B, L, V)
            nll_sum += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1),
                                       reduction="sum").double()
            count += targets.numel()
        return lm_metrics(nll_sum.item(), count)

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(self.vocab[i] for i in ids.tolist())

    def artifacts(self, model: torch.nn.Module, folder: Path) -> dict[str, str]:
        """A sampled continuation of a seeded validation prompt, as ``sample.txt``; nothing for a
        model without ``generate`` (a backbone other than ``lm``)."""
        if not callable(getattr(model, "generate", None)):
            return {}
        val = self.split_ids()["val"]
        prompt_len = min(self.seq_len // 2, len(val) - 1)
        start = int(torch.randint(0, len(val) - prompt_len, (1,), generator=torch.Generator().manual_seed(0)))
        prompt = val[start:start + prompt_len]                                           # (P,)
        out = sample_continuation(model, prompt, self.sample_chars, self.sample_temperature, seed=0)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / SAMPLE_FILE
        path.write_text(f"prompt (validation split, characters {start}-{start + prompt_len}):\n"
                        f"{self.decode(prompt)}\n--- continuation, {self.sample_chars} characters at "
                        f"temperature {self.sample_temperature}:\n{self.decode(out)}\n", encoding="utf-8")
        return {SAMPLE_FILE: str(path)}
