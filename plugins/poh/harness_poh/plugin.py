"""harness plugin ``poh``: registers the PoH mixers, the refiner model, the sort task and its
metrics. Imports harness only (targets are lazy "module:attr" strings), so loading the plugin
costs no torch import."""
from harness import MetricSpec, MixerSpec, ModelSpec, TaskSpec, hookimpl

_OPTIONS = {"router": "mlp", "temperature": 1.0, "router_hidden": None, "hrm_period": 4, "bias": False,
            "dropout": 0.0}
_SPACE = {
    "temperature": {"low": 0.3, "high": 3.0, "log": True},
    "router": {"choices": ["mlp", "hrm"]},
}


@hookimpl
def register_mixers(register):
    register(MixerSpec(
        "poh.heads", "harness_poh.heads:PoHAttention",
        description="PoH: SDPA multi-head attention, each head scaled per token by soft routing weights "
                    "(MLP or causal HRM router) times a learned gain",
        causal_ok=True, padding_ok=True, complexity="T^2", defaults=dict(_OPTIONS), search_space=dict(_SPACE),
    ))
    register(MixerSpec(
        "poh.heads_topk", "harness_poh.heads:PoHTopkAttention",
        description="PoH with top-k head routing: straight-through Gumbel top-k (noise in training only)",
        causal_ok=True, padding_ok=True, complexity="T^2", surrogate_gradients=True,
        defaults={**_OPTIONS, "topk": 2}, search_space={**_SPACE, "topk": {"choices": [1, 2, 3]}},
    ))


@hookimpl
def register_models(register):
    register(ModelSpec(
        "poh.refiner", "harness_poh.refiner:build_refiner", inputs=("image", "tokens", "token_pairs"),
        config="harness_poh.refiner:RefinerConfig",
        description="PoH refiner: a core backbone (vit, lm, encoder) whose block stack runs R times; outer "
                    "residual (ReZero), ACT halting with a ponder loss, router shared across layers",
    ))


@hookimpl
def register_tasks(register):
    register(TaskSpec(
        "sort", "harness_poh.sort:Sort", metrics=("element_accuracy", "perfect_sort", "loss"), causal=True,
        description="synthetic: sort a sequence of integers (x SEP sorted(x)), seeded, teacher forced; lm backbone",
    ))


@hookimpl
def register_metrics(register):
    register(MetricSpec("element_accuracy", "harness_poh.sort:element_accuracy", higher_is_better=True,
                        description="fraction of output positions predicted right (sort)"))
    register(MetricSpec("perfect_sort", "harness_poh.sort:perfect_sort", higher_is_better=True,
                        description="fraction of sequences with every output position right (sort)"))
