"""harness plugin ``maw``: registers the ``maw`` mixer and its depth routers (component kind
``maw.router``: ``maw.soft``, ``maw.supervised``, ``maw.grpo``). Imports harness only (targets are
lazy "module:attr" strings), so loading the plugin costs no torch import."""
from harness import ComponentSpec, MixerSpec, hookimpl

ROUTER_KIND = "maw.router"

_OPTIONS = {"depths": 4, "depth_dim": None, "router": "maw.soft", "router_options": None, "per_head": False,
            "router_hidden": None, "bias": False, "dropout": 0.0, "eval_chosen_depth": False, "gather_rows": None}
_SPACE = {
    "depths": {"choices": [2, 4, 8]},
    "router": {"choices": ["maw.soft", "maw.supervised", "maw.grpo"]},
    "per_head": {"choices": [False, True]},
}


@hookimpl
def register_mixers(register):
    register(MixerSpec(
        "maw", "harness_maw.attention:MAWAttention",
        description="MAW: per head D depth-wise attention maps (depth projections of q and k, one fused SDPA "
                    "call), a registered maw.router picks a depth per example (per position when causal)",
        # Every router routes by a straight-through estimator or by sampling: no gradcheck.
        causal_ok=True, padding_ok=True, complexity="T^2", surrogate_gradients=True,
        defaults=dict(_OPTIONS), search_space=dict(_SPACE),
    ))


@hookimpl
def register_components(register):
    register(ComponentSpec(ROUTER_KIND, "maw.soft", "harness_maw.routers:SoftRouter",
                           description="straight-through Gumbel-softmax over depths (noise in training only)"))
    register(ComponentSpec(ROUTER_KIND, "maw.supervised", "harness_maw.routers:SupervisedRouter",
                           description="depth classifier; cross-entropy towards the depth with the lowest "
                                       "per-example task loss (D no-grad probes)"))
    register(ComponentSpec(ROUTER_KIND, "maw.grpo", "harness_maw.routers:GRPORouter",
                           description="policy over depths: G sampled depths per input, reward = -task loss, "
                                       "group-normalised advantages, KL to a reference snapshot"))
