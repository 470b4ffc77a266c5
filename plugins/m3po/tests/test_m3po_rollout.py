"""Rollout: delimiter matching as a whole sequence, on-policy log-probabilities (recomputed from
the stored hybrid inputs equal those at sampling time), the KV cache, who mixes with whom."""
import pytest
import torch

from harness.specs import TaskMeta
from harness_m3po.delimiter import DelimiterMatcher, delimiter_count
from harness_m3po.policy import build_policy
from harness_m3po.rollout import policy_logprobs, rebuilt_inputs, sequence_logprobs

META = TaskMeta("tokens", vocab_size=9, max_len=24, causal=True)
DELIM, EOS = [7, 7], 8


def policy(gate="cosine", **kw):
    torch.manual_seed(0)
    pol = build_policy(META, dim=16, depth=2, heads=2, gate=gate, **{"lam": 0.5, "temperature": 0.5, **kw})
    pol.load_pretrained(pol.lm.state_dict())
    return pol


def sample(pol, G=3, seed=0, max_new=16):
    prompts = torch.randint(0, 7, (G, 5), generator=torch.Generator().manual_seed(seed))
    return pol.rollout(prompts, max_new_tokens=max_new, delimiter=DELIM, eos=EOS,
                       generator=torch.Generator().manual_seed(seed))


def test_delimiter_matched_as_a_whole_sequence():
    m = DelimiterMatcher([5, 6, 7], rows=3)
    streams = torch.tensor([[5, 6, 1, 7, 5, 6, 7], [7, 6, 5, 7, 6, 5, 1], [1, 5, 6, 7, 2, 2, 2]])
    ends = [m.push(streams[:, t]).tolist() for t in range(7)]
    assert [e[0] for e in ends] == [False] * 6 + [True]           # pieces 5, 6, 7 alone never end it
    assert not any(e[1] for e in ends)                             # every piece, never in order
    assert [e[2] for e in ends] == [False, False, False, True, False, False, False]
    assert m.seen.tolist() == [True, False, True]
    hashes = DelimiterMatcher([3, 3, 3, 3], rows=1)
    assert [hashes.push(torch.tensor([3])).item() for _ in range(4)] == [False, False, False, True]
    assert delimiter_count([3, 3, 3, 3, 3], [3, 3, 3, 3]) == 2 and delimiter_count([3, 3, 3, 1], [3, 3, 3, 3]) == 0


@pytest.mark.parametrize("gate", ["cosine", "jsd", "luong", "bahdanau", "none"])
def test_recomputed_logprobs_equal_sampling_time(gate):
    pol = policy(gate)
    ro = sample(pol)
    assert ro.tokens.shape[0] == 12 and ro.inputs.shape[:2] == (12, ro.tokens.shape[1] - 1)
    recomputed = policy_logprobs(pol.lm, pol.mix, ro)
    assert torch.allclose(recomputed, ro.logprobs, atol=1e-5), (recomputed - ro.logprobs).abs().max()
    # the rebuilt inputs (embedding table + gate) are the stored ones
    assert torch.allclose(rebuilt_inputs(pol.lm, pol.mix, ro), ro.inputs, atol=1e-6)
    if gate != "none":  # the test can fail: plain token ids (the reference's recomputation) are off-policy
        assert ro.mixed.any()
        plain = sequence_logprobs(pol.lm, ro, pol.lm.tok_embed(ro.tokens[:, :-1]))
        assert (plain - ro.logprobs).abs().max() > 1e-3


def test_none_gate_and_lam_zero_are_plain_decoding():
    a, b = sample(policy("none")), sample(policy("cosine", lam=0.0))
    assert torch.equal(a.tokens, b.tokens) and a.weights is None and b.weights is None
    pol = policy("none")
    assert torch.allclose(a.inputs, pol.lm.tok_embed(a.tokens[:, :-1]))


def test_exited_paths_neither_send_nor_receive():
    ro = sample(policy("cosine"), G=4, seed=3, max_new=18)
    G, Lf, N, _ = ro.weights.shape
    active = ro.thinking[:, :Lf].reshape(G, N, Lf).transpose(1, 2)               # (G, Lf, N)
    A = ro.weights
    assert (A.sum(-1)[~active] == 0).all()                                        # rows of exited paths
    assert (A.transpose(-1, -2).sum(-1)[~active] == 0).all()                      # their columns
    assert (~active).any() and active.any()
    # a mixed input needs the path active with an active peer
    mixed = ro.mixed.reshape(G, N, Lf).transpose(1, 2)
    assert (mixed <= active).all()


def test_mixing_changes_the_inputs_by_lam_times_the_peer_offset():
    pol = policy("peer_mean", lam=0.3)
    ro = sample(pol, G=1, seed=1)
    E = pol.lm.tok_embed.weight
    P = ro.prompt_len
    t = 0  # first generated token: every path is thinking unless it ended at once
    y = ro.tokens[:, P + t]
    active = ro.thinking[:, t]
    assert active.sum() >= 2
    e = E[y]
    peers = (e[active].sum(0, keepdim=True) - e) / (active.sum() - 1)             # mean of the other active paths
    expected = torch.where(active[:, None], 0.7 * e + 0.3 * peers, e)
    assert torch.allclose(ro.inputs[:, P + t], expected, atol=1e-6)


def test_kv_cache_sampling_equals_full_forward():
    """Each sampled token's log-probability from the cached rollout equals the full teacher-forced
    forward on the same inputs (that is the equality above); here, with the plain lm, the cached
    forward_cached steps equal one full forward position by position."""
    pol = policy("none")
    x = pol.lm.tok_embed(torch.randint(0, 9, (2, 10)))
    full = pol.lm(None, token_embeds=x)
    caches = pol.lm.new_caches()
    steps = [pol.lm.forward_cached(x[:, :4], caches, 0)] + [pol.lm.forward_cached(x[:, t:t + 1], caches, t)
                                                            for t in range(4, 10)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    assert caches[0]["k"].shape[2] == 10   # one key per position: no prefix re-run


def test_completion_mask_stops_after_eos():
    ro = sample(policy("cosine"), G=4, seed=2, max_new=18)
    comp = ro.completions
    for r in range(comp.shape[0]):
        row = comp[r].tolist()
        n = row.index(EOS) + 1 if EOS in row else len(row)
        assert ro.mask[r].tolist() == [True] * n + [False] * (len(row) - n)
