"""harness plugin ``token_mixer``: registers the ``token_mixer`` mixer. Imports harness only (the
target is a lazy "module:attr" string), so loading the plugin costs no torch import."""
from harness import MixerSpec, hookimpl


@hookimpl
def register_mixers(register):
    register(MixerSpec(
        "token_mixer", "harness_token_mixer.mixer:TokenMixer",
        description="RankMixer multi-head token mixing: T heads per token, new token h = concat over tokens of "
                    "head h (a parameter-free permutation); optional per-token FFN (pffn)",
        # Every output token reads every input token, so nothing can be causal. Padding: padded tokens are
        # zeroed before mixing (no leak), but the core trims padded batches to their longest sequence
        # (T != max_len), which a fixed-length mixer cannot take: declared not padding-capable.
        causal_ok=False, padding_ok=False, fixed_len=True, complexity="T",
        defaults={"pffn": False, "pffn_ratio": 1.0, "mismatch": "error"},
        search_space={
            "pffn": {"choices": [False, True]},
            "pffn_ratio": {"low": 0.25, "high": 2.0, "log": True},
        },
    ))
