"""Which device a run uses, and how it is named in logs, tags and bench headers; the CPU cores a
run may use, its torch threads, and whether other processes competed for those cores."""
from __future__ import annotations

import contextlib
import os
import platform
import time
from typing import Any, Iterator

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``None``/"auto" -> cuda when available, else cpu; "cuda" without CUDA is an error."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(device)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_label(device: Any = "auto", threads: int | None = None) -> str:
    """``cuda (NVIDIA H200)`` or ``cpu (AMD EPYC 7B13, 2 threads)``: the threads torch computes
    with (``threads`` when a run is about to set them)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({cpu_model()}, {threads or torch.get_num_threads()} threads)"


def _affinity() -> set[int]:
    """The ids of the cores this process may run on (containers, taskset)."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # macOS, Windows: every core
        return set(range(os.cpu_count() or 1))


def available_cores() -> int:
    """The cores this process may use (containers, taskset), not the machine's count."""
    return len(_affinity())


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """torch computes with ``threads`` intra-op threads (None: ``available_cores()``) inside the
    block and with the previous count after it; yields the count."""
    count = threads or available_cores()
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(before)


# Tolerated average load of other processes beyond the cores this run leaves free: system daemons
# and tick rounding (/proc/stat counts 10 ms ticks) stay under it, a competing process does not.
CONTENTION_SLACK_CORES = 0.25


def is_contended(other_busy_cores: float, threads: int, cores: int) -> bool:
    """Did others need more than the cores ``threads`` left free (plus the slack)?"""
    return other_busy_cores > max(cores - threads, 0) + CONTENTION_SLACK_CORES


def _busy_core_seconds(cpus: list[int]) -> float:
    """Busy seconds (everything but idle and iowait; steal included) of ``cpus`` since boot, by
    any process: /proc/stat through psutil."""
    import psutil

    per_cpu = psutil.cpu_times(percpu=True)
    fields = ("user", "nice", "system", "irq", "softirq", "steal")
    return sum(getattr(per_cpu[i], f, 0.0) for i in cpus if i < len(per_cpu) for f in fields)


def _own_cpu_seconds() -> float:
    import psutil

    times = psutil.Process().cpu_times()
    return times.user + times.system


class CoreContention:
    """Whether other processes competed for this process's cores while the ``with`` body ran.

    Measured: the busy time of the cores this process may run on (its affinity set) by every
    process, minus this process's own CPU time (all its threads: the model step, batches,
    MLflow's sampler), over the wall time, i.e. how many of our cores others kept busy on
    average (``other_busy_cores``). ``contended`` when that exceeds the cores the run's
    ``threads`` leave free by more than ``CONTENTION_SLACK_CORES``. Steal time (a hypervisor
    running another guest) counts as others' use.

    Not measured: a CPU quota (cgroup cpu.max) without pinning, which slows the run without
    showing as busy cores; bursts shorter than the run that average out; memory-bandwidth and
    cache contention from processes on other cores.
    """

    def __init__(self, threads: int):
        self.threads = threads
        self.cpus = sorted(_affinity())
        self.other_busy_cores = 0.0

    def __enter__(self) -> "CoreContention":
        self._start = (time.perf_counter(), _busy_core_seconds(self.cpus), _own_cpu_seconds())
        return self

    def __exit__(self, *exc: Any) -> None:
        wall0, busy0, own0 = self._start
        wall = time.perf_counter() - wall0
        others = (_busy_core_seconds(self.cpus) - busy0) - (_own_cpu_seconds() - own0)
        self.other_busy_cores = max(others, 0.0) / wall if wall > 0 else 0.0

    @property
    def contended(self) -> bool:
        return is_contended(self.other_busy_cores, self.threads, len(self.cpus))
