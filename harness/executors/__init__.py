"""Where a suite's runs train. The runner (the driver) plans, resumes, records and reports; an
executor only trains the runs it is handed and reports each one back.

- ``local`` (default, ``local.py``): one run at a time in this process; needs nothing extra.
- ``ray`` (``ray_runs.py``): each (variant, seed) a Ray task with the suite's ``[resources]``, on
  the cluster at ``--address``; ``--jobs N`` alone runs N at once on a private local Ray cluster
  (one code path for one machine and many). Needs the ``ray`` extra: ``pip install -e .[ray]``.

Shared by both and by tuning: ``cluster.py`` (connecting to Ray, one-line errors),
``resources.py`` (CPUs, GPUs and torch threads per task), ``remote.py`` (what a worker runs).
"""
from __future__ import annotations

from typing import Any

from harness.executors.cluster import ExecutorError, require_ray
from harness.executors.local import LocalExecutor

EXECUTORS = ("local", "ray")


def executor_for(name: str = "local", *, address: str | None = None, jobs: int | None = None) -> Any:
    """The executor for ``--executor NAME [--address ADDR] [--jobs N]``; ExecutorError for a bad
    combination, or for Ray asked for where it is not installed."""
    if name not in EXECUTORS:
        raise ExecutorError(f"--executor {name}: no such executor; choose one of {', '.join(EXECUTORS)}")
    if jobs is not None and jobs < 1:
        raise ExecutorError(f"--jobs {jobs}: must be at least 1")
    if address and name != "ray":
        raise ExecutorError("--address names a Ray cluster: add --executor ray")
    if name == "local" and (jobs or 1) == 1:
        return LocalExecutor()
    require_ray("--executor ray" if name == "ray" else f"--jobs {jobs}")
    from harness.executors.ray_runs import RayExecutor

    # --jobs alone: a private local cluster; --executor ray: the cluster at --address (or Ray's default).
    return RayExecutor(address=address, jobs=jobs, private=name == "local")


__all__ = ["EXECUTORS", "ExecutorError", "LocalExecutor", "executor_for", "require_ray"]
