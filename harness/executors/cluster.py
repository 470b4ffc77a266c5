"""Connecting to Ray, for suites and for tuning: which cluster, how big, and a one-line error for
each way it can go wrong (Ray not installed, nobody answering at --address, a version mismatch).

Where a run goes:

- ``--address ADDR``: the cluster there (``ray start --head`` printed it; ``ray://host:10001`` is
  Ray Client);
- no address: ``$RAY_ADDRESS``, else the cluster ``ray start`` last started on this machine, else
  a new local one with every core (Ray's own rule for ``ray.init()``);
- ``local=True`` (``--jobs N`` alone): always a new, private local cluster with this process's cores.

A process already connected (``ray.init`` called by a notebook or a test) keeps its connection and
keeps it open afterwards; a cluster this module started it shuts down.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from dataclasses import dataclass
from typing import Any, Iterator

from harness.redact import redact

INSTALL_HINT = "pip install -e '.[ray]'"
CONNECT_TIMEOUT_S = 5.0
# `ray start --head` turns on token authentication; a client that does not send the token is
# refused with a bare "Failed to connect".
AUTH_HINT = ("if the cluster uses token authentication (Ray's default for `ray start --head`), set "
             "RAY_AUTH_MODE=token here, with the head's token in ~/.ray/auth_token or $RAY_AUTH_TOKEN")


class ExecutorError(Exception):
    """A problem with the executor or its cluster, in one line for the user (no traceback)."""


def require_ray(why: str) -> Any:
    """The ``ray`` module, or ExecutorError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"{why} needs Ray, which is not installed here: {INSTALL_HINT}") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port`` or ``ray://host:port``; None for "auto", "local" and the like."""
    bare = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = bare.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str) -> None:
    """Fail in seconds, not after Ray's minute of retries, when nothing listens at ``address``."""
    where = _host_port(address)
    if where is None:
        return
    try:
        with socket.create_connection(where, timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ExecutorError(f"--address {redact(address)}: no Ray cluster answers there "
                            f"({exc.strerror or type(exc).__name__}); start one with `ray start --head` "
                            f"and pass the address it prints") from None


@dataclass
class Cluster:
    """The connected cluster: what it has, and whether this process started it."""

    ray: Any
    address: str
    nodes: int
    cpus: float
    gpus: float
    largest_node: dict[str, float]     # the most CPUs and GPUs any one node has
    started_here: bool

    def describe(self) -> str:
        where = "a local Ray cluster" if self.started_here else f"the Ray cluster at {redact(self.address)}"
        return (f"{where}: {self.nodes} node(s), {_amount(self.cpus)} CPU(s), {_amount(self.gpus)} GPU(s)")

    def capacity(self, num_cpus: float, num_gpus: float) -> int:
        """How many tasks asking ``num_cpus`` / ``num_gpus`` fit at once (at least 1)."""
        fits = [math.floor(self.cpus / num_cpus + 1e-9)] if num_cpus else []
        fits += [math.floor(self.gpus / num_gpus + 1e-9)] if num_gpus else []
        return max(1, min(fits) if fits else 1)

    def check_fits(self, num_cpus: float, num_gpus: float) -> None:
        """A task no node can hold would wait for ever: say so instead."""
        if (num_cpus > self.largest_node["CPU"] + 1e-9) or (num_gpus > self.largest_node["GPU"] + 1e-9):
            raise ExecutorError(
                f"[resources] asks {_amount(num_cpus)} CPU(s) and {_amount(num_gpus)} GPU(s) per run, but no node "
                f"of {self.describe().split(': ', 1)[0]} has that many (the largest: "
                f"{_amount(self.largest_node['CPU'])} CPU(s), {_amount(self.largest_node['GPU'])} GPU(s)); "
                f"lower [resources] or add a node")


def _amount(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _describe(ray: Any, started_here: bool) -> Cluster:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    largest = {"CPU": max((n["Resources"].get("CPU", 0.0) for n in nodes), default=0.0),
               "GPU": max((n["Resources"].get("GPU", 0.0) for n in nodes), default=0.0)}
    address = getattr(ray.get_runtime_context(), "gcs_address", "") or ""
    return Cluster(ray, address or "", len(nodes), float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0)),
                   largest, started_here)


def _existing(address: str | None) -> str | None:
    """The cluster ``ray.init(address)`` would join, or None where it would start a new one (Ray's
    rule: $RAY_ADDRESS, else the cluster `ray start` last started here)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(address)
    except Exception:  # noqa: BLE001 - private API: when in doubt, let ray.init decide and join
        return address or "auto"


def _init(ray: Any, address: str | None, local_cpus: int | None) -> bool:
    """ray.init for the case at hand; True when it started a cluster of its own."""
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if local_cpus is None and _existing(address) is not None:
        ray.init(address=address, **quiet)
        return False
    # A cluster of our own (--jobs, or no cluster to join): no dashboard server, gone when we are.
    cpus = {"num_cpus": local_cpus} if local_cpus is not None else {}
    ray.init(address="local", include_dashboard=False, **cpus, **quiet)
    return True


@contextlib.contextmanager
def connect(address: str | None = None, *, local_cpus: int | None = None, why: str = "--executor ray"
            ) -> Iterator[Cluster]:
    """Connected to a Ray cluster for the block (see the module docstring); ``local_cpus``: start a
    private local cluster with that many CPUs (``--jobs``)."""
    ray = require_ray(why)
    if ray.is_initialized():
        yield _describe(ray, started_here=False)
        return
    if address:
        check_reachable(address)
    try:
        started = _init(ray, address, local_cpus)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        _shutdown(ray)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = f"--address {redact(address)}" if address else "Ray"
        hint = f"; {AUTH_HINT}" if "RAY_AUTH_MODE" not in os.environ and "connect" in first.lower() else ""
        raise ExecutorError(f"{where}: cannot connect: {redact(first)[:300]}{hint}") from None
    except BaseException:  # Ctrl-C while connecting
        _shutdown(ray)
        raise
    try:
        yield _describe(ray, started_here=started)
    finally:
        _shutdown(ray)


def _shutdown(ray: Any) -> None:
    """Disconnect (and stop a cluster this process started); never masks the error on the way out."""
    with contextlib.suppress(Exception):
        ray.shutdown()
