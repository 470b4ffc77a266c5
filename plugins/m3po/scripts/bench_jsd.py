"""Micro-benchmark of the jsd gate (TARGETS.md row "m3po jsd gate"): forward time and peak extra
memory of the similarity of N = 8 paths at V = 4,096 and V = 151,936, against the reference's
Python loop over the 28 pairs (re-implemented here as in m3po_gating, upper triangle).

    python plugins/m3po/scripts/bench_jsd.py [--threads 2] [--repeats 50]

Memory: torch's CPU allocator reports no peak, so the script prints the gate's working set
(smoothed p and the two (N - 1, V) pair buffers, analytically) next to N V and N^2 V, and on CUDA
the measured torch.cuda.max_memory_allocated increase. Times are the best of ``--repeats`` runs after warm-up (``--median``: medians).
Not a test: speed targets live in benchmarks.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness_m3po.gates import JSDGate


def reference_loop(p: torch.Tensor) -> torch.Tensor:
    """The reference's kl_divergence gate: p += 1e-8, renormalise, a Python loop over pairs."""
    p = p + 1e-8
    p = p / p.sum(-1, keepdim=True)
    N = p.shape[0]
    S = torch.zeros(N, N)
    for i in range(N):
        for j in range(i + 1, N):
            m = 0.5 * (p[i] + p[j])
            jsd = 0.5 * (p[i] * (p[i] / m).log()).sum() + 0.5 * (p[j] * (p[j] / m).log()).sum()
            S[i, j] = S[j, i] = 1 - jsd.clamp_min(1e-12).sqrt()
    return S


def best_ms(fn, repeats: int) -> float:
    """The fastest of ``repeats`` runs after warm-up: on a machine shared with other jobs the
    minimum is the figure least moved by them (the median is printed by --median)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times) if MEDIAN else min(times)


MEDIAN = False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--paths", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--median", action="store_true", help="report medians instead of minima")
    args = ap.parse_args()
    global MEDIAN
    MEDIAN = args.median
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    N = args.paths
    print(f"jsd gate, N = {N} paths, {args.threads} threads, {device}, {'median' if MEDIAN else 'best'} of {args.repeats}")
    print(f"{'V':>8} {'gate ms':>9} {'target':>7} {'loop ms':>9} {'speed-up':>9} {'max |diff|':>11} "
          f"{'work MB':>9} {'N V MB':>7} {'N^2 V MB':>9}")
    for V, target in ((4096, 0.5), (151_936, 16.0)):
        p = torch.softmax(torch.randn(1, N, V, device=device) * 3, -1)
        gate = JSDGate(V).to(device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def run_gate():
            with torch.no_grad():
                gate(p)
            sync()

        ms = best_ms(run_gate, args.repeats)
        loop_ms = best_ms(lambda: reference_loop(p[0].cpu()), max(5, args.repeats // 5))
        with torch.no_grad():
            off = ~torch.eye(N, dtype=torch.bool)  # the diagonal is masked by every gate: conventions differ
            diff = (gate(p)[0].cpu() - reference_loop(p[0].cpu()))[off].abs().max().item()
        mb = 4 * V / 2 ** 20
        # the smoothed copy of p (N, V), the pair buffer and its x log x buffer (N - 1, V) each
        chunk_mb = (3 * N - 2) * mb
        print(f"{V:>8} {ms:>9.3f} {target:>7} {loop_ms:>9.2f} {loop_ms / ms:>8.1f}x {diff:>11.2e} "
              f"{chunk_mb:>9.1f} {N * mb:>7.1f} {N * N * mb:>9.1f}")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            run_gate()
            print(f"{'':>8} CUDA peak extra {(torch.cuda.max_memory_allocated() - base) / 2 ** 20:.1f} MB")


if __name__ == "__main__":
    main()
