"""What differs between a run's manifest and the environment it would be re-run in.

Blocking differences (``Difference.blocking``) make ``harness reproduce`` refuse without
``--allow-drift``: versions (python, torch, numpy, harness, each plugin the run had), the git commit,
dirty flag and uncommitted changes of the project and of each plugin checkout, the content of every
data file the run read, and the device type. Informational ones (the OS string, a plugin installed
since) are listed and do not block.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Difference:
    entry: str          # e.g. "versions.torch", "sources.poh.commit", "data_files[data/corpus.txt]"
    recorded: Any
    now: Any
    blocking: bool = True

    def line(self) -> str:
        tag = "" if self.blocking else " (informational)"
        return f"{self.entry}: recorded {_show(self.recorded)}, now {_show(self.now)}{tag}"


def _show(value: Any) -> str:
    if value is None:
        return "absent"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]    # a sha256: enough to tell two apart
    if isinstance(value, str) and len(value) == 40 and all(c in "0123456789abcdef" for c in value):
        return value[:10]    # a git commit
    return str(value)


def _versions(recorded: dict[str, Any], now: dict[str, Any]) -> list[Difference]:
    out = [Difference(f"versions.{key}", recorded.get(key), now.get(key))
           for key in ("python", "torch", "numpy", "harness") if recorded.get(key) != now.get(key)]
    was, has = recorded.get("plugins", {}), now.get("plugins", {})
    out += [Difference(f"versions.plugin.{name}", version, has.get(name))
            for name, version in sorted(was.items()) if has.get(name) != version]
    out += [Difference(f"versions.plugin.{name}", None, has[name], blocking=False)
            for name in sorted(set(has) - set(was))]
    return out


def _sources(recorded: dict[str, Any], now: dict[str, Any]) -> list[Difference]:
    out: list[Difference] = []
    for name, was in sorted(recorded.items()):
        has = now.get(name)
        if has is None:
            continue  # a plugin that is gone already shows as a version difference
        if was.get("kind") != has.get("kind"):
            out.append(Difference(f"sources.{name}.kind", was.get("kind"), has.get("kind")))
            continue
        for key in ("commit", "dirty", "diff_sha256"):
            if was.get(key) != has.get(key):
                entry = "uncommitted changes" if key == "diff_sha256" else key
                out.append(Difference(f"sources.{name}.{entry}", was.get(key), has.get(key)))
    return out


def _data(recorded: dict[str, str]) -> list[Difference]:
    """Each recorded file as a re-run here would read it (a relative path from the working directory)."""
    from harness.data_files import current_hashes

    now = current_hashes(list(recorded))
    return [Difference(f"data_files[{path}]", digest, now[path]) for path, digest in recorded.items()
            if now[path] != digest]


def _device(recorded: dict[str, Any]) -> list[Difference]:
    import torch

    if recorded.get("type") == "cuda" and not torch.cuda.is_available():
        return [Difference("device", recorded.get("label"), "no CUDA device")]
    return []


def differences(manifest: dict[str, Any]) -> list[Difference]:
    """Every entry of ``manifest`` that differs from this process's environment."""
    from harness.manifest.environment import system, versions
    from harness.manifest.sources import core_source, plugin_sources

    now_sources = {"harness": core_source().as_dict(), **{n: s.as_dict() for n, s in plugin_sources().items()}}
    out = _versions(manifest.get("versions", {}), versions())
    out += _sources(manifest.get("sources", {}), now_sources)
    out += _data(manifest.get("data_files", {}))
    out += _device(manifest.get("device", {}))
    was_os, now_os = manifest.get("system", {}).get("os"), system()["os"]
    if was_os != now_os:
        out.append(Difference("system.os", was_os, now_os, blocking=False))
    return out


def data_differences(recorded: dict[str, str], read: dict[str, str]) -> list[Difference]:
    """After a re-run: the files it read against the recorded ones (a file read by one only, or changed)."""
    return [Difference(f"data_files[{path}]", recorded.get(path), read.get(path))
            for path in sorted(set(recorded) | set(read)) if recorded.get(path) != read.get(path)]
