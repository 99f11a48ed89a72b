"""Cost of one KaVa training step against the bare forward+backward of the same tokens (tiny model).

The floor runs, through the same LoRA-wrapped backbone with a plain CE loss, one forward+backward over
the teacher sequences and one over student-shaped sequences holding the same number of tokens as our
step's student passes (prefill ``Q <bot> + M``, ``T x M`` latent tokens, ``<eot> P A EOS``). Both are
timed interleaved in one process; the ratio of medians is printed.

    OMP_NUM_THREADS=2 python bench/step_cost.py [--steps 10] [--batch 32] [--m 12] [--t 3]
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
from hydra import compose, initialize_config_dir  # noqa: E402
from run import floor_step, our_step  # noqa: E402

import kava.config  # noqa: E402,F401
from kava.config import CONF_DIR  # noqa: E402
from kava.training import build  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--m", type=int, default=12)
    ap.add_argument("--t", type=int, default=3)
    args = ap.parse_args()
    overrides = [
        "paths.output_dir=/tmp/kava_bench",
        "logger=[]",
        "callbacks=none",
        f"data.micro_batch_size={args.batch}",
        f"data.global_batch_size={args.batch}",
        f"latent.num_tokens={args.m}",
        f"latent.num_iterations={args.t}",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    dm, module, _ = build(cfg)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    module.train()
    ours, floor = [], []
    for i in range(args.steps + 2):
        for fn, store in (
            (lambda: our_step(module, batch), ours),
            (lambda: floor_step(module, batch), floor),
        ):
            module.zero_grad(set_to_none=True)
            start = time.perf_counter()
            fn()
            if i >= 2:  # warm-up
                store.append(time.perf_counter() - start)
    o, f = statistics.median(ours), statistics.median(floor)
    tokens = batch.t_mask.sum().item() + batch.s_q_mask.sum().item() + batch.s_a_mask.sum().item()
    print(
        f"threads={torch.get_num_threads()} batch={args.batch} M={args.m} T={args.t} "
        f"teacher_len={batch['t_ids'].shape[1]} question_len={batch['s_q_ids'].shape[1]} real_tokens={tokens}"
    )
    print(f"ours  {o * 1000:8.1f} ms/step (median of {len(ours)})")
    print(f"floor {f * 1000:8.1f} ms/step")
    print(f"ratio ours/floor = {o / f:.2f}")


if __name__ == "__main__":
    main()
