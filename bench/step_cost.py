"""Cost of one KaVa training step against the bare forward+backward of the same positions, at a width of your choice.

Ours, the floor (two plain decoder calls over the positions ours computes) and the pass floor (the same in the method's
T + 1 dependent student calls), all from bench/run.py, timed in interleaved rounds in one process on a batch of the
default synthetic data, with glibc's heap kept steady (``run.steady_allocator``); the medians of the per-round ratios
are printed. ``--hidden`` widens the tiny Llama (MLP 4x, a head per 32 dimensions, a KV head per 128): the bench's
hidden 128 is where per-call overhead weighs most.

    OMP_NUM_THREADS=2 python bench/step_cost.py [--rounds 8] [--batch 16] [--m 24] [--t 3] [--hidden 512] [--layers 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from run import (  # noqa: E402
    floor_step,
    floor_twice_step,
    fmt_ratio,
    interleaved_rounds,
    our_step,
    paired_ratio,
    pass_floor_step,
    steady_allocator,
)

from kava.config import compose_train  # noqa: E402
from kava.training import build  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--m", type=int, default=24)
    ap.add_argument("--t", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    steady = steady_allocator()
    cfg = compose_train([
        "paths.output_dir=/tmp/kava_bench", "logger=[]", "callbacks=none", "model.lora.r=16", "loss.alpha1=10.0",
        f"data.micro_batch_size={args.batch}", f"data.global_batch_size={args.batch}",
        f"latent.num_tokens={args.m}", f"latent.num_iterations={args.t}",
        f"model.tiny.hidden_size={args.hidden}", f"model.tiny.intermediate_size={4 * args.hidden}",
        f"model.tiny.num_layers={args.layers}", f"model.tiny.num_heads={max(1, args.hidden // 32)}",
        f"model.tiny.num_kv_heads={max(1, args.hidden // 128)}",
    ])  # fmt: skip
    dm, module, _ = build(cfg)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    module.train()
    fns = {
        "ours": our_step,
        "floor": floor_step,
        "pass floor": pass_floor_step,
        "floor, question twice": floor_twice_step,
    }
    times = interleaved_rounds({k: (fn, module) for k, fn in fns.items()}, batch, args.rounds)
    print(
        f"threads={torch.get_num_threads()} hidden={args.hidden} layers={args.layers} batch={args.batch} M={args.m} "
        f"T={args.t} teacher_len={batch.t_ids.shape[1]} question_len={batch.s_q_ids.shape[1]} steady_heap={steady}"
    )
    for name, ts in times.items():
        print(f"{name:21s} {1000 * statistics.median(ts):8.1f} ms/step (median of {len(ts)})")
    pairs = (("ours", "floor"), ("ours", "pass floor"), ("pass floor", "floor"), ("ours", "floor, question twice"))
    for num, den in pairs:
        print(f"{num}/{den} = {fmt_ratio(paired_ratio(times, num, den))}")


if __name__ == "__main__":
    main()
