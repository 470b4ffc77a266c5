"""Multi-path rollout on the harness ``lm`` with a KV cache, and the on-policy log-probabilities.

Per prompt, N paths decode together. At each step every path samples y_i from p_i = pi(.|its
inputs so far); while path i is thinking (its delimiter not yet complete, no EOS yet), the input
fed at the next position is the hybrid embedding (paper Eq. 2-6)

    h_i = e_i + lam * (sum_j A_ij e_j - e_i)      = (1 - lam) e_i + lam c_i  when i has a peer

with e = the token-embedding row of y and A from the gate over the group's p (exited paths
neither send nor receive; a thinking path with no thinking peer keeps e_i: the paper's formula
would shrink it to (1 - lam) e_i for no reason). After thinking the plain e_i is fed.

Every input fed is stored (``Rollout.inputs``), so the training forward runs on exactly the
inputs the tokens were sampled from (the reference recomputed from token ids: off-policy,
SEEDS 5.4.1). ``sequence_logprobs`` rebuilds those inputs as a differentiable function of the
embedding table (and of a learnable gate, from the stored distributions) and uses them in a
straight-through sum: the value is the stored input bit for bit, the gradient is that of the
rebuilt one. The distributions p that fed the gate are treated as context (no gradient through
them: that would be backpropagation through the sampling steps).

One step costs one cached forward of one position per path (O(T) attention), not a re-run of
the prefix (the reference: use_cache=False, O(T^2) per sequence).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from harness_m3po.delimiter import DelimiterMatcher
from harness_m3po.gates import Gate
from harness_m3po.weights import GateStats, attention_weights


@dataclass
class MixSettings:
    """How paths mix: the gate, lam, the gate temperature and calibration, N paths per prompt."""

    gate: Gate
    paths: int
    lam: float = 0.1
    temperature: float = 0.1
    calibration: str = "none"

    @property
    def mixes(self) -> bool:
        return self.lam > 0 and self.gate.connects

    def weights(self, p: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """p (G, N, V), active (G, N) -> (S, A, valid), each (G, N, N)."""
        S = self.gate(p)
        A, valid = attention_weights(S, active, self.temperature, self.calibration, self.gate.connects)
        return S, A, valid


@dataclass
class Rollout:
    """R = G N paths (path r belongs to prompt r // N), T = P + L tokens, Lf = fed generated tokens."""

    prompt_len: int
    tokens: torch.Tensor            # (R, T) prompt + sampled tokens
    inputs: torch.Tensor            # (R, T - 1, D) token-part input embedding at every fed position
    logprobs: torch.Tensor          # (R, L) log pi(y_t) at sampling time
    mask: torch.Tensor              # (R, L) bool: completion tokens (up to and including EOS)
    thinking: torch.Tensor          # (R, L) bool: the path was thinking after sampling token t
    mixed: torch.Tensor | None = None     # (R, Lf) bool: the input of token t was a hybrid
    weights: torch.Tensor | None = None   # (G, Lf, N, N) A used at each fed step
    probs: torch.Tensor | None = None     # (G, Lf, N, V) p that fed the gate (learnable gates only)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def completions(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_len:]                                       # (R, L)


@torch.no_grad()
def rollout(lm: torch.nn.Module, mix: MixSettings, prompts: torch.Tensor, *, max_new_tokens: int,
            delimiter: Sequence[int], eos: int, generator: torch.Generator | None = None) -> Rollout:
    """Sample N paths per prompt (prompts (G, P), all the same length) with cross-path mixing."""
    G, P = prompts.shape
    N, R = mix.paths, prompts.shape[0] * mix.paths
    E = lm.tok_embed.weight                                                           # (V, D)
    tokens = prompts.repeat_interleave(N, dim=0)                                      # (R, P)
    caches = lm.new_caches()
    x = E[tokens]                                                                     # (R, P, D)
    logits = lm.forward_cached(x, caches, 0)[:, -1]                                   # (R, V)
    inputs, sampled, logps, masks, thinking = [x], [], [], [], []
    mixed, weights, sims, valids, probs = [], [], [], [], []
    matcher = DelimiterMatcher(delimiter, R, prompts.device)
    finished = torch.zeros(R, dtype=torch.bool, device=prompts.device)
    keep_probs = mix.mixes and mix.gate.learnable
    for step in range(max_new_tokens):
        logp = F.log_softmax(logits.float(), dim=-1)                                  # (R, V)
        p = logp.exp()
        y = torch.multinomial(p, 1, generator=generator).squeeze(1)                   # (R,)
        masks.append(~finished)
        logps.append(logp.gather(1, y[:, None]).squeeze(1))
        sampled.append(y)
        matcher.push(y)
        finished = finished | (y == eos)
        active = ~matcher.seen & ~finished                                            # (R,) still thinking
        thinking.append(active)
        if step == max_new_tokens - 1 or bool(finished.all()):  # the last token is never fed
            break
        e = E[y]                                                                      # (R, D)
        if mix.mixes:
            S, A, valid = mix.weights(p.view(G, N, -1), active.view(G, N))            # (G, N, N) each
            has_peer = valid.any(-1).view(R, 1)                                       # (R, 1)
            c = (A.to(e.dtype) @ e.view(G, N, -1)).view(R, -1)                        # (R, D)
            h = e + mix.lam * (c - e) * has_peer
            mixed.append(has_peer.squeeze(1))
            weights.append(A)
            sims.append(S)
            valids.append(valid)
            if keep_probs:
                probs.append(p.view(G, N, -1))
        else:
            h = e
        inputs.append(h[:, None])
        logits = lm.forward_cached(h[:, None], caches, P + step)[:, -1]               # (R, V)
    stats = GateStats()
    if weights:  # once per rollout, over every step: no per-step statistics work
        stats.add(torch.cat(sims), torch.cat(weights), torch.cat(valids))            # (Lf G, N, N) each
    return Rollout(
        prompt_len=P, tokens=torch.cat([tokens, torch.stack(sampled, 1)], 1), inputs=torch.cat(inputs, 1),
        logprobs=torch.stack(logps, 1), mask=torch.stack(masks, 1), thinking=torch.stack(thinking, 1),
        mixed=torch.stack(mixed, 1) if mixed else None,
        weights=torch.stack(weights, 1) if weights else None,
        probs=torch.stack(probs, 1) if probs else None, stats=stats.means())


def rebuilt_inputs(lm: torch.nn.Module, mix: MixSettings, ro: Rollout) -> torch.Tensor:
    """The rollout's inputs (R, T - 1, D) as a differentiable function of the embedding table and
    (learnable gates) of the gate; equal in value to ``ro.inputs`` up to float rounding."""
    P, R = ro.prompt_len, ro.tokens.shape[0]
    emb = lm.tok_embed.weight[ro.tokens[:, :-1]]                                      # (R, T - 1, D)
    if ro.weights is None:
        return emb
    G, Lf, N, _ = ro.weights.shape
    A = ro.weights
    if ro.probs is not None:  # learnable: the same weights, now with the gate's gradient
        active = ro.thinking[:, :Lf].reshape(G, N, Lf).transpose(1, 2)               # (G, Lf, N)
        _, A, _ = mix.weights(ro.probs.reshape(G * Lf, N, -1), active.reshape(G * Lf, N))
        A = A.view(G, Lf, N, N)
    e = emb[:, P:]                                                                    # (R, Lf, D)
    eg = e.reshape(G, N, Lf, -1).transpose(1, 2)                                      # (G, Lf, N, D)
    c = (A.to(e.dtype) @ eg).transpose(1, 2).reshape(R, Lf, -1)                       # (R, Lf, D)
    h = e + mix.lam * (c - e) * ro.mixed[..., None]
    return torch.cat([emb[:, :P], h], dim=1)


def sequence_logprobs(lm: torch.nn.Module, ro: Rollout, inputs: torch.Tensor) -> torch.Tensor:
    """log pi(y_t) (R, L) of the rollout's sampled tokens, teacher forced on ``inputs`` (R, T - 1, D)."""
    P = ro.prompt_len
    logits = lm(None, token_embeds=inputs)[:, P - 1:]                                 # (R, L, V)
    return F.log_softmax(logits.float(), dim=-1).gather(-1, ro.completions[..., None]).squeeze(-1)


def policy_logprobs(lm: torch.nn.Module, mix: MixSettings, ro: Rollout) -> torch.Tensor:
    """On-policy log-probabilities with gradients: the stored inputs' values, the rebuilt inputs'
    gradient (straight-through)."""
    rebuilt = rebuilt_inputs(lm, mix, ro)
    return sequence_logprobs(lm, ro, ro.inputs + (rebuilt - rebuilt.detach()))
