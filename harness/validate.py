"""``harness validate``: plan a suite (see harness.plan) and train nothing."""
from __future__ import annotations

from harness.plan import Plan, plan_suite
from harness.suite import Suite


def validate_suite(suite: Suite) -> dict[str, Plan]:
    """Every check a run makes before training, data included; raises SuiteError listing each problem."""
    return plan_suite(suite, check_data=True)


def describe_plan(plan: Plan) -> str | None:
    """``softmax: mlp_ratio = 2.188, params 59,976 (target 60,000, gap -0.04%)``, or None unmatched."""
    if plan.target is None:
        return None
    return (f"{plan.variant}: {plan.knob} = {plan.model_config[plan.knob]:.4g}, {plan.count} {plan.achieved:,} "
            f"(target {plan.target:,}, gap {plan.gap:+.2%})")
