"""Named registries filled through the registration hooks; the host owns the names."""
from __future__ import annotations

import difflib
from dataclasses import replace
from typing import Any, Generic, Iterator, TypeVar

from harness.specs import ComponentSpec, MetricSpec, MixerSpec, ModelSpec, TaskSpec

S = TypeVar("S")


class UnknownNameError(KeyError):
    """``Unknown mixer 'sofmax'. Did you mean: softmax?``"""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateNameError(ValueError):
    pass


def suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if close:
        return f" Did you mean: {', '.join(close)}?"
    shown = ", ".join(sorted(choices)[:12])
    return f" Available: {shown}." if choices else " None is registered."


class Registry(Generic[S]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._specs: dict[str, S] = {}

    def add(self, spec: S, plugin: str, version: str) -> None:
        key = self._key(spec)
        if key in self._specs:
            other = self._specs[key].plugin  # type: ignore[attr-defined]
            raise DuplicateNameError(
                f"{self.kind} {key!r} is registered twice: by plugin {other!r} and by plugin {plugin!r}. "
                f"Uninstall one of them or restrict loading with HARNESS_PLUGINS."
            )
        self._specs[key] = replace(spec, plugin=plugin, plugin_version=version)  # type: ignore[type-var]

    @staticmethod
    def _key(spec: Any) -> str:
        return f"{spec.kind}:{spec.name}" if isinstance(spec, ComponentSpec) else spec.name

    def get(self, name: str) -> S:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownNameError(f"Unknown {self.kind} {name!r}.{suggest(name, list(self._specs))}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[S]:
        return iter(sorted(self._specs.values(), key=self._key))

    def __len__(self) -> int:
        return len(self._specs)

    def names(self) -> list[str]:
        return sorted(self._specs)


class Registries:
    def __init__(self) -> None:
        self.mixers: Registry[MixerSpec] = Registry("mixer")
        self.models: Registry[ModelSpec] = Registry("model")
        self.tasks: Registry[TaskSpec] = Registry("task")
        self.metrics: Registry[MetricSpec] = Registry("metric")
        self.components: Registry[ComponentSpec] = Registry("component")

    def component(self, kind: str, name: str) -> ComponentSpec:
        return self.components.get(f"{kind}:{name}")


_registries: Registries | None = None

_HOOKS = {
    "register_mixers": ("mixers", MixerSpec),
    "register_models": ("models", ModelSpec),
    "register_tasks": ("tasks", TaskSpec),
    "register_metrics": ("metrics", MetricSpec),
    "register_components": ("components", ComponentSpec),
}


def get_registries() -> Registries:
    """All registries, filled from every loaded plugin on first use."""
    global _registries
    if _registries is None:
        _registries = _build()
    return _registries


def reset() -> None:
    global _registries
    _registries = None


def _build() -> Registries:
    from harness import plugins

    pm = plugins.get_plugin_manager()
    versions = {info.name: info.version for info in plugins.plugin_infos()}
    regs = Registries()
    for hook_name, (attr, spec_type) in _HOOKS.items():
        registry: Registry[Any] = getattr(regs, attr)
        # Call each implementation ourselves so every spec is attributed to its plugin and a
        # plugin that raises while registering is reported without hiding the others.
        for impl in getattr(pm.hook, hook_name).get_hookimpls():  # registration order: core first
            plugin = impl.plugin_name

            def register(spec: Any, _plugin: str = plugin, _registry: Registry[Any] = registry,
                         _type: type = spec_type) -> None:
                if not isinstance(spec, _type):
                    raise TypeError(f"{hook_name} expects {_type.__name__}, got {type(spec).__name__}")
                _registry.add(spec, _plugin, versions.get(_plugin, ""))

            try:
                impl.function(register=register)
            except Exception as exc:  # includes DuplicateNameError: the later plugin's spec is refused
                if plugins.strict():
                    raise
                plugins.mark_broken(plugin, f"{hook_name}: {type(exc).__name__}: {exc}")
    return regs


def mixer(name: str) -> MixerSpec:
    return get_registries().mixers.get(name)


def model(name: str) -> ModelSpec:
    return get_registries().models.get(name)


def task(name: str) -> TaskSpec:
    return get_registries().tasks.get(name)


def metric(name: str) -> MetricSpec:
    return get_registries().metrics.get(name)


def metric_higher_is_better(metric: str) -> bool:
    """Direction of a suite metric such as ``"test/accuracy"`` (split prefix optional)."""
    return get_registries().metrics.get(metric.rpartition("/")[2]).higher_is_better
