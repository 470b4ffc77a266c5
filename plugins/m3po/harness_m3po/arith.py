"""``arith``, synthetic: multi-step arithmetic mod 10 with a reasoning trace and a ``####`` answer.

Character tokens (vocabulary ``0123456789+-*=;?#.``). With ``ops`` = K, a prompt is K + 1 digits
joined by K operators and a ``?``; the completion works left to right (no precedence), one step
per operation, then the delimiter, the answer and ``.`` (EOS)::

    prompt      3+5*2-4?
    completion  3+5=8;8*2=6;6-4=2####2.

``####`` is four ``#`` tokens, so the rollout's delimiter matching is exercised on a multi-token
delimiter (one ``#`` does not end thinking). Reward and ``exact_match``: 1 when the completion
ends with EOS, holds the delimiter exactly once and the text after it is the answer (a repeated
delimiter scores 0, as in the paper); ``answer_format``: those conditions without the answer
being right; ``trace_match``: the whole completion is the reference trace.

Data: each split from its own seeded stream (``harness.tasks.base.split_seed``). Training
batches are prompts; ``loss`` runs one GRPO step of the ``m3po.policy`` (``grpo_loss``),
evaluation is greedy single-path decoding. Before either, the policy is started from the shared
pretrained lm (``harness_m3po.pretrain``: supervised on traces once per configuration, cached).
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

from harness.specs import TaskMeta
from harness.tasks.base import GeneratedSplits, TensorBatches
from harness_m3po.delimiter import delimiter_count

VOCAB = "0123456789+-*=;?#."
OPS = "+-*"
DELIMITER = "####"
EOS = "."
TOK = {c: i for i, c in enumerate(VOCAB)}


def encode(text: str) -> list[int]:
    return [TOK[c] for c in text]


def decode(ids) -> str:
    return "".join(VOCAB[i] for i in ids)


def _apply(r: torch.Tensor, op: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(op == 0, r + b, torch.where(op == 1, r - b, r * b)) % 10


def completion_length(ops: int) -> int:
    return 6 * ops + 5          # K steps "a+b=c" joined by ";", "####", the answer, EOS


def problems(n: int, ops: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits (n, K + 1) and operator indices (n, K), seeded."""
    if ops < 1:
        raise ValueError(f"ops must be >= 1, got {ops}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 10, (n, ops + 1), generator=gen), torch.randint(0, len(OPS), (n, ops), generator=gen)


def render(digits: torch.Tensor, ops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt tokens (n, 2K + 2), completion tokens (n, 6K + 5) and answers (n,), built column by
    column (no Python loop over examples)."""
    n, K = ops.shape
    op_tok = torch.tensor([TOK[c] for c in OPS])[ops]                                  # (n, K)
    col = lambda c: torch.full((n,), TOK[c], dtype=torch.long)  # noqa: E731
    prompt = [digits[:, 0]]
    for k in range(K):
        prompt += [op_tok[:, k], digits[:, k + 1]]
    prompt.append(col("?"))
    r, completion = digits[:, 0], []
    for k in range(K):
        nxt = _apply(r, ops[:, k], digits[:, k + 1])
        completion += [r, op_tok[:, k], digits[:, k + 1], col("="), nxt] + ([col(";")] if k < K - 1 else [])
        r = nxt
    completion += [col("#")] * 4 + [r, col(EOS)]
    return torch.stack(prompt, 1), torch.stack(completion, 1), r


def parse_prompts(prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits and operator indices back from prompt tokens (n, 2K + 2)."""
    digits = prompts[:, 0:-1:2]                                                        # (n, K + 1)
    ops = prompts[:, 1:-1:2] - TOK[OPS[0]]                                             # (n, K): + - * are adjacent
    return digits, ops


def score(completions: torch.Tensor, answers: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per completion (R, L): ``exact`` (the reward), ``format`` and the parsed ``answer`` (-1 if none)."""
    delim, eos = encode(DELIMITER), TOK[EOS]
    exact, fmt, parsed = [], [], []
    for row, target in zip(completions.tolist(), answers.tolist()):
        ended = eos in row
        text = row[:row.index(eos)] if ended else row
        ok = ended and delimiter_count(text, delim) == 1
        after = decode(text).split(DELIMITER, 1)[1] if ok else ""
        ok = ok and after.isdigit()
        value = int(after) if ok else -1
        fmt.append(ok)
        exact.append(ok and value == target)
        parsed.append(value)
    return {"exact": torch.tensor(exact), "format": torch.tensor(fmt), "answer": torch.tensor(parsed)}


def exact_match(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of parsed answers (N,) (-1: no well-formed answer) equal to the targets (N,)."""
    return (outputs == targets).float().mean().item()


def share_true(outputs: torch.Tensor, targets: torch.Tensor | None = None) -> float:
    """Fraction of True in a per-example flag (N,) (well-formed answer, whole trace right)."""
    return outputs.float().mean().item()


class Arith(GeneratedSplits):
    """Options: ``ops`` (K steps, 4), ``n_train`` / ``n_eval`` (prompts per split), ``seed`` (data),
    ``max_new_tokens`` (default: the trace length + 2), ``pretrain_steps`` / ``pretrain_batch`` /
    ``pretrain_lr`` / ``pretrain_seed`` (the shared supervised start, ``harness_m3po.pretrain``),
    ``cache_dir`` (where that checkpoint is kept; default ``$HARNESS_M3PO_CACHE`` or
    ``~/.cache/harness/m3po``)."""

    metrics: tuple[str, ...] = ("exact_match", "answer_format", "trace_match")

    def __init__(self, ops: int = 4, n_train: int = 20_000, n_eval: int = 500, seed: int = 0,
                 max_new_tokens: int | None = None, pretrain_steps: int = 300, pretrain_batch: int = 64,
                 pretrain_lr: float = 3e-3, pretrain_seed: int = 0, cache_dir: str | None = None):
        problems(1, ops, seed)                              # a bad configuration fails when planned
        self.ops, self.seed = ops, seed
        self.prompt_len = 2 * ops + 2
        self.max_new_tokens = max_new_tokens or completion_length(ops) + 2
        if self.max_new_tokens < completion_length(ops):
            raise ValueError(f"max_new_tokens={self.max_new_tokens} cannot hold a {ops}-step trace "
                             f"({completion_length(ops)} tokens)")
        if pretrain_steps < 0 or pretrain_batch < 1 or pretrain_lr <= 0:
            raise ValueError("pretrain_steps must be >= 0, pretrain_batch >= 1 and pretrain_lr > 0")
        self.pretrain = {"steps": pretrain_steps, "batch": pretrain_batch, "lr": pretrain_lr, "seed": pretrain_seed}
        self.cache_dir = cache_dir
        self.sizes = {"train": n_train, "val": n_eval, "test": n_eval}
        self.meta = TaskMeta("tokens", vocab_size=len(VOCAB), max_len=self.prompt_len + self.max_new_tokens,
                             causal=True)
        self.tokens_per_sample = self.prompt_len + self.max_new_tokens
        self.delimiter, self.eos = encode(DELIMITER), TOK[EOS]

    def generate(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        prompt, _, answer = render(*problems(n, self.ops, seed))
        return prompt, answer

    def traces(self, n: int, seed: int) -> tuple[torch.Tensor, int]:
        """Whole examples (n, P + C) for supervised pretraining, and P."""
        prompt, completion, _ = render(*problems(n, self.ops, seed))
        return torch.cat([prompt, completion], 1), self.prompt_len

    @cached_property
    def _pretrained(self):
        from harness_m3po.pretrain import PretrainedCache

        return PretrainedCache(self, None if self.cache_dir is None else Path(self.cache_dir))

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Start an ``m3po.policy`` from the shared pretrained lm, once per model."""
        if not hasattr(model, "load_pretrained"):
            raise TypeError(f"task 'arith' trains an m3po.policy (suite.model = \"m3po.policy\"), "
                            f"not {type(model).__name__}")
        if model.reference is None:
            model.load_pretrained(self._pretrained.state_for(model))
        return model

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        policy = self.prepare(model)
        prompts, answers = batch
        group = answers.repeat_interleave(policy.cfg.paths)                             # (R,)

        def reward(completions: torch.Tensor) -> torch.Tensor:
            return score(completions.cpu(), group.cpu())["exact"].float().to(completions.device)

        return policy.grpo_loss(prompts, reward, max_new_tokens=self.max_new_tokens, delimiter=self.delimiter,
                                eos=self.eos)

    def greedy_scores(self, model: torch.nn.Module, prompts: torch.Tensor, answers: torch.Tensor
                      ) -> dict[str, torch.Tensor]:
        completions = model.greedy(prompts, max_new_tokens=self.max_new_tokens, eos=self.eos).cpu()
        out = score(completions, answers.cpu())
        _, reference, _ = render(*parse_prompts(prompts.cpu()))
        n = min(completions.shape[1], reference.shape[1])
        out["trace"] = (completions.shape[1] >= reference.shape[1]) & (completions[:, :n] == reference[:, :n]).all(1)
        return out

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: TensorBatches, device: torch.device,
                 autocast: Callable[[], object]) -> dict[str, float]:
        policy = self.prepare(model)
        parts: dict[str, list[torch.Tensor]] = {"answer": [], "format": [], "trace": []}
        targets = []
        for prompts, answers in batches:
            with autocast():
                out = self.greedy_scores(policy, prompts.to(device), answers)
            for key in parts:
                parts[key].append(out[key])
            targets.append(answers)
        cat = {k: torch.cat(v) for k, v in parts.items()}
        return {"exact_match": exact_match(cat["answer"], torch.cat(targets)),
                "answer_format": share_true(cat["format"]), "trace_match": share_true(cat["trace"])}
