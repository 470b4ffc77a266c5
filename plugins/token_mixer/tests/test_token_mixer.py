"""token_mixer: the contract, the permutation, the reference's identity, PFFN, widths and lengths."""
import pytest
import torch

from harness.nn.blocks import Block, build_mixer
from harness.nn.context import SeqContext
from harness.testing import check_mixer, contract_report
from harness_token_mixer.mixer import PerTokenFFN, TokenMixer, mix_tokens, permute_tokens


def _build(t=16, dim=32, heads=4, dtype=torch.float64, **options):
    torch.manual_seed(0)
    return build_mixer("token_mixer", dim, heads=heads, ctx=SeqContext(max_len=t), **options).to(dtype)


# ------------------------------------------------------------------------------------- contract

CONTRACT = [
    ({}, 16, 32),
    ({}, 12, 36),                                    # a non-square grid (3x4)
    ({}, 40, 80),                                    # longer than 32 tokens
    ({"pffn": True}, 16, 32),
    ({"pffn": True, "pffn_ratio": 0.5}, 12, 24),
    ({"mismatch": "project"}, 16, 36),               # T does not divide D: the documented projection
    ({"mismatch": "project", "pffn": True}, 12, 32),
]


@pytest.mark.parametrize("options,t,dim", CONTRACT, ids=[f"{o}-T{t}-D{d}" for o, t, d in CONTRACT])
def test_check_mixer_passes(options, t, dim):
    figures = check_mixer("token_mixer", dim=dim, max_len=t, **options)
    assert figures["mixing"] > 0.1                   # perturbing one token moves other tokens' outputs


def test_contract_report_runs_the_mixing_check_at_the_fixed_length():
    report = contract_report("token_mixer", max_len=16)
    by_name = {r.name: r for r in report.results}
    assert by_name["mixing"].passed and by_name["reach"].passed
    assert "causal" not in by_name and "padding" not in by_name   # not declared: not checked
    assert by_name["shape"].detail == "lengths 16"


def test_perturbing_token_j_changes_exactly_one_chunk_of_every_other_token():
    t, dim = 8, 16                                   # d = 2
    m = _build(t, dim)
    x = torch.randn(2, t, dim, dtype=torch.float64)
    j = 3
    x2 = x.clone()
    x2[:, j] += 1.0
    changed = (m(x2) - m(x)).abs() > 0               # (B, T, D)
    # output token h holds token j's head h at features [j*d, (j+1)*d): every token changes there only
    expected = torch.zeros(t, dim, dtype=torch.bool)
    expected[:, j * 2:(j + 1) * 2] = True
    assert torch.equal(changed[0], expected) and torch.equal(changed[1], expected)


# ------------------------------------------------------------------------------------- the permutation

@pytest.mark.parametrize("t,dim", [(16, 32), (64, 128), (12, 36), (8, 8)])
def test_mixing_is_an_exact_permutation_and_its_own_inverse(t, dim):
    x = torch.randn(3, t, dim)
    y = permute_tokens(x)
    assert torch.equal(y, mix_tokens(x, t))          # the fast path is the literal RankMixer formula
    assert torch.equal(permute_tokens(y), x)         # applying it twice restores the input, bit for bit
    assert torch.equal(torch.sort(y.flatten(1)).values, torch.sort(x.flatten(1)).values)   # same entries
    assert not torch.equal(y, x)                     # and it moved them
    d = dim // t
    for h in (0, t // 2, t - 1):                     # new token h = concat over tokens of head h
        assert torch.equal(y[:, h], x[:, :, h * d:(h + 1) * d].reshape(3, t * d))


def test_mixer_without_options_is_the_permutation():
    m = _build(16, 32)
    assert sum(p.numel() for p in m.parameters()) == 0          # parameter-free
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    assert torch.equal(m(x), mix_tokens(x, 16))
    assert torch.equal(m(m(x)), x)


def test_permutation_bits_survive_every_dtype_and_layout():
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        x = torch.randn(2, 8, 24).to(dtype)
        assert torch.equal(permute_tokens(x), mix_tokens(x, 8)), dtype
    base = torch.randn(2, 9, 20)
    x = base[:, 1:, 4:]                              # a non-contiguous, offset view (8 tokens, 16 wide)
    assert torch.equal(permute_tokens(x), mix_tokens(x, 8))
    nan = torch.full((1, 4, 8), float("nan"))        # NaN payloads are moved as bits, not recomputed
    assert torch.isnan(permute_tokens(nan)).all()


def test_permutation_gradients_are_exact_to_second_order():
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(permute_tokens, (x,))
    assert torch.autograd.gradgradcheck(permute_tokens, (x,))


# ------------------------------------------------------------------------------------- the reference

def reference_token_mixer_reshapes(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """tensor-mixology's TokenMixer.forward (SEEDS.md section 4.1), steps 1-5, literally."""
    B, T, D = x.shape
    d = D // num_heads
    x_heads = x.view(B, T, num_heads, d)                         # 1. [B, T, H, d]
    x_perm = x_heads.permute(0, 2, 1, 3).contiguous()            # 2. [B, H, T, d]
    x_flat = x_perm.view(B, num_heads * T, d)                    # 3. [B, H*T, d]
    x_unflat = x_flat.view(B, num_heads, T, d)                   # 4. undoes step 3
    x_mix = x_unflat.permute(0, 2, 1, 3).contiguous().view(B, T, D)   # 5. undoes steps 1-2
    return x_mix


def test_reference_reshape_sequence_is_the_identity():
    """Why the reference mixed nothing: step 4 views the flat tensor back into the very shape step 2
    produced, and step 5 applies the inverse permutation of step 2 and the inverse view of step 1.
    Every step after 2 undoes an earlier one, so x_mix == x bit for bit and its out = LayerNorm(x + x_mix)
    = LayerNorm(2x) ~= LayerNorm(x): no information crosses tokens. The correct op stops after step 2
    and reads the [B, H, T, d] tensor as H new tokens of width T*d (mix_tokens)."""
    torch.manual_seed(0)
    for t, dim in ((12, 768), (16, 64), (8, 8)):    # RANK_MIXER_100M's T = H = 12, D = 768 among them
        x = torch.randn(2, t, dim)
        x_mix = reference_token_mixer_reshapes(x, t)
        assert torch.equal(x_mix, x)                             # the identity
        assert not torch.equal(mix_tokens(x, t), x)              # the real op moves entries across tokens
    # and its block output, LayerNorm(x + x_mix), is LayerNorm(x) up to eps: no token sees another
    norm = torch.nn.LayerNorm(64, elementwise_affine=False)
    x = torch.randn(2, 16, 64)
    assert torch.allclose(norm(x + reference_token_mixer_reshapes(x, 16)), norm(x), atol=1e-5)
    x2 = x.clone()
    x2[:, 3] += 1.0
    unchanged = [i for i in range(16) if i != 3]
    out, out2 = (norm(v + reference_token_mixer_reshapes(v, 16)) for v in (x, x2))
    assert torch.equal(out[:, unchanged], out2[:, unchanged])   # the test the reference lacked fails for it


# ------------------------------------------------------------------------------------- residual and norm

def test_block_supplies_the_residual_and_norm_once():
    """The harness block is x + mixer(norm1(x)); the mixer adds neither a residual nor a norm."""
    torch.manual_seed(0)
    block = Block(32, heads=4, mlp_ratio=2.0, ctx=SeqContext(max_len=16), mixer="token_mixer").double()
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    after_mixer = x + mix_tokens(block.norm1(x), 16)
    expected = after_mixer + block.mlp(block.norm2(after_mixer))
    assert torch.allclose(block(x), expected, atol=1e-12)


# ------------------------------------------------------------------------------------- PFFN

def test_pffn_has_separate_weights_per_position_with_an_exact_count():
    t, dim, ratio = 16, 32, 1.5
    m = _build(t, dim, pffn=True, pffn_ratio=ratio)
    hidden = 48
    assert m.pffn.w1.shape == (t, dim, hidden) and m.pffn.w2.shape == (t, hidden, dim)
    assert sum(p.numel() for p in m.parameters()) == t * 2 * dim * hidden + 2 * dim   # + its LayerNorm
    with torch.device("meta"):                       # the budget matcher counts the same on meta
        meta = build_mixer("token_mixer", dim, heads=4, ctx=SeqContext(max_len=t), pffn=True, pffn_ratio=ratio)
    assert sum(p.numel() for p in meta.parameters()) == t * 2 * dim * hidden + 2 * dim


def test_pffn_position_weights_act_on_their_position_only():
    t, dim = 8, 16
    m = _build(t, dim, pffn=True)
    x = torch.randn(2, t, dim, dtype=torch.float64)
    y = m(x)
    with torch.no_grad():
        m.pffn.w2[5] += 0.1                          # the FFN weights of position 5 only
    changed = (m(x) - y).abs().amax(dim=(0, 2)) > 0  # (T,)
    assert changed.tolist() == [i == 5 for i in range(t)]


def test_pffn_is_a_residual_sublayer_on_the_mixed_tokens():
    m = _build(8, 16, pffn=True)
    x = torch.randn(2, 8, 16, dtype=torch.float64)
    mixed = mix_tokens(x, 8)
    assert torch.allclose(m(x), mixed + m.pffn(m.pffn_norm(mixed)), atol=1e-12)


def test_per_token_ffn_matches_a_loop_over_positions():
    torch.manual_seed(0)
    ffn = PerTokenFFN(4, 6, 10).double()
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    loop = torch.stack([torch.nn.functional.gelu(x[:, t] @ ffn.w1[t], approximate="tanh") @ ffn.w2[t]
                        for t in range(4)], dim=1)
    assert torch.allclose(ffn(x), loop, atol=1e-12)


# ------------------------------------------------------------------------------------- widths, lengths, padding

def test_dim_not_divisible_by_t_is_a_clear_error():
    with pytest.raises(ValueError, match=r"dim 36 must be divisible by the sequence length 16.*dim_multiple = 16"
                                         r".*mismatch = \"project\""):
        _build(16, 36)


def test_projection_pads_mixes_and_projects_back():
    m = _build(16, 36, mismatch="project")
    assert m.width == 48 and m.proj.weight.shape == (36, 48)
    assert sum(p.numel() for p in m.parameters()) == 48 * 36
    x = torch.randn(2, 16, 36, dtype=torch.float64)
    padded = torch.nn.functional.pad(x, (0, 12))
    assert torch.allclose(m(x), m.proj(mix_tokens(padded, 16)), atol=1e-12)


def test_unknown_mismatch_mode_is_refused():
    with pytest.raises(ValueError, match="mismatch must be one of error, project"):
        _build(16, 32, mismatch="truncate")


def test_heads_are_its_own_not_the_blocks():
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    assert torch.equal(_build(16, 32, heads=1)(x), _build(16, 32, heads=8)(x))


def test_fixed_length_is_enforced_with_a_message():
    m = _build(16, 32)
    with pytest.raises(ValueError, match="fixed-length: built for T = 16 tokens, got 12"):
        m(torch.randn(2, 12, 32, dtype=torch.float64))


def test_causal_context_is_refused_at_construction():
    with pytest.raises(ValueError, match="not causal"):
        build_mixer("token_mixer", 32, heads=4, ctx=SeqContext(max_len=16, causal=True))
    with pytest.raises(ValueError, match="token_mixer is not causal"):   # built directly, bypassing the registry
        TokenMixer(32, heads=4, ctx=SeqContext(max_len=16, causal=True))


def test_padded_tokens_are_zeroed_before_mixing_so_they_never_leak():
    """Not declared padding_ok (the core trims padded batches, which a fixed-length mixer cannot
    take), but a pad mask, when given, is honoured exactly."""
    m = _build(16, 32, pffn=True)
    x = torch.randn(2, 16, 32, dtype=torch.float64)
    pad = torch.ones(2, 16, dtype=torch.bool)
    pad[0, -5:] = False
    pad[1, :3] = False
    x2 = torch.where(pad[..., None], x, x + 100 * torch.randn_like(x))
    y, y2 = m(x, pad), m(x2, pad)
    assert torch.equal(y[pad], y2[pad])
    assert torch.equal(m(x, torch.ones(2, 16, dtype=torch.bool)), m(x))


def test_no_item_calls_in_forward(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(".item() called in forward")

    mixers = [_build(16, 36 if options.get("mismatch") else 32, **options)
              for options in ({}, {"pffn": True}, {"mismatch": "project"})]
    monkeypatch.setattr(torch.Tensor, "item", refuse)     # forward and backward only, not construction
    monkeypatch.setattr(torch.Tensor, "tolist", refuse)
    for m in mixers:
        x = torch.randn(2, 16, m.dim, dtype=torch.float64, requires_grad=True)
        m(x, torch.ones(2, 16, dtype=torch.bool)).sum().backward()
