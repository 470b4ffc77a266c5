"""``harness validate``: plan a suite (see harness.plan) and train nothing; ``--keys``: every suite key."""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from harness.plan import MIXER_ARGS, Plan, keyword_options, plan_suite
from harness.suite import SECTIONS, Suite, SuiteError, load_suite


@dataclass
class Validation:
    """A suite file's outcome: its plans when it has no problem, else every problem found."""

    suite: Suite | None
    plans: dict[str, Plan] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def validate_suite(suite: Suite, *, contract: bool = True) -> dict[str, Plan]:
    """Every check a run makes before training, data and the contract gate included; raises
    SuiteError listing each problem."""
    return plan_suite(suite, check_data=True, contract=contract)


def validate_file(path: str, overrides: Iterable[str] = (), *, contract: bool = True) -> Validation:
    """Every problem of a suite file in one pass: schema problems, then what planning finds in the
    rest of the suite (names, capabilities, data, budgets), then the device."""
    try:
        suite, problems = load_suite(path, list(overrides)), []
    except SuiteError as exc:
        suite, problems = exc.partial, list(exc.problems)
    if suite is None:
        return Validation(None, problems=problems)
    plans: dict[str, Plan] = {}
    try:
        plans = validate_suite(suite, contract=contract)
    except SuiteError as exc:
        problems += exc.problems
    problems += device_problems(suite)
    if problems:
        return Validation(suite, problems=list(dict.fromkeys(problems)))
    return Validation(suite, plans)


def device_problems(suite: Suite) -> list[str]:
    """``train.device = "cuda"`` where torch sees no CUDA device. Only validate asks: a run there
    fails at its start with the resolver's own message."""
    from harness.devices import resolve_device

    wanted = [("train.device", suite.train.device)]
    wanted += [(f"variants.{name}.train.device", v.train["device"]) for name, v in suite.variants.items()
               if "device" in v.train]
    problems = []
    for path, device in wanted:
        if not str(device).startswith("cuda"):
            continue
        try:
            resolve_device(device)
        except RuntimeError:
            problems.append(f"{path}: {device!r} but torch sees no CUDA device here; set it to \"auto\" (CUDA "
                            f"when there is one) or \"cpu\"")
    return problems


def describe_plan(plan: Plan) -> str | None:
    """``softmax: mlp_ratio = 2.188, params 59,976 (target 60,000, gap -0.04%)``, or None unmatched."""
    if plan.target is None:
        return None
    return (f"{plan.variant}: {plan.knob} = {plan.model_config[plan.knob]:.4g}, {plan.count} {plan.achieved:,} "
            f"(target {plan.target:,}, gap {plan.gap:+.2%})")


# --- harness validate --keys -------------------------------------------------------------------

Row = tuple[str, str, str]  # key, type, default


def _type_name(annotation: Any, default: Any = None) -> str:
    if annotation in (inspect.Parameter.empty, None, "") or annotation is dataclasses.MISSING:
        return "any" if default in (None, inspect.Parameter.empty) else type(default).__name__
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _section_rows(section: Any) -> list[Row]:
    rows = []
    for key, info in section.model_fields.items():
        default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
        rows.append((key, _type_name(info.annotation), default))
    return rows


def _config_rows(config: Any) -> list[Row]:
    rows = []
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        rows.append((f.name, _type_name(f.type), default))
    return rows


def _option_rows(fn: Any, skip: Iterable[str] = (), defaults: Mapping[str, Any] | None = None) -> list[Row]:
    """A constructor's keyword options; ``defaults`` (a mixer's registered ones) win over its own."""
    params = keyword_options(fn, skip)
    if params is None:
        return [("**options", "any", "(takes any key)")]
    rows = []
    for key, p in params.items():
        own = p.default
        default = (defaults or {}).get(key, own)
        shown = "required" if default is inspect.Parameter.empty else repr(default)
        rows.append((key, _type_name(p.annotation, default), shown))
    return rows


def _rows(make: Callable[[], list[Row]]) -> list[Row]:
    try:
        return make()
    except Exception as exc:  # a plugin's broken target: list everything else
        return [("?", "cannot load", f"{type(exc).__name__}: {exc}")]


def _model_rows(spec: Any) -> list[Row]:
    from harness.specs import load_target

    if spec.config is None:
        return [("**config", "any", "(no declared config: checked when the model is built)")]
    return _config_rows(load_target(spec.config))


def key_tables() -> list[tuple[str, list[Row]]]:
    """Every suite key, table by table: the typed tables, then each registered task's options, each
    model's config (``[model]`` and a variant's ``model``) and each mixer's options."""
    from harness.registry import get_registries

    regs = get_registries()
    tables = [(f"[{name}]" + (" and variants.<name>.train" if name == "train" else ""), _section_rows(section))
              for name, section in SECTIONS.items()]
    tables += [(f"[task] of task {s.name!r}", _rows(lambda s=s: _option_rows(s.load()))) for s in regs.tasks]
    tables += [(f"[model] and variants.<name>.model of model {s.name!r}", _rows(lambda s=s: _model_rows(s)))
               for s in regs.models]
    tables += [(f"variants.<name>.options of mixer {s.name!r}",
                _rows(lambda s=s: _option_rows(s.load(), MIXER_ARGS, s.defaults))) for s in regs.mixers]
    return tables


def format_keys() -> str:
    lines = ["Every suite key: type and default ('required' has none). Tables first, then the keys of each "
             "task, model and mixer the loaded plugins registered."]
    for title, rows in key_tables():
        lines.append(f"\n{title}")
        width = [max((len(r[i]) for r in rows), default=0) for i in range(2)]
        lines += [f"  {k:<{width[0]}}  {t:<{width[1]}}  {d}".rstrip() for k, t, d in rows] or ["  (none)"]
    return "\n".join(lines)
