"""The data files a task read, with their content hashes, for the run manifest.

A task calls ``record(path, self)`` where it opens a data file (a CIFAR batch, a corpus, a BEIR
file, a WAV). ``plan.build_task`` tells this module which task name and options an instance was
built for, so the tracking plugin can ask ``files_for(run.task, run.task_options)`` for the files
of exactly that task: a process that runs several suites (tests, notebooks) does not mix their
files. Tasks read lazily (``cached_property``), so the files are known once a run has trained,
which is when the manifest is written.

Hashes are sha256 of the bytes, computed once per (path, size, mtime) in a process: a 160 MB
CIFAR folder is hashed once however many runs read it. Light at import (no torch).
"""
from __future__ import annotations

import hashlib
import json
import os
import weakref
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20

# (resolved path, size, mtime_ns) -> sha256 hex
_hash_cache: dict[tuple[str, int, int], str] = {}
# task instance -> its key (task name + options); weak, so a finished suite's task is freed
_keys: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
# task key -> {path as the task opened it: sha256}; the latest read of a path wins
_files: dict[str | None, dict[str, str]] = {}


def task_key(name: str, options: dict[str, Any]) -> str:
    return json.dumps([name, options], sort_keys=True, default=str)


def register_task(task: Any, name: str, options: dict[str, Any]) -> None:
    """Called where a task is built from a suite: the files ``task`` reads belong to (name, options)."""
    try:
        _keys[task] = task_key(name, options)
    except TypeError:  # a task object without weakref support: its files go to the unkeyed set
        pass


def sha256(path: str | os.PathLike[str]) -> str:
    """The file's sha256, cached by path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    cached = _hash_cache.get(key)
    if cached is None:
        digest = hashlib.sha256()
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
        cached = _hash_cache[key] = digest.hexdigest()
    return cached


def record(path: str | os.PathLike[str], owner: Any = None) -> None:
    """Record that ``owner`` (the task instance) read ``path``. Never raises: a file that cannot be
    hashed is recorded with its error, since the task itself reports unreadable data."""
    try:
        digest = sha256(path)
    except OSError as exc:
        digest = f"unreadable: {type(exc).__name__}"
    key = _keys.get(owner) if owner is not None else None
    _files.setdefault(key, {})[os.path.normpath(str(path))] = digest


def files_for(name: str, options: dict[str, Any]) -> dict[str, str]:
    """{path: sha256} of every file the task built for (name, options) has read in this process."""
    return dict(sorted(_files.get(task_key(name, options), {}).items()))


def current_hashes(paths: list[str], cwd: str | os.PathLike[str] | None = None) -> dict[str, str | None]:
    """What each path holds now (relative paths from ``cwd``, default the working directory);
    None for a file that is gone."""
    out: dict[str, str | None] = {}
    for path in paths:
        p = Path(path) if os.path.isabs(path) or cwd is None else Path(cwd) / path
        try:
            out[path] = sha256(p)
        except OSError:
            out[path] = None
    return out


def digest(files: dict[str, str]) -> str:
    """One sha256 over every (path, hash) pair: a short param that changes when any file does."""
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()
