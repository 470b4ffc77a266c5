"""Where studies live: ``sqlite:///mlruns/optuna.db`` by default, any SQLAlchemy URL
(``postgresql+psycopg://...`` with the ``ray`` extra's psycopg 3), or a path ending in ``.log`` / ``.journal`` for an Optuna journal file
(NFS-friendly). Several processes or machines share a study by pointing at the same storage."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna

from harness.redact import redact
from harness.tune.errors import TuneError

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
JOURNAL_SUFFIXES = (".log", ".journal")
SQLITE_PREFIX = "sqlite:///"


def display_url(url: str) -> str:
    """A storage URL with its password hidden, for printing and logging (``harness.redact``)."""
    return redact(url)


def is_journal(url: str) -> bool:
    return "://" not in url and url.endswith(JOURNAL_SUFFIXES)


def _journal_storage(path: str, must_exist: bool) -> Any:
    if must_exist and not Path(path).exists():
        raise TuneError(f"storage {path}: no such journal file")
    try:
        from optuna.storages.journal import JournalFileBackend, JournalStorage
    except ImportError:  # optuna < 4.0
        from optuna.storages import JournalFileStorage as JournalFileBackend  # type: ignore[no-redef]
        from optuna.storages import JournalStorage  # type: ignore[no-redef]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(path))


def _with_driver(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy; where only psycopg 3 is installed (the ``ray``
    extra), use it rather than fail on the missing module."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _rdb_storage(url: str, must_exist: bool) -> Any:
    engine_kwargs: dict[str, Any] = {}
    shown, url = url, _with_driver(url)
    if url.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": 10}}  # an unreachable host fails in seconds
    if url.startswith(SQLITE_PREFIX):
        path = url[len(SQLITE_PREFIX):]
        if must_exist and not Path(path).exists():
            raise TuneError(f"storage {url}: no such database")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several workers write to one file
    last: Exception | None = None
    for attempt in range(5):  # processes that start together race to create the schema
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised below with the URL
            last = exc
            time.sleep(0.5 * (attempt + 1))
    raise TuneError(f"--storage {display_url(shown)}: cannot open: {type(last).__name__}: "
                    f"{redact(str(last).splitlines()[0] if str(last) else '')}")


def open_storage(url: str | None = None, *, must_exist: bool = False) -> Any:
    """An Optuna storage for a URL: RDB (sqlite, postgresql, ...) or a journal file. ``must_exist``
    raises TuneError for a sqlite or journal file that is not there yet instead of creating it."""
    url = url or DEFAULT_STORAGE
    if is_journal(url):
        return _journal_storage(url, must_exist)
    if "://" not in url:
        raise TuneError(f"--storage {url}: use a database URL (sqlite:///mlruns/optuna.db, "
                        f"postgresql://user@host/db) or a journal file path ending in .log or .journal")
    return _rdb_storage(url, must_exist)
