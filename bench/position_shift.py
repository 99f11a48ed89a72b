"""Does a CoT teacher need its CoT at the positions it was trained on? Greedy CoT decoding of the validation split with
every generated token's position id moved by ``--shift`` (what a latent student's ``<bot>`` does to its latents).

    python bench/position_shift.py <backbone folder> [--shifts 0 1 2] [--n 128] [study_task overrides ...]

The backbone is a folder written by ``bench/study.py`` (``<work>/backbone<b>/backbone``); the data are the task's
validation problems (``conf/study_task/<task>.yaml`` via ``--task``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def accuracy(model, tok, records, shift: int, max_new: int = 40) -> float:
    import torch

    from kava.data.answers import extract_answer

    hits = 0
    for rec in records:
        ids = torch.tensor([tok(rec.question)["input_ids"]])
        n = ids.shape[1]
        out: list[int] = []
        with torch.no_grad():
            for _ in range(max_new):
                pos = torch.arange(ids.shape[1])[None].clone()
                pos[:, n:] += shift
                nxt = int(model(input_ids=ids, position_ids=pos).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                out.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        hits += extract_answer(tok.decode(out), "The answer is:") == float(rec.answer)
    return hits / len(records)


def main() -> None:
    from hydra import compose, initialize_config_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kava.config import CONF_DIR
    from kava.data.synthetic import generate_splits

    ap = argparse.ArgumentParser()
    ap.add_argument("backbone")
    ap.add_argument("--task", default="modsum")
    ap.add_argument("--shifts", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=128)
    args = ap.parse_args()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=study_pretrain", f"study_task={args.task}"])
    syn = dict(cfg.data.synthetic)
    seed = syn.pop("seed")
    sizes = {"train": 0, "val": args.n}  # the validation split of the run's data (its RNG stream is the split's own)
    for key in ("num_train", "num_val", "num_test"):
        syn.pop(key)
    records = generate_splits(sizes, seed=seed, **syn)["val"]
    tok = AutoTokenizer.from_pretrained(args.backbone)
    model = AutoModelForCausalLM.from_pretrained(args.backbone).eval()
    for shift in args.shifts:
        print(f"position shift {shift}: CoT accuracy {100 * accuracy(model, tok, records, shift):.1f}%", flush=True)


if __name__ == "__main__":
    main()
