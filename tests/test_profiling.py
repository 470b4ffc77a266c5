"""harness.profiling: FLOPs, timing, memory, peak-FLOPs cache and table, profiler traces."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from harness import profiling
from harness.devices import resolve_device

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_flops_of_linear_is_two_b_in_out():
    layer = torch.nn.Linear(16, 8, bias=False)
    x = torch.randn(5, 16)
    assert profiling.flops_of(lambda: layer(x)) == 2 * 5 * 16 * 8


def test_flops_of_counts_sdpa_on_cpu():
    # torch's counter has no formula for the CPU SDPA kernel; profiling adds one.
    q = torch.randn(2, 4, 16, 8)
    assert profiling.flops_of(lambda: F.scaled_dot_product_attention(q, q, q)) == 2 * (2 * 2 * 4 * 16 * 16 * 8)


def test_time_callable_returns_ordered_quantiles():
    stats = profiling.time_callable(lambda: torch.randn(64, 64) @ torch.randn(64, 64), warmup=1, reps=7)
    assert 0 < stats["min"] <= stats["p20"] <= stats["median"] <= stats["p80"] <= stats["max"]
    assert stats["reps"] == 7


def test_time_interleaved_records_a_failure_and_goes_on():
    calls = []

    def broken():
        raise RuntimeError("boom")

    results = profiling.time_interleaved({"ok": lambda: calls.append(1), "broken": broken}, warmup=1, reps=3)
    assert results["ok"]["reps"] == 3 and len(calls) == 4
    assert isinstance(results["broken"], RuntimeError)
    with pytest.raises(RuntimeError, match="boom"):
        profiling.time_callable(broken, warmup=0, reps=1)


def test_time_interleaved_stops_a_slow_callable_at_the_time_budget():
    calls = {"slow": 0, "fast": 0}

    def slow():
        calls["slow"] += 1
        time.sleep(0.02)

    def fast():
        calls["fast"] += 1

    results = profiling.time_interleaved({"slow": slow, "fast": fast}, warmup=3, reps=50, max_seconds=0.01)
    assert results["slow"]["reps"] == 3 and calls["slow"] == 1 + 3  # one warm-up for a slow call
    assert results["fast"]["reps"] >= 3


def test_time_callable_rejects_zero_reps():
    with pytest.raises(ValueError):
        profiling.time_callable(lambda: None, warmup=0, reps=0)


def test_throughput():
    assert profiling.throughput(10, 64, 2.0) == {"samples_per_s": 5.0, "tokens_per_s": 320.0}


def test_peak_memory_cpu_sees_an_allocation():
    with profiling.PeakMemory("cpu") as mem:
        x = torch.ones(16 * 2**20)  # 64 MiB, every page touched
        del x
    assert mem.peak_mb > 0
    if mem.resettable:  # Linux: the high-water mark was reset on entry
        assert mem.delta_mb > 32


_KEEP_FREED_PROBE = """
import torch
from harness.profiling import PeakMemory, _reset_rss_high_water, current_rss_mb, keep_freed_memory
took = keep_freed_memory()
deltas = []
for _ in range(2):
    with PeakMemory("cpu") as mem:
        x = torch.ones(16 * 2**20)  # 64 MiB, every page touched
        del x
    deltas.append(mem.delta_mb if mem.resettable else 64.0)
_reset_rss_high_water()             # trims the heap
before = current_rss_mb()
x = torch.ones(16 * 2**20)
del x
print(int(took), min(deltas), current_rss_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
@pytest.mark.parametrize("enabled", [True, False])
def test_keep_freed_memory_keeps_freed_blocks_and_peak_deltas_stay_exact(enabled):
    """In a fresh process (the setting is process-wide): with keep_freed_memory a freed 64 MiB
    block stays resident for reuse (without it glibc unmaps it at once), and PeakMemory still sees
    the full growth of an allocation that could reuse kept memory."""
    env = {**os.environ, "HARNESS_KEEP_FREED_MEMORY": "1" if enabled else "0"}
    out = subprocess.run([sys.executable, "-c", _KEEP_FREED_PROBE], capture_output=True, text=True, check=True,
                         env=env).stdout
    took, smallest_delta, kept = out.split()
    assert bool(int(took)) is enabled
    assert float(smallest_delta) > 32
    assert (float(kept) > 32) is enabled


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("HARNESS_KEEP_FREED_MEMORY", "0")
    assert profiling.keep_freed_memory() is False


def test_cpu_peak_flops_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(profiling, "measure_matmul_flops", lambda *a, **k: calls.append(1) or 1e9)
    assert profiling.cpu_peak_flops() == 1e9
    assert profiling.cpu_peak_flops() == 1e9
    assert len(calls) == 1
    cache = json.loads((tmp_path / "cpu_peak_flops.json").read_text())
    assert list(cache.values()) == [1e9]
    assert profiling.device_peak_flops("cpu") == (1e9, False)  # measured, not estimated
    assert profiling.mfu(2.5e8, "cpu") == (0.25, False)


def test_measure_matmul_flops_is_positive():
    assert profiling.measure_matmul_flops(size=64, reps=2) > 0


def test_gpu_peak_flops_table():
    assert profiling.gpu_peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) == (pytest.approx(989.4e12), True)
    # the more specific name wins over "H100"
    assert profiling.gpu_peak_flops("NVIDIA H100 PCIe", "bf16") == (pytest.approx(756e12), True)
    assert profiling.gpu_peak_flops("NVIDIA A100-SXM4-80GB", torch.bfloat16)[0] == pytest.approx(312e12)
    assert profiling.gpu_peak_flops("Tesla T4", torch.bfloat16) == (None, True)  # T4 has no bf16
    assert profiling.gpu_peak_flops("Some Future GPU", torch.bfloat16) == (None, True)


def test_gpu_fp32_peak_follows_matmul_precision():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert profiling.gpu_peak_flops("NVIDIA H200", torch.float32)[0] == pytest.approx(66.9e12)
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores
        assert profiling.gpu_peak_flops("NVIDIA H200", torch.float32)[0] == pytest.approx(494.7e12)
    finally:
        torch.set_float32_matmul_precision(before)


def test_profile_steps_writes_trace_and_op_table(tmp_path):
    a = torch.randn(32, 32)
    paths = profiling.profile_steps(lambda: a @ a, steps=2, out_dir=tmp_path)
    trace = json.loads(open(paths["trace"]).read())
    assert trace["traceEvents"]
    assert "aten::mm" in open(paths["table"]).read()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_cuda_paths_skip_cleanly_on_cpu():
    assert profiling.gpu_system_metrics_available() is False
    assert profiling.device_peak_flops("cuda") == (None, True)
    profiling.synchronize("cuda")  # a no-op, not an error
    assert resolve_device("auto").type == "cpu"


@cuda_only
def test_cuda_timing_memory_and_peak():
    x = torch.randn(256, 256, device="cuda")
    stats = profiling.time_callable(lambda: x @ x, warmup=1, reps=5, device="cuda")
    assert 0 < stats["p20"] <= stats["median"] <= stats["p80"]
    with profiling.PeakMemory("cuda") as mem:
        y = torch.empty(8 * 2**20, device="cuda")  # 32 MiB
        del y
    assert mem.delta_mb >= 31
    peak, estimated = profiling.device_peak_flops("cuda", torch.bfloat16)
    assert estimated and (peak is None or peak > 1e12)


def test_contention_rule_counts_only_load_beyond_the_free_cores():
    from harness.devices import is_contended

    assert not is_contended(0.1, threads=2, cores=2)   # daemons and tick rounding
    assert is_contended(1.0, threads=2, cores=2)       # another process took a core from the run
    assert not is_contended(1.0, threads=1, cores=2)   # it used the core the run left free
    assert is_contended(1.5, threads=1, cores=2)


def test_core_contention_subtracts_this_process_own_use(monkeypatch):
    from harness import devices

    clock = iter([0.0, 2.0])
    busy = iter([100.0, 104.0])    # our cores were busy 4 core-seconds over 2 s, by anyone ...
    own = iter([10.0, 13.0])       # ... 3 of them ours: others kept 0.5 core busy
    monkeypatch.setattr(devices.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(devices, "_busy_core_seconds", lambda cpus: next(busy))
    monkeypatch.setattr(devices, "_own_cpu_seconds", lambda: next(own))
    monkeypatch.setattr(devices, "_affinity", lambda: {0, 1})
    with devices.CoreContention(threads=2) as load:
        pass
    assert load.other_busy_cores == pytest.approx(0.5) and load.contended


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat per-core times")
def test_core_contention_sees_processes_spinning_on_our_cores():
    from harness.devices import CoreContention, available_cores

    cores = available_cores()
    spin = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(cores)]
    try:
        time.sleep(0.5)  # interpreters started
        with CoreContention(threads=cores) as load:
            time.sleep(1.0)
    finally:
        for p in spinners:
            p.wait()
    assert load.other_busy_cores > 0.5 and load.contended


def test_torch_threads_sets_and_restores():
    from harness.devices import available_cores, torch_threads

    before = torch.get_num_threads()
    with torch_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None) as n:
        assert n == available_cores()
