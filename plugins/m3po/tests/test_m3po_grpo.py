"""GRPO: group-normalised advantages, the loss on hand-computed values, one update per rollout,
the frozen reference, and gradients reaching learnable gates through the training step."""
import pytest
import torch

from harness.nn import collect_aux
from harness.specs import TaskMeta
from harness_m3po.grpo import group_advantages, grpo_loss, kl_k3
from harness_m3po.policy import PolicyConfig, build_policy

META = TaskMeta("tokens", vocab_size=9, max_len=24, causal=True)
DELIM, EOS = [7, 7], 8


def test_advantages_group_normalised():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    a = group_advantages(r)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()
    assert torch.allclose(a[0], (r[0] - 0.5) / (std + 1e-4))
    assert (a[1] == 0).all()                                        # equal rewards: no signal


def test_loss_hand_computed():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.0, -1.0, -3.0], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([2.0, -1.0])
    loss, kl = grpo_loss(logp, ref, mask, adv, beta=0.5, max_len=4)
    k = kl_k3(torch.tensor(-2.0), torch.tensor(-1.0)).item()          # e - 1 - 1 = e - 2
    assert k == pytest.approx(torch.e - 2)
    pg = (-(2.0 * (-3.0)) / 4 + -(-1.0 * -1.5) / 4) / 2             # masked token dropped; sum / L_max
    assert loss.item() == pytest.approx(pg + 0.5 * (k / 4) / 2)
    assert kl.item() == pytest.approx((k / 4) / 2)


def make(gate, **kw):
    torch.manual_seed(0)
    pol = build_policy(META, dim=16, depth=2, heads=2, gate=gate, **{"lam": 0.5, "temperature": 0.5, **kw})
    pol.load_pretrained(pol.lm.state_dict())
    return pol


def step_loss(pol, seed=0):
    prompts = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(seed))
    # a reward that differs within groups: the number of 3s sampled
    reward = lambda comp: (comp == 3).float().sum(-1)  # noqa: E731
    return pol.grpo_loss(prompts, reward, max_new_tokens=14, delimiter=DELIM, eos=EOS,
                         generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("gate", ["luong", "bahdanau"])
def test_learnable_gates_receive_gradients_under_grpo(gate):
    pol = make(gate)
    loss = step_loss(pol)
    loss.backward()
    for name, p in pol.gate.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert pol.lm.tok_embed.weight.grad.abs().sum() > 0
    _, stats = collect_aux(pol)
    assert {"reward", "kl", "gate_attention_entropy", "gate_similarity_std", "mixed_share"} <= set(stats)


def test_optimiser_step_moves_the_gate_and_not_the_reference():
    pol = make("luong")
    ref_before = {k: v.clone() for k, v in pol.reference.state_dict().items()}
    gate_before = pol.gate.U.detach().clone()
    opt = torch.optim.AdamW(pol.parameters(), lr=1e-2)
    step_loss(pol).backward()
    opt.step()
    assert not torch.equal(pol.gate.U, gate_before)
    assert all(torch.equal(v, ref_before[k]) for k, v in pol.reference.state_dict().items())
    assert not any(p is q for p in pol.parameters() for q in pol.reference.parameters())
    # the reference is outside the module tree: not counted, not optimised
    assert sum(p.numel() for p in pol.parameters()) == (sum(p.numel() for p in pol.lm.parameters())
                                                        + sum(p.numel() for p in pol.gate.parameters()))


def test_on_policy_kl_is_zero_at_the_start():
    pol = make("cosine")
    step_loss(pol)
    _, stats = collect_aux(pol)
    assert stats["kl"].abs().item() < 1e-6                          # policy == reference before any update


def test_needs_a_reference_and_a_strict_config():
    torch.manual_seed(0)
    pol = build_policy(META, dim=16, depth=1, heads=2)
    with pytest.raises(RuntimeError, match="load_pretrained"):
        step_loss(pol)
    with pytest.raises(TypeError):
        PolicyConfig(gates="jsd")
    with pytest.raises(ValueError, match="calibration"):
        PolicyConfig(calibration="minmax")
    with pytest.raises(ValueError, match="paths"):
        PolicyConfig(paths=1)
