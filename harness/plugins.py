"""The plugin manager: the core's default plugins first, then every entry point in group ``harness``.

Each entry point loads in its own try/except, so one broken plugin is reported (``harness list
plugins``) while everything else keeps working. Environment switches:

- ``HARNESS_STRICT_PLUGINS=1`` re-raises a plugin's import error instead of reporting it;
- ``HARNESS_PLUGINS=a,b`` loads only the named third-party plugins (``HARNESS_PLUGINS=`` loads none).
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from importlib import metadata

import pluggy

from harness import hookspecs

# (plugin name, module): the core's own features, registered the way third parties register.
DEFAULT_PLUGINS = (
    ("harness.mixers", "harness.default_plugins.mixers"),
    ("harness.models", "harness.default_plugins.models"),
    ("harness.tasks", "harness.default_plugins.tasks"),
    ("harness.metrics", "harness.default_plugins.metrics"),
    ("harness.commands", "harness.default_plugins.commands"),
    ("harness.reporting", "harness.default_plugins.reporting"),
    ("harness.tracking", "harness.tracking.plugin"),
)
ENTRY_POINT_GROUP = "harness"


@dataclass
class PluginInfo:
    name: str
    module: str
    version: str
    default: bool
    error: str | None = None


_pm: pluggy.PluginManager | None = None
_infos: list[PluginInfo] = []


def _core_version() -> str:
    from harness import __version__

    return __version__


def _allowed() -> set[str] | None:
    raw = os.environ.get("HARNESS_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def strict() -> bool:
    """``HARNESS_STRICT_PLUGINS=1``: a plugin's error is raised, not reported and skipped."""
    return os.environ.get("HARNESS_STRICT_PLUGINS", "") not in ("", "0", "false", "False")


def _report(info: PluginInfo) -> None:
    print(f"harness: plugin {info.name!r} failed to load and is skipped: {info.error} "
          f"(HARNESS_STRICT_PLUGINS=1 shows the traceback)", file=sys.stderr)


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loaded once."""
    global _pm
    if _pm is None:
        _pm, infos = _load()
        _infos[:] = infos
    return _pm


def plugin_infos() -> list[PluginInfo]:
    get_plugin_manager()
    return list(_infos)


def reset() -> None:
    """Forget the loaded plugins and registries (tests and long-lived sessions)."""
    global _pm
    _pm = None
    _infos.clear()
    from harness import registry

    registry.reset()


def register(plugin: object, name: str | None = None) -> str:
    """Register a plugin object at run time (tests, notebooks); returns its name. Registries refill."""
    from harness import registry

    name = get_plugin_manager().register(plugin, name=name) or "temporary"
    _infos.append(PluginInfo(name, repr(plugin), "", default=False))
    registry.reset()
    return name


def unregister(plugin: object, name: str) -> None:
    from harness import registry

    get_plugin_manager().unregister(plugin)
    _infos[:] = [i for i in _infos if i.name != name]
    registry.reset()


def _load() -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    pm = pluggy.PluginManager("harness")
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    for name, module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=name)
        infos.append(PluginInfo(name, module_name, _core_version(), default=True))

    allowed = _allowed()
    seen: set[str] = set()
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist_name = ep.dist.name if ep.dist else ""
        if ep.name in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(ep.name)
        if allowed is not None and ep.name not in allowed and dist_name not in allowed:
            continue
        info = PluginInfo(ep.name, ep.value, ep.dist.version if ep.dist else "", default=False)
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the harness down
            if strict():
                raise
            info.error = f"{type(exc).__name__}: {exc}"
            _report(info)
        infos.append(info)
    return pm, infos


def mark_broken(plugin_name: str, error: str) -> None:
    """Record a plugin whose hook raised (e.g. during registration) after it imported fine."""
    for info in _infos:
        if info.name == plugin_name:
            if info.error is None:
                info.error = error
                _report(info)
            return
