"""Latent (student) against CoT (teacher) decoding of one checkpoint: forward passes and questions/s.

Both decoders run in one process over the same questions at the same batch size, threads pinned.

    OMP_NUM_THREADS=2 python bench/decode_speed.py CKPT [--sets synthetic] [--batch 64] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from kava.evaluation import run_evaluation  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("--sets", nargs="*", default=None, help="eval sets (default: the run's own test split)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-cot-tokens", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        results = run_evaluation(
            args.ckpt,
            out,
            eval_sets=args.sets,
            teacher=True,
            batch_size=args.batch,
            limit=args.limit,
            max_cot_tokens=args.max_cot_tokens,
        )
    print(f"threads={torch.get_num_threads()} batch={args.batch}")
    for name, per in results.items():
        s, t = per["student"], per["teacher"]
        print(
            f"{name}: n={s['n']} | student acc {100 * s['accuracy']:.1f}% passes {s['mean_forward_passes']:.1f} "
            f"q/s {s['questions_per_s']:.1f} | teacher acc {100 * t['accuracy']:.1f}% passes "
            f"{t['mean_forward_passes']:.1f} q/s {t['questions_per_s']:.1f} | passes ratio CoT/latent "
            f"{t['mean_forward_passes'] / s['mean_forward_passes']:.2f}, speed ratio latent/CoT "
            f"{s['questions_per_s'] / t['questions_per_s']:.2f}"
        )


if __name__ == "__main__":
    main()
