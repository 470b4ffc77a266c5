"""Where a distribution's code comes from: a checkout (its folder, git commit and dirty flag) or an
installed wheel. Used by the run manifest and by ``harness list plugins``; light (no torch).

The git state is read once per folder and process: the code a process runs is what it imported
when it started, so a later edit on disk must not change what its runs record.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

CORE_DIST = "harness"


@dataclass(frozen=True)
class Source:
    """``kind``: "checkout" (a folder, with git state when it is in a git work tree), "wheel"
    (installed into site-packages) or "runtime" (registered in-process, e.g. by a test)."""

    kind: str
    path: str | None = None
    commit: str | None = None       # full hash of HEAD; None outside git
    dirty: bool | None = None       # uncommitted changes (tracked or untracked) under ``path``
    diff_sha256: str | None = None  # of `git status` + `git diff HEAD` under ``path``: which dirt

    def describe(self) -> str:
        """One cell: ``/path @ 1a2b3c4 (dirty)``, ``installed wheel``."""
        if self.kind != "checkout":
            return "installed wheel" if self.kind == "wheel" else self.kind
        if self.commit is None:
            return f"{self.path} (not in git)"
        return f"{self.path} @ {self.commit[:7]}{' (dirty)' if self.dirty else ''}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _git(path: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@lru_cache(maxsize=None)
def git_state(folder: str) -> tuple[str | None, bool | None, str | None]:
    """(commit, dirty, diff digest) of the git work tree holding ``folder``, limited to ``folder``;
    (None, None, None) outside git."""
    path = Path(folder)
    commit = _git(path, "rev-parse", "HEAD")
    if not commit:
        return None, None, None
    status = _git(path, "status", "--porcelain", "--", ".") or ""
    diff = _git(path, "diff", "HEAD", "--", ".") or ""
    digest = hashlib.sha256((status + "\0" + diff).encode()).hexdigest() if status else None
    return commit.strip(), bool(status.strip()), digest


def _site_dirs() -> tuple[str, ...]:
    return tuple(p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages")))


def _direct_folder(dist: metadata.Distribution) -> Path | None:
    """The folder a ``pip install [-e] ./folder`` came from (PEP 610 direct_url.json)."""
    try:
        raw = dist.read_text("direct_url.json")
    except Exception:
        return None
    if not raw:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    url = info.get("url", "")
    if "dir_info" in info and url.startswith("file://"):
        return Path(url[len("file://"):])
    return None


def _module_folder(module: str) -> Path | None:
    """The folder holding top-level package ``module`` (found without importing it anew)."""
    top = module.partition(":")[0].split(".")[0]
    mod = sys.modules.get(top)
    origin = getattr(mod, "__file__", None)
    if origin is None:
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec else None
    if not origin:
        return None
    path = Path(origin).resolve()
    return path.parent.parent if path.name == "__init__.py" else path.parent


def _checkout(folder: Path) -> Source:
    commit, dirty, digest = git_state(str(folder))
    return Source("checkout", str(folder), commit, dirty, digest)


@lru_cache(maxsize=None)
def source_of(dist_name: str | None, module: str) -> Source:
    """The source of a distribution (by name) whose code is ``module`` ("pkg.plugin" or "pkg.mod:attr")."""
    dist = None
    if dist_name:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            dist = None
    folder = _direct_folder(dist) if dist is not None else None
    if folder is not None:
        return _checkout(folder)
    where = _module_folder(module)
    if where is None:
        return Source("runtime")
    if any(str(where).startswith(str(Path(site).resolve())) for site in _site_dirs()):
        return Source("wheel", str(where))
    return _checkout(where)  # on sys.path from a folder (a source tree, PYTHONPATH): a checkout


def core_source() -> Source:
    """Where the harness core itself runs from (an editable checkout or a wheel)."""
    return source_of(CORE_DIST, "harness")


def entry_point_dists() -> dict[str, tuple[str, str]]:
    """Entry point name -> (distribution name, module) of every ``harness`` entry point."""
    from harness.plugins import ENTRY_POINT_GROUP

    out: dict[str, tuple[str, str]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        out.setdefault(ep.name, (ep.dist.name if ep.dist else "", ep.value))
    return out


def plugin_sources() -> dict[str, Source]:
    """Every loaded third-party plugin (by entry point name) -> its source. Default plugins are
    the core's and share ``core_source()``."""
    from harness.plugins import plugin_infos

    dists = entry_point_dists()
    out: dict[str, Source] = {}
    for info in plugin_infos():
        if info.default or info.error:
            continue
        dist, module = dists.get(info.name, ("", info.module))
        out[info.name] = source_of(dist or None, module) if info.name in dists else Source("runtime")
    return out
