"""Whisper-MoP on the encdec: the mel gate's parameters, its bounds and start, padding, and that
it really scales the encoder (a gated model differs from the plain encdec with the same weights)."""
import torch

from harness.nn.encdec import BOS_ID, build_encdec
from harness.specs import TaskMeta
from harness_mop.whisper_mop import MelGate, build_whisper_mop, frames_to_positions

META = TaskMeta("audio", vocab_size=30, max_len=12, features=8, max_frames=32, causal=True)


def _inputs(real=(32, 19)):
    g = torch.Generator().manual_seed(1)
    features = torch.randn(2, 32, META.features, generator=g)                    # (B, F, M)
    pad = torch.arange(32)[None, :] < torch.tensor(real)[:, None]                # (B, F)
    tokens = torch.randint(3, META.vocab_size, (2, 10), generator=g)
    tokens[:, 0] = BOS_ID
    return features, pad, tokens


def _model(**kw):
    torch.manual_seed(0)
    return build_whisper_mop(META, mixer="softmax", dim=16, depth=2, decoder_depth=1, heads=2, **kw).eval()


def test_mel_gate_parameter_count():
    v, k, ks = 5, 3, 5
    assert sum(p.numel() for p in MelGate(v, k, ks).parameters()) == v + v * k * ks * ks + k + 2 * (v + k) + 2 + 2


def test_extra_parameters_over_encdec_are_one_gate_per_encoder_layer():
    torch.manual_seed(0)
    plain = build_encdec(META, mixer="softmax", dim=16, depth=2, decoder_depth=1, heads=2)
    count = lambda m: sum(p.numel() for p in m.parameters())                     # noqa: E731
    assert count(_model()) - count(plain) == 2 * count(MelGate())


def test_gate_starts_at_one_and_stays_bounded():
    model = _model()
    features, pad, _ = _inputs()
    gates = model.gate_maps(features, pad)                                       # (L, B, F)
    assert gates.shape == (2, 2, 32)
    assert (gates - 1).abs().max() < 0.05
    for sign in (1.0, -1.0):                                                     # saturate either way
        for block in model.encoder:
            block.gate.alpha_pos.data.fill_(5.0)
            block.gate.alpha_neg.data.fill_(10.0)
            block.gate.fuse.bias.data = torch.tensor([10.0, -10.0]) * sign
        gates = model.gate_maps(features, pad)
        assert gates.min() > 0 and gates.max() < 1 + 5.01                        # never flips a sign


def test_gate_changes_the_encoder_output():
    model = _model()
    features, pad, tokens = _inputs()
    base = model(features, pad, tokens)
    for block in model.encoder:
        block.gate.fuse.bias.data = torch.tensor([3.0, -3.0])                    # excite every frame
    assert not torch.allclose(base, model(features, pad, tokens), atol=1e-4)


def test_padded_frames_do_not_change_real_outputs():
    model = _model()
    features, pad, tokens = _inputs()
    noisy = features.clone()
    noisy[1, 19:] = 100.0
    a, b = model(features, pad, tokens), model(noisy, pad, tokens)
    assert torch.allclose(a, b, atol=1e-5)
    # and row 1 equals the same utterance cut to its real frames (padded to a multiple of 4)
    cut = model(features[1:, :20], pad[1:, :20], tokens[1:])
    assert torch.allclose(a[1:], cut, atol=1e-5)


def test_frames_to_positions_averages_real_frames_per_window():
    gate = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]])
    pad = torch.tensor([[True] * 5 + [False] * 4])
    out = frames_to_positions(gate, pad)[0, :, 0]                                # windows of 4, ceil
    assert out.tolist() == [2.5, 5.0, 1.0]
