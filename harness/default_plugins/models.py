"""The core's backbones. Each declares its config dataclass (lazily: no torch import to register)."""
from harness import ModelSpec, hookimpl


@hookimpl
def register_models(register):
    register(ModelSpec("vit", "harness.nn.vit:build_vit", inputs=("image",), config="harness.nn.vit:ViTConfig",
                       description="vision transformer: patch embed, learned positions, pre-LN blocks, mean pool"))
    register(ModelSpec("lm", "harness.nn.lm:build_lm", inputs=("tokens",), config="harness.nn.lm:LMConfig",
                       description="causal language model with tied embeddings and KV-cache generation"))
    register(ModelSpec("encoder", "harness.nn.encoder:build_encoder", inputs=("tokens", "token_pairs"),
                       config="harness.nn.encoder:EncoderConfig",
                       description="bidirectional encoder with CLS or mean pooling (classification, re-ranking)"))
    register(ModelSpec("encdec", "harness.nn.encdec:build_encdec", inputs=("audio",),
                       config="harness.nn.encdec:EncDecConfig",
                       description="speech encoder-decoder: conv subsampler, encoder, causal decoder with cross-attention"))
