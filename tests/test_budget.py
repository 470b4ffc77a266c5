import pytest
import torch

from harness.budget import BudgetError, count_on_meta, flops_per_token, match_budget
from harness.registry import model
from harness.specs import TaskMeta

IMG = TaskMeta("image", num_classes=10, image_size=(32, 32), channels=3)


def build(cfg):
    return model("vit").load()(IMG, mixer="softmax", **cfg)


def closed_form(dim, depth, hidden, n=64, classes=10):
    return depth * (4 * dim * dim + 2 * dim * hidden + 4 * dim) + 48 * dim + n * dim + 2 * dim + dim * classes


@pytest.mark.parametrize("target, dim", [(1_000_000, 128), (5_000_000, 256)])
def test_match_lands_within_one_percent(target, dim):
    cfg = dict(dim=dim, depth=6, heads=4, patch=4)
    result = match_budget(build, cfg, target=target, tolerance=0.01, knob="mlp_ratio")
    assert abs(result.gap) <= 0.01
    hidden = int(dim * result.value + 1e-9)
    assert result.achieved == closed_form(dim, 6, hidden)
    assert count_on_meta(lambda: build({**cfg, "mlp_ratio": result.value})).total == result.achieved


def test_match_dim_keeps_head_divisibility():
    cfg = dict(depth=2, heads=6, patch=4, mlp_ratio=4.0)
    result = match_budget(build, cfg, target=500_000, tolerance=0.05, knob="dim")
    assert result.value % 6 == 0 and abs(result.gap) <= 0.05


def test_match_depth():
    cfg = dict(dim=64, heads=4, patch=4)
    per_block = 12 * 64 * 64 + 4 * 64
    fixed = closed_form(64, 0, 256)
    result = match_budget(build, cfg, target=fixed + 5 * per_block, tolerance=0.001, knob="depth")
    assert result.value == 5 and result.gap == 0


def test_infeasible_budget_lists_nearest_counts():
    cfg = dict(depth=6, heads=4, patch=4)
    with pytest.raises(BudgetError) as err:
        match_budget(build, cfg, target=1_000_000, tolerance=0.01, knob="dim")
    msg = str(err.value)
    assert "986,000 (dim=116, -1.40%)" in msg and "1,054,560 (dim=120, +5.46%)" in msg


def test_budget_below_smallest_model():
    with pytest.raises(BudgetError, match="nearest achievable"):
        match_budget(build, dict(dim=64, heads=4, patch=4), target=10, tolerance=0.01, knob="depth")


def test_non_embedding_count():
    cfg = dict(dim=64, depth=2, heads=4, patch=4, mlp_ratio=4.0)
    r = match_budget(build, cfg, target=closed_form(64, 2, 256) - 64 * 64, tolerance=0.0, knob="depth",
                     count="non_embedding_params")
    assert r.value == 2


def test_flops_per_token_matches_hand_count():
    # One linear layer D -> K on (B, T, D): 2 * D * K FLOPs per token.
    lin = torch.nn.Linear(16, 8, bias=False)
    assert flops_per_token(lin, torch.randn(3, 5, 16), tokens=15) == 2 * 16 * 8


def test_vit_flops_include_attention():
    m = build(dict(dim=32, depth=1, heads=4, patch=4))
    f = flops_per_token(m, torch.randn(2, 3, 32, 32), tokens=2 * 64)
    linear = 2 * (4 * 32 * 32 + 2 * 32 * 128) + 2 * 48 * 32 + 2 * 32 * 10 / 64
    attention = 2 * 2 * 64 * 32  # QK^T and AV per token
    assert f == pytest.approx(linear + attention, rel=1e-6)
