"""harness plugin ``m3po``: the gates (component kind ``m3po.gate``), the ``m3po.policy`` model,
the ``arith`` task and its metrics. Imports harness only (targets are lazy "module:attr"
strings), so loading the plugin costs no torch import."""
from harness import ComponentSpec, MetricSpec, ModelSpec, TaskSpec, hookimpl

GATE_KIND = "m3po.gate"

_GATES = {
    "cosine": ("CosineGate", "cos(p_i, p_j), the paper's gate"),
    "raw_dot": ("RawDotGate", "p_i . p_j"),
    "scaled_dot": ("ScaledDotGate", "p_i . p_j / sqrt(V)"),
    "jsd": ("JSDGate", "1 - sqrt(JSD(p_i, p_j)), pairs vectorised in chunks, memory O(N V)"),
    "bhattacharyya": ("BhattacharyyaGate", "sum_v sqrt(p_iv p_jv)"),
    "luong": ("LuongGate", "learnable low-rank bilinear (p_i U)(p_j W)^T; options rank, init"),
    "bahdanau": ("BahdanauGate", "learnable additive v . tanh(W1 p_i + W2 p_j); option attn_dim"),
    "peer_mean": ("PeerMeanGate", "ablation: uniform weights over active peers"),
    "none": ("NoneGate", "ablation: no cross-path mixing (plain GRPO, same as lam = 0)"),
}


@hookimpl
def register_components(register):
    for name, (cls, description) in _GATES.items():
        register(ComponentSpec(GATE_KIND, name, f"harness_m3po.gates:{cls}", description=description))


@hookimpl
def register_models(register):
    register(ModelSpec(
        "m3po.policy", "harness_m3po.policy:build_policy", inputs=("tokens",),
        config="harness_m3po.policy:PolicyConfig",
        description="the lm as a GRPO policy: N paths per prompt mixing token embeddings through an m3po.gate "
                    "while thinking (KV-cached rollout, on-policy log-probabilities, KL to the pretrained lm)",
    ))


@hookimpl
def register_tasks(register):
    register(TaskSpec(
        "arith", "harness_m3po.arith:Arith", metrics=("exact_match", "answer_format", "trace_match"), causal=True,
        description="synthetic: multi-step arithmetic mod 10 with a trace and a '####' answer; GRPO on an lm "
                    "pretrained once on traces (cached); greedy exact match",
    ))


@hookimpl
def register_metrics(register):
    register(MetricSpec("exact_match", "harness_m3po.arith:exact_match", higher_is_better=True,
                        description="fraction of answers exactly right (arith: greedy, after the delimiter)"))
    register(MetricSpec("answer_format", "harness_m3po.arith:share_true", higher_is_better=True,
                        description="fraction of completions with one delimiter, a number after it and EOS"))
    register(MetricSpec("trace_match", "harness_m3po.arith:share_true", higher_is_better=True,
                        description="fraction of completions equal to the reference trace"))
