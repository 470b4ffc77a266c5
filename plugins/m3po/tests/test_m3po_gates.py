"""Every gate: shapes, row sums, masking; JSD and Bhattacharyya against hand-computed values;
gradients for the learnable gates and a finite JSD gradient at JSD = 0; the weight computation's
temperature and calibration; statistics over valid pairs only."""
import math

import pytest
import torch

from harness_m3po.gates import build_gate
from harness_m3po.jsd import pairwise_jsd
from harness_m3po.weights import GateStats, attention_weights, zscore_rows

GATES = ["cosine", "raw_dot", "scaled_dot", "jsd", "bhattacharyya", "luong", "bahdanau", "peer_mean", "none"]
V = 12


def dists(G=2, N=4, V=V, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(G, N, V, generator=g, dtype=dtype) * 2, -1)


@pytest.mark.parametrize("name", GATES)
def test_shapes_row_sums_and_masking(name):
    torch.manual_seed(0)
    gate = build_gate(name, V)
    p = dists()
    S = gate(p)
    assert S.shape == (2, 4, 4) and torch.isfinite(S).all()
    active = torch.tensor([[True, True, False, True], [True, False, False, False]])
    A, valid = attention_weights(S, active, temperature=0.5, connects=gate.connects)
    assert A.shape == (2, 4, 4)
    sums = A.sum(-1)
    if not gate.connects:                                   # none: no path ever mixes
        assert not valid.any() and (A == 0).all()
        return
    # group 0: active rows sum to 1; the inactive row 2 and the column 2 are exactly 0
    assert torch.allclose(sums[0, [0, 1, 3]], torch.ones(3))
    assert (A[0, 2] == 0).all() and (A[0, :, 2] == 0).all()
    assert (A[0].diagonal() == 0).all()                      # no self weight
    # group 1: one active path has no valid peer -> a zero row, not NaN
    assert (A[1] == 0).all()
    assert torch.isfinite(A).all()


def test_temperature_sharpens_and_peer_mean_is_uniform():
    torch.manual_seed(0)
    S = build_gate("cosine", V)(dists())
    active = torch.ones(2, 4, dtype=torch.bool)
    soft, _ = attention_weights(S, active, 10.0)
    sharp, _ = attention_weights(S, active, 1e-4)
    assert sharp.amax(-1).mean() > soft.amax(-1).mean()
    assert torch.allclose(sharp.amax(-1), torch.ones(2, 4), atol=1e-3)
    A, _ = attention_weights(build_gate("peer_mean", V)(dists()), active, 0.1)
    off = ~torch.eye(4, dtype=torch.bool)
    assert torch.allclose(A[:, off], torch.full((2, 12), 1 / 3))


def test_zscore_calibration_equalises_scale():
    """raw_dot and 1000 x raw_dot give different weights at one temperature, the same once z-scored."""
    p = dists()
    S = build_gate("raw_dot", V)(p)
    active = torch.ones(2, 4, dtype=torch.bool)
    a1, _ = attention_weights(S, active, 0.1)
    a2, _ = attention_weights(1000 * S, active, 0.1)
    assert not torch.allclose(a1, a2, atol=1e-3)
    z1, _ = attention_weights(S, active, 1.0, "zscore")
    z2, _ = attention_weights(1000 * S, active, 1.0, "zscore")
    assert torch.allclose(z1, z2, atol=1e-5)
    valid = ~torch.eye(4, dtype=torch.bool).expand(2, 4, 4)
    z = zscore_rows(S, valid)
    assert torch.allclose((z * valid).sum(-1), torch.zeros(2, 4), atol=1e-5)   # row mean 0 over valid entries
    with pytest.raises(ValueError, match="calibration"):
        attention_weights(S, active, 1.0, "minmax")


def test_jsd_and_bhattacharyya_hand_computed():
    p = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [1.0, 0.0, 0.0]]], dtype=torch.float64)
    # p0, p1: m = (1/4, 1/2, 1/4); JSD = H(m) - (H(p0) + H(p1)) / 2 = 1.5 ln 2 - ln 2 = 0.5 ln 2
    # p0, p2: m = (3/4, 1/4, 0);   H(m) = -(3/4 ln 3/4 + 1/4 ln 1/4); JSD = H(m) - ln 2 / 2
    # p1, p2: disjoint supports -> ln 2 (the maximum)
    h_m02 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    expected = torch.tensor([[0, 0.5 * math.log(2), h_m02 - 0.5 * math.log(2)],
                             [0.5 * math.log(2), 0, math.log(2)],
                             [h_m02 - 0.5 * math.log(2), math.log(2), 0]], dtype=torch.float64)
    q = p  # entr(0) = 0: the forward takes zeros
    assert torch.allclose(pairwise_jsd(q)[0], expected, atol=1e-12)
    S = build_gate("jsd", 3)(p)
    assert torch.allclose(S[0], 1 - expected.sqrt(), atol=1e-4)    # eps = 1e-8 smoothing moves it a little
    # Bhattacharyya: sum_v sqrt(p_i p_j): (p0, p1) = sqrt(1/4) = 0.5; (p0, p2) = sqrt(1/2); (p1, p2) = 0
    B = build_gate("bhattacharyya", 3)(p)[0]
    hand = torch.tensor([[1.0, 0.5, math.sqrt(0.5)], [0.5, 1.0, 0.0], [math.sqrt(0.5), 0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(B, hand, atol=1e-4)


def test_jsd_matches_naive_pair_loop_and_gradcheck():
    p = dists(G=2, N=5, V=7, dtype=torch.float64)
    naive = torch.zeros(2, 5, 5, dtype=torch.float64)
    for g in range(2):
        for i in range(5):
            for j in range(5):
                a, b = p[g, i], p[g, j]
                m = (a + b) / 2
                naive[g, i, j] = 0.5 * (a * (a / m).log()).sum() + 0.5 * (b * (b / m).log()).sum()
    assert torch.allclose(pairwise_jsd(p), naive, atol=1e-12)
    x = p.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(pairwise_jsd, (x,))


def test_jsd_gradient_finite_at_zero():
    p = torch.softmax(torch.randn(1, 1, V), -1).expand(1, 3, V).clone()    # three identical paths: JSD = 0
    p.requires_grad_(True)
    S = build_gate("jsd", V)(p)
    assert torch.allclose(S, torch.ones_like(S), atol=1e-5)
    S.sum().backward()
    assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", ["luong", "bahdanau"])
def test_learnable_gates_get_gradients(name):
    torch.manual_seed(0)
    gate = build_gate(name, V)
    assert gate.learnable
    p = dists()
    A, _ = attention_weights(gate(p), torch.ones(2, 4, dtype=torch.bool), 0.5)
    target = torch.randn(2, 4, 4)
    (A * target).sum().backward()
    for pname, param in gate.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, pname


def test_luong_identity_init_is_symmetric_xavier_is_not():
    torch.manual_seed(0)
    p = dists()
    S = build_gate("luong", V, {"rank": 4})(p)
    assert torch.allclose(S, S.transpose(1, 2), atol=1e-6)
    X = build_gate("luong", V, {"rank": 4, "init": "xavier"})(p)
    assert not torch.allclose(X, X.transpose(1, 2), atol=1e-4)
    B = build_gate("bahdanau", V)(p)
    assert not torch.allclose(B, B.transpose(1, 2), atol=1e-4)


def test_unknown_gate_option_fails_in_one_line():
    with pytest.raises(ValueError, match="gate 'luong' has no option.*rnak.*its options: rank, init"):
        build_gate("luong", V, {"rnak": 3})


def test_stats_over_valid_pairs_only():
    # group of 3, path 2 inactive: rows 0, 1 each put weight 1 on the other
    S = torch.tensor([[[9.0, 0.2, 5.0], [0.4, 9.0, 5.0], [5.0, 5.0, 9.0]]])
    active = torch.tensor([[True, True, False]])
    A, valid = attention_weights(S, active, 1.0)
    stats = GateStats()
    stats.add(S, A, valid)
    out = stats.means()
    assert out["attention_entropy"].item() == pytest.approx(0.0, abs=1e-6)   # the zero row is not averaged in
    assert out["attention_max"].item() == pytest.approx(1.0)
    assert out["attention_variance"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["similarity_mean"].item() == pytest.approx(0.3)               # (0.2 + 0.4) / 2: no 9s, no 5s
    assert out["similarity_std"].item() == pytest.approx(0.1, abs=1e-5)


def test_jsd_diagonal_path_equals_the_one_shot_path(monkeypatch):
    """Large inputs take the diagonal loop (memory O(N V)), small ones build every pair at once:
    the same numbers either way."""
    from harness_m3po import jsd

    torch.manual_seed(0)
    p = torch.softmax(torch.randn(2, 8, 300, dtype=torch.float64) * 3, -1)              # (G, N, V)
    one_shot = jsd.pairwise_jsd(p)
    monkeypatch.setattr(jsd, "ONE_SHOT_ELEMENTS", 0)
    diagonal = jsd.pairwise_jsd(p)
    assert torch.allclose(one_shot, diagonal, atol=1e-12)
    assert one_shot.abs().max() > 0.01                                                   # not trivially equal
