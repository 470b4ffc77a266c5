"""harness plugin ``mop``: registers the MoP mixers and models. Imports harness only (targets are
lazy "module:attr" strings), so loading the plugin costs no torch import."""
from harness import MixerSpec, ModelSpec, hookimpl

PRESETS = ["neutral", "and", "or", "not", "nor", "xor", "chain", "mix5"]


@hookimpl
def register_mixers(register):
    register(MixerSpec(
        "mop.crossview", "harness_mop.crossview:CrossViewAttention",
        description="MoP mode C: [q1,q2] M [k1;k2]^T with a learnable 2x2 M (one attention), optional transpose cues "
                    "and per-key prior",
        causal_ok=True, padding_ok=True, complexity="T^2",
        defaults={"t1": 0.0, "t2": 0.0, "prior": False, "prior_weight": 0.5, "anchor": "colmass"},
        search_space={
            "t1": {"low": 0.0, "high": 0.5, "log": False},
            "t2": {"low": 0.0, "high": 0.5, "log": False},
            "prior": {"choices": [False, True]},
            "prior_weight": {"low": 0.1, "high": 0.9, "log": False},
        },
    ))
    register(MixerSpec(
        "mop.multihop", "harness_mop.multihop:MultiHopAttention",
        description="MoP mode D: AND/OR/NOT/chain over two score maps, chain A1 A2^(hops-1) with value transport",
        causal_ok=True, padding_ok=True, complexity="T^3",
        defaults={"hops": 3, "gate_and": 1.0, "gate_or": 0.0, "gate_not": 0.0, "gate_chain": 1.0},
        search_space={
            "hops": {"choices": [2, 3, 4]},
            "gate_chain": {"low": 0.0, "high": 1.0, "log": False},
            "beta_not": {"low": 0.1, "high": 2.0, "log": True},
            "learn_gates": {"choices": [False, True]},
        },
    ))
    register(MixerSpec(
        "mop.edgewise", "harness_mop.edgewise:EdgewiseAttention",
        description="MoP mode E: per-head, per-edge AND/OR/NOT/chain gates from a dense or low-rank gate head",
        causal_ok=True, padding_ok=True, complexity="T^3",
        defaults={"views": 5, "share_qkv": True, "gate_mode": "lowrank", "gate_rank": 4, "gate_init": "neutral"},
        search_space={
            "gate_init": {"choices": PRESETS},
            "gate_mode": {"choices": ["lowrank", "dense"]},
            "gate_rank": {"choices": [2, 4, 8]},
            "views": {"choices": [2, 3, 5]},
        },
    ))
    register(MixerSpec(
        "mop.quartet", "harness_mop.quartet:QuartetAttention",
        description="GPT-MoP Quartet: (1-m) z(qk) + m z(qk) z(q2k2) scale, z over visible keys (causal)",
        causal_ok=True, padding_ok=True, kv_cache=True, complexity="T^2",
        defaults={"mixture_init": -5.0, "scale_init": 1.0},
        search_space={"mixture_init": {"low": -6.0, "high": 0.0, "log": False}},
    ))


@hookimpl
def register_models(register):
    register(ModelSpec(
        "mop.vit", "harness_mop.vit_mop:build_vit_mop", inputs=("image",), config="harness_mop.vit_mop:ViTMoPConfig",
        description="ViT-MoP: harness ViT + MoP spatial gate (views, 3x3 kernels, exc/inh fusion) before pooling",
    ))
    register(ModelSpec(
        "mop.gpt", "harness_mop.gpt_mop:build_gpt_mop", inputs=("tokens",), config="harness_mop.gpt_mop:GPTMoPConfig",
        description="GPT-MoP: harness LM + causal, bounded MoP token gate after each mixer (default mixer "
                    "mop.quartet)",
    ))
    register(ModelSpec(
        "mop.whisper", "harness_mop.whisper_mop:build_whisper_mop", inputs=("audio",),
        config="harness_mop.whisper_mop:WhisperMoPConfig",
        description="Whisper-MoP: harness encdec + a bounded MoP gate from the log-mel spectrogram after each "
                    "encoder mixer",
    ))
