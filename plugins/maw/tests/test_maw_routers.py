"""The three depth routers: their parameters receive gradients, their state depends on the input
(SEEDS 3.5.2: the reference's was constant), depth statistics are reported, probes force or replay
depths, the supervised router learns the per-example best depth, GRPO's advantages point the right
way, and its reference policy is a snapshot refreshed on schedule."""
import math

import pytest
import torch
import torch.nn.functional as F

from harness.nn import SeqContext, collect_aux
from harness.nn.aux import pop_example_loss_requests, probing
from harness.nn.blocks import build_mixer
from harness_maw.routers import GRPORouter, SoftRouter, SupervisedRouter

torch.set_num_threads(1)

ROUTERS = ("maw.soft", "maw.supervised", "maw.grpo")


def _mixer(router, causal=False, T=12, dim=32, H=4, seed=0, **options):
    torch.manual_seed(seed)
    return build_mixer("maw", dim, heads=H, ctx=SeqContext(max_len=T, causal=causal), router=router, **options)


def _pad(B=4, T=12):
    pad = torch.ones(B, T, dtype=torch.bool)
    pad[0, 8:] = False
    pad[1, :3] = False
    return pad


def _deliver(m, losses):
    """What harness.train does after a training forward: hand the module its probe losses."""
    (module, probes), = pop_example_loss_requests(m)
    module.receive_example_losses(losses[:probes])
    return collect_aux(m)


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_router_parameters_receive_gradients(router, per_head, causal):
    m = _mixer(router, causal=causal, per_head=per_head).train()
    x = torch.randn(4, 12, 32)
    pad = _pad()
    y = m(x, pad)
    losses, _ = collect_aux(m)
    (y.square().mean() + sum(losses.values(), torch.zeros(()))).backward()
    for name, p in m.router.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, (router, name)
    if router == "maw.soft":
        return
    # the router's own objective, delivered by the trainer's mechanism, reaches every router
    # parameter and nothing else (it reads a detached state)
    m.zero_grad(set_to_none=True)
    probes = m.router.probes
    losses, stats = _deliver(m, torch.rand(probes, 4))
    assert set(losses) == ({"router.router_ce"} if router == "maw.supervised" else {"router.policy", "router.kl"})
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in m.router.net.parameters()), router
    assert all(p.grad is None for n, p in m.named_parameters() if not n.startswith("router."))


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("causal", [False, True])
def test_router_state_depends_on_the_input(router, causal):
    m = _mixer(router, causal=causal).eval()
    x1, x2 = torch.randn(2, 12, 32), torch.randn(2, 12, 32)
    s1, _ = m.route_state(x1, None)
    s2, _ = m.route_state(x2, None)
    assert not torch.allclose(s1, s2)
    assert not torch.allclose(m.router.logits(s1), m.router.logits(s2))
    # ... and only on real tokens: padded positions do not move it (per example), nor do later
    # tokens move a causal position's state
    pad = _pad(2)
    x3 = torch.where(pad[..., None], x1, torch.randn_like(x1))
    torch.testing.assert_close(m.route_state(x1, pad)[0][pad if causal else slice(None)],
                               m.route_state(x3, pad)[0][pad if causal else slice(None)])
    if causal:
        x4 = x1.clone()
        x4[:, 6:] += 1.0
        assert torch.equal(m.route_state(x1, None)[0][:, :6], m.route_state(x4, None)[0][:, :6])


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("causal", [False, True])
def test_depth_statistics_are_reported(router, causal):
    D = 4
    m = _mixer(router, causal=causal, depths=D).train()
    m(torch.randn(4, 12, 32), _pad())
    _, stats = collect_aux(m)
    usage = [stats[f"router.depth_usage_{d}"] for d in range(D)]
    assert math.isclose(float(sum(usage)), 1.0, rel_tol=1e-6)
    assert 0.0 <= float(stats["router.depth_entropy"]) <= math.log(D) + 1e-6
    if router != "maw.soft":
        _, more = _deliver(m, torch.rand(m.router.probes, 4))
        expected = {"oracle_agreement", "depth_loss_spread"} if router == "maw.supervised" else {"reward", "kl_ref"}
        assert {k.split(".")[-1] for k in more} == expected
    m.eval()
    m(torch.randn(4, 12, 32))
    assert collect_aux(m)[1] == {}                                   # no statistics outside training


def test_supervised_probes_force_each_depth_and_replay_otherwise():
    r = SupervisedRouter(8, heads=2, depths=3, per_head=True).train()
    state = torch.randn(5, 1, 8)
    w, choice = r(state)
    for k in range(3):
        with probing(k):
            wk, ck = r(state)
        assert torch.equal(ck, torch.full((5, 1, 2), k)) and torch.equal(wk.argmax(-1), ck)
    with probing(7):                                                 # another router's probe: replay
        w7, c7 = r(state)
    assert torch.equal(c7, choice) and torch.equal(w7, w.detach())


def test_supervised_router_learns_the_depth_with_the_lowest_loss():
    torch.manual_seed(0)
    r = SupervisedRouter(8, heads=1, depths=3).train()
    state = torch.randn(6, 1, 8)
    best = torch.tensor([0, 1, 2, 2, 1, 0])
    losses = torch.ones(3, 6)
    losses[best, torch.arange(6)] = 0.1                              # probe d gave example b this loss
    opt = torch.optim.Adam(r.parameters(), lr=0.05)
    for _ in range(60):
        r(state)
        r.receive_example_losses(losses)
        loss, stats = collect_aux(r)
        opt.zero_grad()
        loss["router_ce"].backward()
        opt.step()
    assert torch.equal(r.eval()(state)[1][:, 0, 0], best)
    assert float(stats["oracle_agreement"]) == 1.0


def test_grpo_samples_in_training_replays_in_probes_and_is_greedy_in_eval():
    torch.manual_seed(0)
    r = GRPORouter(8, heads=1, depths=4, group=6, per_head=False).train()
    state = torch.randn(16, 1, 8)
    w, choice = r(state)
    actions = r._saved[2]                                            # (G, B, S, R)
    assert actions.shape == (6, 16, 1, 1) and torch.equal(actions[0], choice)
    assert len(actions.unique()) > 1                                 # it samples
    assert not w.requires_grad                                       # no straight-through
    for k in range(6):
        with probing(k):
            assert torch.equal(r(state)[1], actions[k])
    r.eval()
    assert torch.equal(r(state)[1], r(state)[1])
    assert torch.equal(r(state)[1], r.logits(state).argmax(-1))


def test_grpo_advantages_raise_the_probability_of_the_better_depths():
    torch.manual_seed(0)
    r = GRPORouter(8, heads=1, depths=4, group=8, kl_coef=0.0, entropy_coef=0.0).train()
    state = torch.randn(32, 1, 8)
    opt = torch.optim.SGD(r.parameters(), lr=0.5)
    good = 2
    before = F.softmax(r.logits(state), -1)[..., good].mean()
    for _ in range(20):
        r(state)
        actions = r._saved[2][:, :, 0, 0]                            # (G, B)
        losses = torch.where(actions == good, 0.0, 1.0)              # depth 2 is the best everywhere
        r.receive_example_losses(losses)
        loss, stats = collect_aux(r)
        opt.zero_grad()
        loss["policy"].backward()
        opt.step()
    after = F.softmax(r.logits(state), -1)[..., good].mean()
    assert after > before + 0.3
    # equal rewards within a group carry no signal
    r(state)
    r.receive_example_losses(torch.ones(8, 32))
    loss, _ = collect_aux(r)
    assert float(loss["policy"].detach()) == 0.0


def test_grpo_kl_to_a_reference_snapshot_refreshed_on_schedule():
    torch.manual_seed(0)
    r = GRPORouter(8, heads=2, depths=3, per_head=True, ref_every=2).train()
    state = torch.randn(4, 1, 8)
    ref = {n: b.clone() for n, b in r.named_buffers()}
    assert len(ref) == 4 and sum(p.numel() for p in r.parameters()) == sum(b.numel() for b in ref.values())
    r(state)
    r.receive_example_losses(torch.rand(4, 4))
    loss, stats = collect_aux(r)
    assert float(stats["kl_ref"]) == pytest.approx(0.0, abs=1e-7)  # the policy is its reference at init
    with torch.no_grad():
        for p in r.parameters():
            p.add_(0.3 * torch.randn_like(p))
    r(state)
    r.receive_example_losses(torch.rand(4, 4))                       # 2nd update: the snapshot is refreshed
    loss, stats = collect_aux(r)
    assert float(stats["kl_ref"]) > 0 and loss["kl"].requires_grad
    for (name, p), buf in zip(r.net.named_parameters(), r._ref_names.values()):
        assert torch.equal(getattr(r, buf), p.detach()), name


def test_soft_router_straight_through_and_relaxed():
    torch.manual_seed(0)
    hard = SoftRouter(8, heads=1, depths=4).eval()
    state = torch.randn(3, 1, 8)
    w, choice = hard(state)
    assert torch.equal(w.detach(), F.one_hot(choice, 4).float()) and w.requires_grad
    relaxed = SoftRouter(8, heads=1, depths=4, hard=False, temperature=0.5).eval()
    relaxed.load_state_dict(hard.state_dict())
    w, choice = relaxed(state)
    assert choice is None
    torch.testing.assert_close(w, F.softmax(hard.logits(state) / 0.5, -1))
    with pytest.raises(ValueError, match="temperature"):
        SoftRouter(8, heads=1, depths=4, temperature=0.0)
    with pytest.raises(ValueError, match="group"):
        GRPORouter(8, heads=1, depths=4, group=1)
