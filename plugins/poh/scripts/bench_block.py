"""A whole pre-LN block (mixer + FFN, mlp_ratio 4) with poh.heads against the same block with the
softmax mixer, forward + backward, at TARGETS.md's shape (B=32, T=64, D=128, H=4), in interleaved
rounds (one call of each per round, the order rotating).

Reports the median wall time and the median CPU time of the calling thread, and the median over
rounds of each round's CPU-time ratio to softmax (paired: both calls of a round see the same load).
With one torch thread all the work runs on the calling thread, so on a shared, loaded machine the
CPU time measures the work itself, while the wall time also counts the time the thread waited for
a core.

    .venv/bin/python plugins/poh/scripts/bench_block.py [--threads 1] [--reps 40] [--mixer-only]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.nn.aux import collect_aux
from harness.nn.blocks import Block, build_mixer
from harness.nn.context import SeqContext


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--H", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--mixers", default="softmax,poh.heads,poh.heads_topk")
    ap.add_argument("--mixer-only", action="store_true", help="time the mixer alone, not the block")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ctx = SeqContext(max_len=args.T, causal=False)
    x = torch.randn(args.B, args.T, args.D, requires_grad=True)
    g = torch.randn(args.B, args.T, args.D)
    fns = {}
    for name in args.mixers.split(","):
        torch.manual_seed(0)
        module = (build_mixer(name, args.D, heads=args.H, ctx=ctx) if args.mixer_only else
                  Block(args.D, heads=args.H, mlp_ratio=4.0, ctx=ctx, mixer=name)).train()

        def step(module: torch.nn.Module = module) -> None:
            y = module(x)
            losses, _ = collect_aux(module)
            ((y * g).sum() + sum(losses.values())).backward()
            module.zero_grad(set_to_none=True)
            x.grad = None

        fns[name] = step
    wall: dict[str, list[float]] = {n: [] for n in fns}
    cpu: dict[str, list[float]] = {n: [] for n in fns}
    names = list(fns)
    for r in range(args.warmup + args.reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            w0, c0 = time.perf_counter(), time.thread_time()
            fns[name]()
            w1, c1 = time.perf_counter(), time.thread_time()
            if r >= args.warmup:
                wall[name].append((w1 - w0) * 1e3)
                cpu[name].append((c1 - c0) * 1e3)
    what = "mixer" if args.mixer_only else "block"
    base_w, base_c = statistics.median(wall["softmax"]), statistics.median(cpu["softmax"])
    for name in names:
        mw, mc = statistics.median(wall[name]), statistics.median(cpu[name])
        paired = statistics.median(a / b for a, b in zip(cpu[name], cpu["softmax"]))
        print(f"{name:16s} {what} fwd+bwd  wall {mw:7.2f} ms ({mw / base_w:.3f}x)  cpu {mc:7.2f} ms "
              f"({mc / base_c:.3f}x)  paired cpu ratio {paired:.3f}x")


if __name__ == "__main__":
    main()
