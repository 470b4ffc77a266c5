"""Throughput, memory, FLOPs and torch.profiler traces.

A library: the trainer (``[profile]``) and ``harness bench`` call it. Every CUDA-only path checks
the device first, so everything here also runs on a CPU-only machine.

Units: times in milliseconds, memory in MiB ("MB" in names), FLOPs as plain counts (a multiply-add
is 2 FLOPs, torch.utils.flop_counter's convention).
"""
from __future__ import annotations

import csv
import ctypes
import gc
import hashlib
import importlib.util
import io
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from harness.devices import cpu_model, resolve_device
from harness.flops import flop_counter

MB = 2**20


def _is_cuda(device: str | torch.device | None) -> bool:
    return torch.cuda.is_available() and resolve_device(device).type == "cuda"


def synchronize(device: str | torch.device | None) -> None:
    if _is_cuda(device):
        torch.cuda.synchronize(resolve_device(device))


# ---------------------------------------------------------------------------------------- timing

def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), q in [0, 1]."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(times: list[float]) -> dict[str, float]:
    """median, p20, p80, mean, std, min, max and reps of a list of times."""
    return {
        "median": statistics.median(times),
        "p20": quantile(times, 0.2),
        "p80": quantile(times, 0.8),
        "mean": statistics.fmean(times),
        "std": statistics.stdev(times) if len(times) > 1 else 0.0,
        "min": min(times),
        "max": max(times),
        "reps": float(len(times)),
    }


def time_callable(fn: Callable[[], Any], warmup: int = 3, reps: int = 10,
                  device: str | torch.device | None = "cpu", max_seconds: float | None = None) -> dict[str, float]:
    """Time ``fn()`` ``reps`` times after ``warmup`` untimed calls; milliseconds.

    Returns median, p20, p80, mean, std, min, max and reps. On CUDA each call is bracketed by
    CUDA events and the device is synchronised, so the time is the kernels' time, not the launch's.
    ``max_seconds`` caps the time spent on a slow ``fn`` (see ``time_interleaved``).
    """
    result = time_interleaved({"fn": fn}, warmup, reps, device, max_seconds)["fn"]
    if isinstance(result, BaseException):
        raise result
    return result


def time_interleaved(fns: dict[str, Callable[[], Any]], warmup: int = 3, reps: int = 10,
                     device: str | torch.device | None = "cpu", max_seconds: float | None = None,
                     min_reps: int = 3) -> dict[str, dict[str, float] | Exception]:
    """Time several callables in interleaved rounds (one call of each per round, the order rotating),
    so a load change on a shared machine hits all of them alike and their ratios stay fair.

    ``max_seconds`` bounds the time spent on one callable: a call slower than ``max_seconds / reps``
    gets a single warm-up, and timing stops once its timed calls add up to ``max_seconds`` with at
    least ``min_reps`` of them (the ``reps`` entry of its statistics says how many were taken).
    Returns each name's ``time_callable`` statistics, or the exception it raised; a callable that
    raises is dropped from later rounds and the others go on.
    """
    if reps < 1:
        raise ValueError("reps must be >= 1")
    budget = math.inf if max_seconds is None else max_seconds * 1e3
    time_once = _time_once_cuda if _is_cuda(device) else _time_once_cpu
    warm_left = dict.fromkeys(fns, warmup)
    times: dict[str, list[float]] = {name: [] for name in fns}
    failed: dict[str, Exception] = {}

    def finished(name: str) -> bool:
        ts = times[name]
        return name in failed or len(ts) >= reps or (len(ts) >= min(min_reps, reps) and sum(ts) >= budget)

    round_ = 0
    while active := [n for n in fns if not finished(n)]:
        shift = round_ % len(active)
        for name in active[shift:] + active[:shift]:
            try:
                if warm_left[name] > 0:
                    took = _time_once_cpu(lambda: (fns[name](), synchronize(device)))
                    warm_left[name] = 0 if took > budget / reps else warm_left[name] - 1
                else:
                    times[name].append(time_once(fns[name]))
            except Exception as exc:  # recorded for this callable; the others still run
                failed[name] = exc.with_traceback(None)  # frees the frames (and tensors) it holds
        round_ += 1
    return {name: failed[name] if name in failed else summarize(times[name]) for name in fns}


def _time_once_cpu(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _time_once_cuda(fn: Callable[[], Any]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def throughput(samples: int, tokens_per_sample: int, seconds: float) -> dict[str, float]:
    """samples/s and tokens/s of ``samples`` examples of ``tokens_per_sample`` tokens in ``seconds``."""
    return {"samples_per_s": samples / seconds, "tokens_per_s": samples * tokens_per_sample / seconds}


# ---------------------------------------------------------------------------------------- memory

def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def _glibc() -> Any:
    """glibc's allocator entry points (mallopt, malloc_trim), or None elsewhere (musl, macOS)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of handing it back to the OS at once.

    By default glibc serves every block above 128 KiB (a threshold that adapts up to 32 MiB, no
    further) with a fresh mmap and unmaps it on free, and trims a free heap top above 128 KiB, so
    each new activation is page-faulted in again, 4 KiB at a time. On this project's 2-core
    machines that made an exp over a 10 MiB score stack 4x slower than its arithmetic, and the
    33 MiB hidden maps of mop.edgewise's dense gate head twice as slow. Here every block comes
    from the heap (M_MMAP_MAX = 0) and up to 1 GiB of free heap top is kept (M_TRIM_THRESHOLD).
    torch's CPU tuning guide makes the same point and preloads jemalloc or tcmalloc instead.

    ``harness run``, ``tune`` and ``bench`` call this for every model alike;
    HARNESS_KEEP_FREED_MEMORY=0 turns it off. ``PeakMemory`` trims the heap on entry, so
    peak-memory deltas stay exact. Returns whether the setting took (False off glibc).
    """
    libc = _glibc()
    if os.environ.get("HARNESS_KEEP_FREED_MEMORY", "1") == "0" or libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**30))


def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MB


def _rss_high_water_mb() -> float:
    """Linux VmHWM (resettable, see _reset_rss_high_water); elsewhere ru_maxrss (process lifetime)."""
    kb = _proc_status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / MB if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB on Linux


def _reset_rss_high_water() -> bool:
    """Return freed heap to the OS, then reset VmHWM to the current RSS (Linux >= 4.0).

    Without malloc_trim, glibc keeps freed pages resident and a later call that reuses them
    would show no growth; without clear_refs the high-water mark covers the whole process life.
    """
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory while the ``with`` body runs.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensor memory, after resetting the peak stats).
    CPU: the process RSS high-water mark, VmHWM from /proc/self/status, reset on entry when the
    kernel allows it (``resettable``); otherwise ``resource.getrusage().ru_maxrss``, which covers
    the whole process life, so ``delta_mb`` is then only a lower bound.

    ``peak_mb`` is absolute; ``delta_mb`` is the growth above the level on entry: what one mixer
    call costs (``harness bench``) and a training run's ``peak_mem_mb`` (gradients, optimizer
    state, activations, batches; not the weights already on the device, nor the process's
    libraries). On CPU it is resident memory: pages first touched meanwhile (thread stacks) count.
    """

    def __init__(self, device: str | torch.device | None = "cpu"):
        self.device = resolve_device(device)
        self.cuda = _is_cuda(self.device)
        self.start_mb = self.peak_mb = 0.0
        self.resettable = True

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / MB
        else:
            self.resettable = _reset_rss_high_water()
            self.start_mb = current_rss_mb()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.peak_mb = self.read()

    def read(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / MB
        return max(_rss_high_water_mb(), current_rss_mb())

    @property
    def delta_mb(self) -> float:
        return max(self.peak_mb - self.start_mb, 0.0)


# ---------------------------------------------------------------------------------------- FLOPs

def flops_of(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention; elementwise ops count 0).

    Causal attention is counted as full attention, as torch's counter does.
    """
    with flop_counter() as counter:  # harness.flops adds the CPU SDPA kernels torch leaves out
        fn()
    return int(counter.get_total_flops())


def cache_dir() -> Path:
    """``$HARNESS_CACHE_DIR``, else ``$XDG_CACHE_HOME/harness``, else ``~/.cache/harness``."""
    if os.environ.get("HARNESS_CACHE_DIR"):
        return Path(os.environ["HARNESS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "harness"


def measure_matmul_flops(size: int = 1024, reps: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best-of-``reps`` FLOP/s of a ``size`` x ``size`` matmul on the CPU with the current threads."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pool start, first-touch of pages
    best = min(_time_once_cpu(lambda: torch.mm(a, b)) for _ in range(reps)) / 1e3
    return 2 * size**3 / best


def cpu_peak_flops(dtype: torch.dtype = torch.float32, size: int = 1024) -> float:
    """The CPU's achievable matmul FLOP/s, measured once per (cpu model, threads, dtype, torch)
    and cached in ``cache_dir()/cpu_peak_flops.json``."""
    key = f"{cpu_model()}|threads={torch.get_num_threads()}|{dtype}|torch={torch.__version__}|n={size}"
    path = cache_dir() / "cpu_peak_flops.json"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = measure_matmul_flops(size, dtype=dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so two processes measuring at once never leave a torn file.
        tmp = path.with_suffix(f".{os.getpid()}.{hashlib.md5(key.encode()).hexdigest()[:6]}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        tmp.replace(path)
    return float(cache[key])


# Dense (no sparsity) datasheet peaks in TFLOP/s. "fp32" is the non-tensor-core rate (torch's
# default float32 matmul precision "highest"); "tf32" applies when it is "high" or "medium".
# More specific names come first: the first pattern found in the device name wins.
_GPU_PEAKS_CSV = """\
pattern,bf16,fp16,tf32,fp32
GH200,989.4,989.4,494.7,66.9
H200,989.4,989.4,494.7,66.9
H100 PCIe,756.0,756.0,378.0,51.2
H100 NVL,835.0,835.0,417.5,60.0
H100,989.4,989.4,494.7,66.9
B200,2250.0,2250.0,1100.0,80.0
A100,312.0,312.0,156.0,19.5
A10G,70.0,70.0,35.0,31.2
A10,125.0,125.0,62.5,31.2
L40S,362.0,362.0,183.0,91.6
L4,121.0,121.0,60.0,30.3
RTX 4090,165.2,165.2,82.6,82.6
RTX 3090,71.0,71.0,35.6,35.6
V100,,125.0,,15.7
T4,,65.0,,8.1
"""
GPU_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    (row["pattern"], {k: float(v) for k, v in row.items() if k != "pattern" and v})
    for row in csv.DictReader(io.StringIO(_GPU_PEAKS_CSV))
]

_DTYPE_KEYS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def _dtype_key(dtype: torch.dtype | str) -> str:
    key = _DTYPE_KEYS.get(dtype, dtype) if isinstance(dtype, torch.dtype) else dtype
    if key == "fp32" and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return str(key)


def gpu_peak_flops(name: str, dtype: torch.dtype | str = torch.bfloat16) -> tuple[float | None, bool]:
    """Datasheet peak FLOP/s of the GPU called ``name`` (as torch.cuda.get_device_name reports it)
    for ``dtype``; ``(None, True)`` when the GPU or the dtype is not in the table. Always flagged
    estimated: datasheet numbers, not measured, and clocks vary by board."""
    key = _dtype_key(dtype)
    for pattern, peaks in GPU_PEAK_TFLOPS:
        if pattern.lower() in name.lower():
            tflops = peaks.get(key)
            return (tflops * 1e12 if tflops is not None else None), True
    return None, True


def device_peak_flops(device: str | torch.device | None,
                      dtype: torch.dtype = torch.float32) -> tuple[float | None, bool]:
    """``(peak FLOP/s, estimated)``: a measured (cached) matmul probe on CPU, the table on GPU."""
    if _is_cuda(device):
        return gpu_peak_flops(torch.cuda.get_device_name(resolve_device(device)), dtype)
    if torch.device(device or "cpu").type == "cuda":
        return None, True  # asked for cuda on a machine without it
    return cpu_peak_flops(dtype), False


def mfu(flops_per_s: float, device: str | torch.device | None,
        dtype: torch.dtype = torch.float32) -> tuple[float | None, bool]:
    """``(model FLOPs utilisation in [0, 1], estimated)``; None when the peak is unknown."""
    peak, estimated = device_peak_flops(device, dtype)
    return (flops_per_s / peak if peak else None), estimated


# ---------------------------------------------------------------------------------------- traces

def profile_steps(step_fn: Callable[[], Any], steps: int = 3, out_dir: str | Path = ".",
                  wait: int = 1, warmup: int = 1, row_limit: int = 40) -> dict[str, str]:
    """Run ``step_fn`` under torch.profiler (CPU, plus CUDA when available) for
    ``wait + warmup + steps`` calls, recording the last ``steps``.

    Writes ``trace.json`` (open in chrome://tracing or Perfetto) and ``op_table.txt`` (operators
    sorted by self CUDA time on GPU, self CPU time otherwise) to ``out_dir``; returns their paths.
    """
    from torch.profiler import ProfilerActivity, profile, schedule

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    paths = {"trace": str(out / "trace.json"), "table": str(out / "op_table.txt")}

    def export(prof: Any) -> None:
        prof.export_chrome_trace(paths["trace"])
        sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        Path(paths["table"]).write_text(prof.key_averages().table(sort_by=sort_by, row_limit=row_limit))

    with profile(activities=activities, schedule=schedule(wait=wait, warmup=warmup, active=steps, repeat=1),
                 on_trace_ready=export, record_shapes=True, profile_memory=True) as prof:
        for _ in range(wait + warmup + steps):
            step_fn()
            synchronize("cuda" if cuda else "cpu")
            prof.step()
    return paths


def gpu_system_metrics_available() -> bool:
    """MLflow logs GPU utilisation/memory as system metrics when nvidia-ml-py (module ``pynvml``)
    is importable and a CUDA device is present."""
    return importlib.util.find_spec("pynvml") is not None and torch.cuda.is_available()
