"""The core's backbones."""
from harness import ModelSpec, hookimpl


@hookimpl
def register_models(register):
    register(ModelSpec("vit", "harness.nn.vit:build_vit", inputs=("image",),
                       description="vision transformer: patch embed, learned positions, pre-LN blocks, mean pool"))
    register(ModelSpec("lm", "harness.nn.lm:build_lm", inputs=("tokens",),
                       description="causal language model with tied embeddings and KV-cache generation"))
    register(ModelSpec("encoder", "harness.nn.encoder:build_encoder", inputs=("tokens", "token_pairs"),
                       description="bidirectional encoder with CLS or mean pooling (classification, re-ranking)"))
