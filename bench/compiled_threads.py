"""Ours against the floor at a given thread count, the full step with AdamW's update on both sides: eager, and with
``model.compile=step`` against the floor's forward compiled whole (bench/run.py's model, batch and floor).

Section 1b of docs/benchmarks.md compares the compiled steps at 2 threads without the optimizer; this is the same
comparison at 1 thread with it. The compiled code keeps the thread count it was compiled under, hence a process of its
own. The first steps compile for several minutes (about 5.5 for ours and 2 for the floor on a 2-core CPU).

    OMP_NUM_THREADS=1 python bench/compiled_threads.py [--threads 1] [--rounds 31]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from run import (  # noqa: E402
    bench_tokenizer,
    compiled_whole,
    floor_loss,
    floor_step,
    fmt_ratio,
    interleaved_rounds,
    make_module,
    our_step,
    paired_ratio,
    steady_allocator,
    synthetic_batch,
    with_adamw,
)


def adamw(module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-6)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=31)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steady_allocator()
    tok = bench_tokenizer()
    batch = synthetic_batch(16, 48, 64, len(tok))
    eager, step = make_module(tok, 24, 3).train(), make_module(tok, 24, 3, compiled="step").train()
    fns = {"ours": (with_adamw(our_step, adamw(eager)), eager),
           "floor": (with_adamw(floor_step, adamw(eager)), eager),
           "ours step": (with_adamw(our_step, adamw(step)), step),
           "floor step": (with_adamw(compiled_whole(floor_loss), adamw(step)), step)}  # fmt: skip
    for name in ("ours step", "floor step"):
        start = time.perf_counter()
        fns[name][0](fns[name][1], batch)
        print(f"{name}: first (compiling) step {time.perf_counter() - start:.0f} s", flush=True)
    times = interleaved_rounds(fns, batch, args.rounds)
    print(f"{args.threads} thread(s), AdamW on both sides, ms per step:",
          {k: round(1000 * statistics.median(v)) for k, v in times.items()})  # fmt: skip
    for num, den in (("ours", "floor"), ("ours step", "floor step"), ("ours step", "ours"), ("floor step", "floor")):
        print(f"  {num} / {den}: {fmt_ratio(paired_ratio(times, num, den))}")


if __name__ == "__main__":
    main()
