"""poh.refiner: R = 1 is the plain backbone exactly; R passes cost R times the FLOPs; ReZero; ACT
weights sum to 1 with the remainder on the last state; the ponder cost is a real auxiliary loss
that the trainer optimises and logs; shared routers; causality over the lm."""
import pytest
import torch

from harness.budget import count_params, flops_per_token
from harness.nn import collect_aux
from harness.registry import model as model_spec
from harness.specs import TaskMeta
from harness_poh.refiner import Refiner, halting_weights

torch.set_num_threads(1)

TOKENS = TaskMeta(input="tokens", vocab_size=20, max_len=12, causal=True)
CLASSES = TaskMeta(input="tokens", vocab_size=20, max_len=12, num_classes=3)
IMAGES = TaskMeta(input="image", num_classes=10, image_size=(8, 8), channels=1)
SMALL = {"dim": 32, "depth": 2, "heads": 4}


def _build(name, meta, mixer="poh.heads", mixer_options=None, **config):
    torch.manual_seed(0)
    return model_spec(name).load()(meta, mixer=mixer, mixer_options=mixer_options or {}, **{**SMALL, **config})


def _refiner(model) -> Refiner:
    (refiner,) = model.blocks
    assert isinstance(refiner, Refiner)
    return refiner


def _inputs(meta, batch=3):
    g = torch.Generator().manual_seed(1)
    if meta.input == "image":
        return (torch.randn(batch, 1, 8, 8, generator=g),)
    tokens = torch.randint(0, meta.vocab_size, (batch, meta.max_len), generator=g)
    if meta.num_classes:
        pad = torch.ones(batch, meta.max_len, dtype=torch.bool)
        pad[0, 8:] = False
        return tokens, pad
    return (tokens,)


@pytest.mark.parametrize("backbone, meta, extra", [("lm", TOKENS, {}), ("encoder", CLASSES, {"pooling": "mean"}),
                                                   ("vit", IMAGES, {"patch": 2})])
@pytest.mark.parametrize("mixer", ["poh.heads", "softmax"])
def test_r1_without_extras_is_the_plain_backbone_exactly(backbone, meta, extra, mixer):
    plain = _build(backbone, meta, mixer=mixer, **extra)
    refined = _build("poh.refiner", meta, mixer=mixer, backbone=backbone, R=1, **extra)
    plain_state = plain.state_dict()
    refined_state = {k.replace("blocks.0.stack.", "blocks."): v for k, v in refined.state_dict().items()}
    assert plain_state.keys() == refined_state.keys()
    assert all(torch.equal(plain_state[k], refined_state[k]) for k in plain_state)     # same weights
    assert count_params(plain) == count_params(refined)
    args = _inputs(meta)
    for train in (False, True):
        plain.train(train), refined.train(train)
        assert torch.equal(plain(*args), refined(*args))


def test_r_passes_cost_r_times_the_flops():
    tokens = _inputs(TOKENS)[0]
    flops = {r: flops_per_token(_build("poh.refiner", TOKENS, R=r).eval(), (tokens,), tokens.numel())
             for r in (1, 2, 4)}
    head = flops_per_token(_build("poh.refiner", TOKENS, R=1, depth=0).eval(), (tokens,), tokens.numel())
    stack = flops[1] - head
    assert stack > 0
    assert flops[2] == pytest.approx(head + 2 * stack) and flops[4] == pytest.approx(head + 4 * stack)
    act = _build("poh.refiner", TOKENS, R=4, act=True).eval()
    assert flops_per_token(act, (tokens,), tokens.numel()) >= flops[4]    # ACT runs every pass


def test_outer_residual_with_rezero_starts_as_the_single_pass_model():
    one = _build("poh.refiner", TOKENS, R=1)
    four = _build("poh.refiner", TOKENS, R=4, outer_residual=True)              # alpha = 0
    tokens = _inputs(TOKENS)[0]
    assert torch.equal(one(tokens), four(tokens))
    assert _refiner(four).alpha.item() == 0.0
    four(tokens).sum().backward()
    assert _refiner(four).alpha.grad.abs() > 0                                  # and it learns to refine
    plain_alpha = _build("poh.refiner", TOKENS, R=2, outer_residual=True, rezero=False)
    assert _refiner(plain_alpha).alpha.item() == 1.0
    assert not torch.equal(plain_alpha(tokens), one(tokens))


def test_halting_weights_hand_computed():
    p = lambda *v: [torch.tensor([[x]]) for x in v]                             # noqa: E731  (B, T) = (1, 1)
    # never reaches 0.99 before the last pass: the remainder 1 - 0.8 goes to the last state
    assert torch.allclose(halting_weights(p(0.5, 0.3, 0.4), 0.99).flatten(), torch.tensor([0.5, 0.3, 0.2]))
    # halts at pass 2 (0.6 + 0.5 >= 0.99) with the remainder 0.4; later passes get 0
    assert torch.allclose(halting_weights(p(0.6, 0.5, 0.9), 0.99).flatten(), torch.tensor([0.6, 0.4, 0.0]))
    probs = [torch.rand(5, 7) for _ in range(4)]
    w = halting_weights(probs, 0.9)
    assert torch.allclose(w.sum(0), torch.ones(5, 7), atol=1e-6, rtol=0) and (w >= 0).all()


def test_act_weights_sum_to_one_and_ponder_is_a_real_loss():
    m = _build("poh.refiner", TOKENS, R=4, act=True, act_penalty=0.05)
    refiner = _refiner(m)
    refiner.keep_act_weights = True
    tokens = _inputs(TOKENS)[0]
    logits = m(tokens)
    w = refiner.act_weights                                                     # (R, B, T)
    assert w.shape == (4, 3, 12)
    assert torch.allclose(w.sum(0), torch.ones(3, 12), atol=1e-6, rtol=0) and (w >= 0).all()
    losses, stats = collect_aux(m)
    assert set(losses) == {"blocks.0.ponder"} and "blocks.0.act_passes" in stats
    ponder = losses["blocks.0.ponder"]
    passes = stats["blocks.0.act_passes"]
    assert ponder.requires_grad and ponder.ndim == 0
    assert 1.0 <= passes <= 4.0 and 0.05 * passes <= ponder <= 0.05 * (passes + 1)   # penalty * (N + remainder)
    (logits.sum() * 0 + ponder).backward()
    assert refiner.halt.weight.grad.abs().max() > 0                             # the ponder cost trains the halting


def test_act_remainder_goes_to_the_last_state():
    m = _build("poh.refiner", TOKENS, R=3, act=True, act_threshold=1.0)
    refiner = _refiner(m)
    refiner.keep_act_weights = True
    with torch.no_grad():
        refiner.halt.bias.fill_(-4.0)                                           # p ~ 0.02: nobody halts early
    m(_inputs(TOKENS)[0])
    w = refiner.act_weights
    assert (w[-1] > 0.9).all() and torch.allclose(w.sum(0), torch.ones_like(w[0]), atol=1e-6, rtol=0)


def test_trainer_optimises_and_logs_the_ponder_loss():
    from harness.suite import TrainSection
    from harness.train import train
    from harness_poh.sort import Sort

    task = Sort(length=4, vocab_size=8, n_train=64, n_eval=16)
    torch.manual_seed(0)
    m = model_spec("poh.refiner").load()(task.meta, mixer="poh.heads", mixer_options={}, dim=16, depth=1, heads=2,
                                         R=2, act=True)
    cfg = TrainSection(steps=2, batch_size=16, log_every=1, eval_every=10, threads=1, device="cpu")
    outcome = train(m, task, cfg, seed=0)
    logged = [h for h in outcome.history if "train/aux/blocks.0.ponder" in h]
    assert len(logged) == 2 and all(h["train/aux/blocks.0.ponder"] > 0 for h in logged)
    assert "train/stat/act_passes" in logged[0]


@pytest.mark.parametrize("mixer, options", [("poh.heads", {}), ("poh.heads_topk", {"router": "hrm"})])
def test_shared_router_is_one_module_counted_once(mixer, options):
    shared = _build("poh.refiner", TOKENS, mixer, options, R=2, share_router=True, depth=3)
    per_layer = _build("poh.refiner", TOKENS, mixer, options, R=2, depth=3)
    routers = {id(b.mixer.router) for b in _refiner(shared).stack}
    assert len(routers) == 1 and len({id(b.mixer.router) for b in _refiner(per_layer).stack}) == 3
    router_params = sum(p.numel() for p in _refiner(shared).stack[0].mixer.router.parameters())
    assert count_params(per_layer).total - count_params(shared).total == 2 * router_params
    out = shared(_inputs(TOKENS)[0])
    out.sum().backward()
    router = _refiner(shared).stack[0].mixer.router
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in router.parameters())
    with pytest.raises(ValueError, match="share_router needs a routed mixer"):
        _build("poh.refiner", TOKENS, mixer="softmax", share_router=True)


@pytest.mark.parametrize("config", [
    {"R": 3},
    {"R": 3, "outer_residual": True, "share_router": True, "act": True},
    {"R": 2, "grad": "last", "inject_input": True, "act": True},
])
def test_refined_lm_is_causal(config):
    m = _build("poh.refiner", TOKENS, **config).double()
    m.train(False)
    tokens = _inputs(TOKENS)[0]
    full = m(tokens)
    for cut in (0, 5, 10):
        changed = tokens.clone()
        changed[:, cut + 1:] = (changed[:, cut + 1:] + 7) % TOKENS.vocab_size
        assert torch.equal(m(changed)[:, : cut + 1], full[:, : cut + 1]), cut


def test_grad_modes():
    tokens = _inputs(TOKENS)[0]
    with pytest.raises(ValueError, match="inject_input"):
        _build("poh.refiner", TOKENS, R=2, grad="last")
    last = _build("poh.refiner", TOKENS, R=3, grad="last", inject_input=True)
    every = _build("poh.refiner", TOKENS, R=3, grad="all", inject_input=True)
    assert torch.equal(last(tokens), every(tokens))                             # same forward
    last(tokens).sum().backward()
    every(tokens).sum().backward()
    assert last.tok_embed.weight.grad.abs().max() > 0                           # through the re-injection
    assert not torch.equal(last.tok_embed.weight.grad, every.tok_embed.weight.grad)   # one-step vs full


def test_config_errors():
    with pytest.raises(ValueError, match="backbone 'lm' has no key"):
        _build("poh.refiner", TOKENS, patch=2)
    with pytest.raises(TypeError, match="no key"):
        _build("poh.refiner", TOKENS, iterations=2)
    with pytest.raises(ValueError, match="R must be"):
        _build("poh.refiner", TOKENS, R=0)
    with pytest.raises(ValueError, match="cannot refine itself"):
        _build("poh.refiner", TOKENS, backbone="poh.refiner")


def test_refined_lm_generates_without_a_kv_cache():
    m = _build("poh.refiner", TOKENS, R=2).eval()
    assert not m.supports_kv_cache
    out = m.generate(torch.zeros(1, 3, dtype=torch.long), 4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 7)


def test_no_host_sync_in_forward(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("host sync in forward")

    m = _build("poh.refiner", TOKENS, R=3, act=True, outer_residual=True, share_router=True)
    tokens = _inputs(TOKENS)[0]
    monkeypatch.setattr(torch.Tensor, "item", refuse)
    monkeypatch.setattr(torch.Tensor, "tolist", refuse)
    m(tokens).sum().backward()
    collect_aux(m)
