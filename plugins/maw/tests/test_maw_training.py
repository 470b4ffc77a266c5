"""maw in whole models: the `encoder` backbone on padded token pairs (the retrieval re-ranker's
setting), trained by harness.train with every router (the supervised and GRPO routers through the
per-example-loss mechanism), and a causal lm routed per position."""
import pytest
import torch
import torch.nn.functional as F

from harness.nn import collect_aux
from harness.nn.aux import answer_example_loss_requests, pop_example_loss_requests, probe_index
from harness.registry import model as model_spec
from harness.specs import TaskMeta
from harness.suite import TrainSection
from harness.tasks.base import ClassificationTask, TensorBatches
from harness.train import train

torch.set_num_threads(1)

ROUTERS = ("maw.soft", "maw.supervised", "maw.grpo")
PAIRS = TaskMeta("token_pairs", num_classes=1, vocab_size=30, max_len=14)


def _pairs(n, seed=0):
    """Synthetic ``query [SEP] doc`` rows, right-padded: tokens, pad, segments, label (doc shares a
    token with the query)."""
    g = torch.Generator().manual_seed(seed)
    q_len = torch.randint(2, 5, (n,), generator=g)
    d_len = torch.randint(3, 9, (n,), generator=g)
    tokens = torch.randint(2, 30, (n, 14), generator=g)
    pos = torch.arange(14)[None]
    pad = pos < (q_len + 1 + d_len)[:, None]
    segments = (pos > q_len[:, None]).long() * pad
    tokens = torch.where(pos == q_len[:, None], 1, torch.where(pad, tokens, 0))
    label = (tokens[:, :1] == tokens[:, 5:]).any(1).float()
    return tokens, pad, segments, label


def _encoder(router, seed=0, **options):
    torch.manual_seed(seed)
    return model_spec("encoder").load()(PAIRS, mixer="maw", mixer_options={"router": router, **options}, dim=32,
                                        depth=2, heads=4)


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("per_head", [False, True])
def test_encoder_on_padded_pairs_forward_backward(router, per_head):
    m = _encoder(router, per_head=per_head).train()
    tokens, pad, segments, label = _pairs(6)
    scores = m(tokens, pad, segments)
    assert scores.shape == (6, 1) and torch.isfinite(scores).all()
    losses, stats = collect_aux(m)
    (F.binary_cross_entropy_with_logits(scores[:, 0], label) + sum(losses.values(), torch.zeros(()))).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name
    assert any(k.endswith("depth_entropy") for k in stats)
    # padded tokens change nothing, in training (same Gumbel noise) and in evaluation
    other = torch.where(pad, tokens, torch.randint(2, 30, tokens.shape))
    for mode in (True, False):
        m.train(mode)
        torch.manual_seed(3)
        a = m(tokens, pad, segments)
        torch.manual_seed(3)
        b = m(other, pad, segments)
        collect_aux(m)
        assert torch.equal(a, b)
    # the scores depend on the documents' real tokens
    changed = torch.where(segments.bool(), (tokens + 1) % 28 + 2, tokens)
    assert not torch.allclose(m.eval()(tokens, pad, segments), m(changed, pad, segments))


class ToyPairs(ClassificationTask):
    """Binary relevance of synthetic pairs, with the optional per_example_loss."""

    meta = PAIRS
    metrics = ("loss",)

    def __init__(self):
        self.data = {"train": _pairs(64, 0), "val": _pairs(16, 1), "test": _pairs(16, 2)}
        self.per_example_calls: list[int | None] = []

    def splits(self):
        return self.data

    def batches(self, split, batch_size, seed=0):
        return TensorBatches(self.data[split], batch_size, shuffle=split == "train", seed=seed)

    def per_example_loss(self, model, batch):
        self.per_example_calls.append(probe_index())
        tokens, pad, segments, label = batch
        return F.binary_cross_entropy_with_logits(model(tokens, pad, segments)[:, 0], label, reduction="none")

    def loss(self, model, batch):
        tokens, pad, segments, label = batch
        return F.binary_cross_entropy_with_logits(model(tokens, pad, segments)[:, 0], label)

    @torch.no_grad()
    def evaluate(self, model, batches, device, autocast):
        losses = [self.loss(model, tuple(t.to(device) for t in batch)) for batch in batches]
        return {"loss": float(torch.stack(losses).mean())}


@pytest.mark.parametrize("router, probes, logged", [
    ("maw.soft", 0, set()),
    ("maw.supervised", 4, {"train/aux/blocks.0.mixer.router.router_ce", "train/stat/oracle_agreement",
                           "train/stat/depth_loss_spread"}),
    ("maw.grpo", 3, {"train/aux/blocks.0.mixer.router.policy", "train/aux/blocks.1.mixer.router.kl",
                     "train/aux/blocks.0.mixer.router.entropy_bonus", "train/stat/reward", "train/stat/kl_ref"}),
])
def test_routers_train_through_the_trainer(router, probes, logged):
    task = ToyPairs()
    m = _encoder(router, router_options={"group": 3} if router == "maw.grpo" else {})
    cfg = TrainSection(steps=3, batch_size=8, log_every=1, eval_every=10, threads=1, device="cpu", warmup=0.0)
    outcome = train(m, task, cfg, seed=0)
    # per step: one no-grad probe per depth (supervised) or per sample of the group (grpo); both
    # layers' routers are answered by the same probes
    assert task.per_example_calls == list(range(probes)) * 3
    rows = [h for h in outcome.history if "train/loss" in h]
    assert len(rows) == 3 and all(logged <= set(h) for h in rows)
    assert all(f"train/stat/depth_usage_{d}" in rows[0] for d in range(4))
    assert all(torch.isfinite(torch.tensor(v)) for h in outcome.history for v in h.values())


def test_supervised_and_grpo_routers_move_during_training():
    for router in ("maw.supervised", "maw.grpo"):
        task = ToyPairs()
        m = _encoder(router)
        before = {n: p.detach().clone() for n, p in m.named_parameters() if ".router." in n}
        train(m, task, TrainSection(steps=2, batch_size=8, log_every=1, eval_every=10, threads=1, device="cpu",
                                    warmup=0.0, lr=1e-2), seed=0)
        moved = [n for n, p in m.named_parameters() if ".router." in n and not torch.equal(p, before[n])]
        assert len(moved) == len(before), router


def test_causal_lm_routes_each_position_and_answers_probes():
    meta = TaskMeta("tokens", vocab_size=17, max_len=10, causal=True)
    torch.manual_seed(0)
    lm = model_spec("lm").load()(meta, mixer="maw", mixer_options={"router": "maw.grpo", "per_head": True},
                                 dim=32, depth=2, heads=4).train()
    tokens = torch.randint(0, 17, (4, 10))

    def per_example():
        logits = lm(tokens[:, :-1])
        return F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none").mean(1)

    loss = per_example().mean()
    aux, _ = collect_aux(lm)
    requests = pop_example_loss_requests(lm)
    assert len(requests) == 2 and all(probes == 4 for _, probes in requests)
    assert requests[0][0]._saved[2].shape == (4, 4, 9, 4)            # (G, B, T: one route per position, H)
    more, stats = answer_example_loss_requests(lm, requests, per_example)
    (loss + sum(aux.values()) + sum(more.values())).backward()
    for block in lm.blocks:
        assert all(p.grad is not None and p.grad.abs().max() > 0 for p in block.mixer.router.parameters())
    # the output at position t does not depend on later tokens, with routing per position
    lm.eval()
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 5) % 17
    assert torch.equal(lm(tokens)[:, :6], lm(changed)[:, :6])
