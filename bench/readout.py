"""What each latent computes, per Jacobi pass: the share of validation problems whose latent j, read through the LM
head, predicts the CoT token j + 1 (the token the teacher predicts from CoT token j at the same position).

    python bench/readout.py <run>/checkpoints/last.ckpt [--n 128]

Prints one row per pass, one column per latent slot (the last slot has no next CoT token).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import torch

    from kava.checkpoint import load_module
    from kava.data.datamodule import GSM8KDataModule
    from kava.inference import encode_questions, latent_readout

    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("--n", type=int, default=128)
    args = ap.parse_args()
    module = load_module(args.ckpt).eval()
    data = {k: v for k, v in dict(module.hparams["data"]).items() if k != "_target_"}
    val = GSM8KDataModule(**data).load()["val"]
    questions, steps = list(val["question"])[: args.n], list(val["steps"])[: args.n]
    tok = module.tokenizer
    q_ids, q_mask = encode_questions(tok, questions)
    with torch.no_grad():
        ids, _ = latent_readout(module.student, module.backbone, q_ids, q_mask, k=1)
    cot = [tok(" " + " ".join(s), add_special_tokens=False)["input_ids"] for s in steps]
    passes, n, slots = ids.shape[0], ids.shape[1], ids.shape[2]
    print("pass | " + " ".join(f"{j:>4}" for j in range(slots - 1)))
    for t in range(passes):
        row = [sum(j + 1 < len(c) and int(ids[t, b, j, 0]) == c[j + 1] for b, c in enumerate(cot)) / n
               for j in range(slots - 1)]  # fmt: skip
        print(f"{t + 1:>4} | " + " ".join(f"{x:4.2f}" for x in row))


if __name__ == "__main__":
    main()
