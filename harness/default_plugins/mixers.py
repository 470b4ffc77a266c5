"""The core's reference mixer, registered the way any plugin registers."""
from harness import MixerSpec, hookimpl


@hookimpl
def register_mixers(register):
    register(MixerSpec(
        "softmax", "harness.nn.softmax:SoftmaxAttention",
        description="multi-head softmax attention (torch scaled_dot_product_attention)",
        causal_ok=True, padding_ok=True, kv_cache=True, complexity="T^2",
    ))
    register(MixerSpec(
        "linear", "harness.nn.linear_attention:LinearAttention",
        description="multi-head linear attention, elu+1 features (a fixed-size state: weaker recall)",
        causal_ok=True, padding_ok=True, kv_cache=True, complexity="T",
    ))
