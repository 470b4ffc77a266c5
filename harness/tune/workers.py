"""``--workers K``: the process started by hand spawns K - 1 worker processes on the same storage
and study, and the CPU cores are shared among the K of them. A spawned worker joins the study
(never creates it or changes its budget), claims queued trials like any other process, and turns
the first SIGINT/SIGTERM into an interrupt so its running trial is recorded failed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any, Callable

# The spawned process runs the same `harness tune` command line, in the same interpreter.
WORKER_ENTRY = [sys.executable, "-c", "from harness.cli import main; main()", "tune"]
STOP_WAIT_S = 120


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def share_cpus(workers: int) -> None:
    """Give this process its share of the cores (the spawned ones get theirs through the environment)."""
    try:
        import torch

        torch.set_num_threads(threads_per_worker(workers))
    except Exception:  # noqa: BLE001 - a thread count is a nicety
        pass


def _interrupt_once(signum: int, frame: Any) -> None:
    """Raise KeyboardInterrupt on the first SIGINT/SIGTERM and ignore repeats during the clean-up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def interrupt_on_signals() -> None:
    """In a spawned worker: SIGTERM from the spawning process interrupts like Ctrl-C, so the running
    trial is recorded failed instead of left RUNNING."""
    signal.signal(signal.SIGINT, _interrupt_once)
    signal.signal(signal.SIGTERM, _interrupt_once)


def worker_command(index: int, *, suite_path: str, variant: str, trials: int, storage: str, study: str,
                   overrides: list[str], track: bool, tracking_uri: str | None, parent_id: str | None) -> list[str]:
    """The command line of worker ``index``: the same suite, --set values, study and tracking."""
    cmd = [*WORKER_ENTRY, suite_path, "-v", variant, "--trials", str(trials), "--storage", storage,
           "--study", study, "--worker-index", str(index)]
    for item in overrides:
        cmd += ["--set", item]
    if not track:
        cmd.append("--no-track")
    elif tracking_uri:
        cmd += ["--tracking-uri", tracking_uri]
    if parent_id:
        cmd += ["--parent-run-id", parent_id]
    return cmd


def spawn_workers(workers: int, **command: Any) -> list[subprocess.Popen[bytes]]:
    """Start workers 1 .. ``workers`` - 1 (``command``: the keywords of ``worker_command``)."""
    threads = str(threads_per_worker(workers))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    return [subprocess.Popen(worker_command(i, **command), env=env) for i in range(1, workers)]


def wait_workers(procs: list[subprocess.Popen[bytes]], echo: Callable[[str], None]) -> None:
    for i, p in enumerate(procs, 1):
        if p.wait() != 0:
            echo(f"worker {i} exited with status {p.returncode}; see its lines above")


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every live worker (each records its running trial failed), then wait; kill stragglers."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
