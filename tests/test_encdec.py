"""The encdec backbone: shapes, causal decoder, encoder padding, greedy decoding's stopping rules."""
import pytest
import torch

from harness.nn.encdec import BOS_ID, EOS_ID, PAD_ID, EncDec, EncDecConfig, build_encdec, subsampled_pad
from harness.nn.mel import log_mel, mel_filterbank, normalise, spec_augment
from harness.specs import TaskMeta

META = TaskMeta("audio", vocab_size=30, max_len=12, features=8, max_frames=32, causal=True)


def tiny(mixer="softmax") -> EncDec:
    torch.manual_seed(0)
    return build_encdec(META, mixer=mixer, dim=16, depth=1, decoder_depth=1, heads=2, mlp_ratio=2.0).eval()


def inputs(batch=2, frames=32, real=(32, 20), length=10):
    g = torch.Generator().manual_seed(1)
    features = torch.randn(batch, frames, META.features, generator=g)             # (B, F, M)
    pad = torch.arange(frames)[None, :] < torch.tensor(real)[:, None]             # (B, F)
    tokens = torch.randint(3, META.vocab_size, (batch, length), generator=g)      # (B, T)
    tokens[:, 0] = BOS_ID
    return features, pad, tokens


def test_shapes_and_tied_head():
    model = tiny()
    features, pad, tokens = inputs()
    assert model(features, pad, tokens).shape == (2, 10, META.vocab_size)
    assert model.head.weight is model.tok_embed.weight


def test_budget_knobs_are_config_fields():
    fields = set(EncDecConfig.__dataclass_fields__)
    assert {"dim", "mlp_ratio", "depth", "decoder_depth", "heads"} <= fields


def test_subsampled_pad_lengths():
    pad = torch.arange(32)[None, :] < torch.tensor([32, 20, 5, 1])[:, None]
    assert subsampled_pad(pad).shape == (4, 8)
    assert subsampled_pad(pad).sum(1).tolist() == [8, 5, 2, 1]                     # ceil(ceil(n/2)/2)


@pytest.mark.parametrize("mixer", ["softmax", "mop.quartet"])
def test_decoder_is_causal(mixer):
    model = tiny(mixer)
    features, pad, tokens = inputs()
    changed = tokens.clone()
    changed[:, 6] = (changed[:, 6] + 1 - 3) % (META.vocab_size - 3) + 3
    a, b = model(features, pad, tokens), model(features, pad, changed)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("mixer", ["softmax", "mop.quartet"])
def test_encoder_padding_is_respected(mixer):
    model = tiny(mixer)
    features, pad, tokens = inputs()
    noisy = features.clone()
    noisy[1, 20:] = 100.0                                   # padded frames of row 1 only
    a, b = model(features, pad, tokens), model(noisy, pad, tokens)
    assert torch.allclose(a, b, atol=1e-5)
    # and the same utterance alone, cut to its 20 real frames, decodes the same
    alone = model(features[1:, :20], pad[1:, :20], tokens[1:])
    assert torch.allclose(a[1:], alone, atol=1e-5)


def scripted_decode(model, script):
    """Replace the decoder with one that emits script[row][step] (then script[row][-1])."""
    def decode(tokens, memory, memory_pad):
        step = tokens.shape[1] - 1
        ids = torch.tensor([row[min(step, len(row) - 1)] for row in script])
        return torch.nn.functional.one_hot(ids, META.vocab_size).float()[:, None].expand(-1, tokens.shape[1], -1)
    model.decode = decode
    return model


def test_greedy_stops_at_eos_and_pads_finished_rows():
    features, pad, _ = inputs()
    model = scripted_decode(tiny(), [[5, EOS_ID], [5, 6, 7, EOS_ID]])
    out = model.greedy(features, pad)
    assert out.tolist() == [[5, EOS_ID, PAD_ID, PAD_ID], [5, 6, 7, EOS_ID]]


def test_greedy_stops_at_length_limit():
    features, pad, _ = inputs()
    model = scripted_decode(tiny(), [[5], [6]])
    assert model.greedy(features, pad).shape == (2, META.max_len - 1)            # bos takes one position
    assert model.greedy(features, pad, max_new=3).tolist() == [[5, 5, 5], [6, 6, 6]]


def test_log_mel_shapes_and_filterbank():
    fb = mel_filterbank(8, 64, 8000)
    assert fb.shape == (33, 8) and (fb >= 0).all() and (fb.sum(0) > 0).all()      # no empty filter
    waves = torch.randn(3, 800)
    mel = log_mel(waves, 8000, n_mels=8, n_fft=64, hop=32)
    assert mel.shape == (3, 800 // 32 + 1, 8)
    pad = torch.arange(mel.shape[1])[None, :] < torch.tensor([26, 10, 1])[:, None]
    norm = normalise(mel, pad)
    assert torch.allclose(norm[0].mean(0), torch.zeros(8), atol=1e-4)
    assert (norm[1, 10:] == 0).all() and torch.isfinite(norm).all()


def test_spec_augment_only_zeroes_bands():
    x = torch.randn(4, 50, 16) + 5.0                                                # no natural zeros
    g = torch.Generator().manual_seed(0)
    y = spec_augment(x, g, n_masks=2, freq_width=4, time_width=8)
    kept = y != 0
    assert torch.equal(y[kept], x[kept]) and (~kept).any()
    # a masked bin is masked over all frames; a masked frame over all bins
    dropped_bins = (~kept).all(1)                                                   # (B, M)
    dropped_frames = (~kept).all(2)                                                 # (B, F)
    assert ((~kept) == (dropped_bins[:, None, :] | dropped_frames[:, :, None])).all()
    assert dropped_bins.sum(1).max() <= 8 and dropped_frames.sum(1).max() <= 16


def test_ctc_loss_is_reported_in_training_only_and_matches_torch_on_the_characters():
    from harness.nn.aux import collect_aux

    model = tiny()
    features, pad, tokens = inputs()
    tokens[1, 6:] = PAD_ID                                   # row 1: bos + 4 characters + eos, then padding
    tokens[1, 5] = EOS_ID
    model(features, pad, tokens)
    assert collect_aux(model)[0] == {}                       # eval: nothing reported
    model.train()
    model(features, pad, tokens)
    losses, _ = collect_aux(model)
    memory, memory_pad = model.encode(features, pad)
    log_probs = torch.log_softmax(model.ctc_head(memory), -1).transpose(0, 1)
    targets = torch.cat([tokens[0, 1:], tokens[1, 1:5]])     # characters only, concatenated
    expected = torch.nn.functional.ctc_loss(log_probs, targets, memory_pad.sum(1), torch.tensor([9, 4]),
                                            blank=PAD_ID, zero_infinity=True)
    assert torch.allclose(losses["ctc"], model.ctc_weight * expected, atol=1e-5)


def test_ctc_weight_zero_has_no_head_and_reports_nothing():
    from harness.nn.aux import collect_aux

    torch.manual_seed(0)
    model = build_encdec(META, mixer="softmax", dim=16, depth=1, decoder_depth=1, heads=2, ctc_weight=0.0)
    assert model.ctc_head is None
    model.train()
    model(*inputs())
    assert collect_aux(model)[0] == {}
