"""The cookbook's worked example and its score-space / probability-space identities."""
import torch

from harness_mop import cookbook as cb

A1 = torch.tensor([0.50, 0.10, 0.40], dtype=torch.float64)
A2 = torch.tensor([0.10, 0.50, 0.40], dtype=torch.float64)


def test_seed_and_example():
    assert torch.allclose(A1 * A2, torch.tensor([0.05, 0.05, 0.16], dtype=torch.float64))
    want = torch.tensor([0.05, 0.05, 0.16], dtype=torch.float64) / 0.26
    assert torch.allclose(cb.and_prob(A1, A2), want)
    assert torch.allclose(cb.and_prob(A1, A2), torch.tensor([0.1923, 0.1923, 0.6154], dtype=torch.float64), atol=5e-5)
    # The seed table's [0.185, 0.185, 0.630] is not the normalisation of its own product row.
    assert not torch.allclose(cb.and_prob(A1, A2), torch.tensor([0.185, 0.185, 0.630], dtype=torch.float64), atol=5e-3)
    # Score space: softmax(log A1 + log A2) is the same distribution.
    assert torch.allclose(cb.and_(A1.log(), A2.log()), want)
    assert cb.and_(A1.log(), A2.log()).argmax() == 2                  # red_ball pops


def _scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    s1, s2 = torch.randn(2, 3, 4, 6, 6, generator=g, dtype=torch.float64).mul(3).unbind(0)
    mask = torch.rand(6, 6, generator=g) > 0.4
    mask |= torch.eye(6, dtype=torch.bool)                            # every row keeps a key
    return s1, s2, mask


def _softmax(s, mask):
    return s.masked_fill(~mask, float("-inf")).softmax(-1)


def test_score_and_probability_forms_agree():
    s1, s2, mask = _scores()
    a1, a2 = _softmax(s1, mask), _softmax(s2, mask)
    assert torch.allclose(cb.and_(s1, s2, mask), cb.and_prob(a1, a2))
    assert torch.allclose(cb.or_(s1, s2, mask), cb.or_prob(s1, s2, mask))
    for beta in (0.0, 0.5, 2.0):
        assert torch.allclose(cb.not_(s1, s2, beta, mask), cb.not_prob(a1, a2, beta))
    for out in (cb.and_(s1, s2, mask), cb.or_(s1, s2, mask), cb.not_(s1, s2, 0.5, mask)):
        assert (out[..., ~mask] == 0).all()


def test_xor_forms_are_distributions_that_favour_disagreement():
    s1, s2, mask = _scores(1)
    a1, a2 = _softmax(s1, mask), _softmax(s2, mask)
    for out in (cb.xor_(s1, s2, mask), cb.xor_prob(a1, a2)):
        assert torch.allclose(out.sum(-1), torch.ones_like(out.sum(-1)))
    # The red/round example: the two one-view keys beat the key both views like in probability space.
    p = cb.xor_prob(A1, A2)
    assert p[0] > p[2] and p[1] > p[2]


def test_chain_and_prior():
    s1, s2, mask = _scores(2)
    a1, a2 = _softmax(s1, mask), _softmax(s2, mask)
    c = cb.chain(a1, a2)
    assert torch.allclose(c.sum(-1), torch.ones_like(c.sum(-1)))
    assert torch.allclose(cb.chain_scores(a1, a2, eps=0.0).softmax(-1), c)
    prior = cb.per_key_prior(a1, a2, 3)
    assert torch.allclose(prior, cb.normalize(a1 * a2[..., 3:4, :]))
    assert torch.allclose(prior.sum(-1), torch.ones_like(prior.sum(-1)))
