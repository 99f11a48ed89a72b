"""Training-step time of each method at the bench shape, and CODI's sequential latents against Jacobi with T = M.

    OMP_NUM_THREADS=1 python bench/methods.py [--rounds 5] [--cot 64]

Tiny GQA Llama (bench/run.py's), LoRA r=16, batch 16, question 48, CoT 64, M=24, T=3; a step is the method's
losses, backward and an AdamW update. Methods are timed in interleaved rounds (the first is warm-up) and the
median is reported with its ratio to ``kava``. The latent comparison times the student forward alone (no grad)
of a Jacobi student with T = M and of the sequential student, same M.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from run import LOSS, TINY, synthetic_batch  # noqa: E402

from kava.data.tokenizer import train_tiny_tokenizer  # noqa: E402
from kava.lit_module import KAVALitModule  # noqa: E402
from kava.model.student import LatentStudent, SequentialStudent  # noqa: E402

METHODS = {
    "kava": "kava.methods.kava.KaVa",
    "pccot": "kava.methods.pccot.PCCoT",
    "codi": "kava.methods.codi.CODI",
    "pause": "kava.methods.pause.Pause",
    "cot": "kava.methods.cot.CoT",
}


def build(tokenizer, target: str, m: int, t: int) -> KAVALitModule:
    torch.manual_seed(0)
    model = {"name": "tiny", "name_or_path": None, "init_seed": 0, "dtype": "float32", "tiny": TINY,
             "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}}  # fmt: skip
    latent = {"num_tokens": m, "num_iterations": t, "use_projection": True}
    return KAVALitModule(
        model, latent, {"mode": "shared"}, LOSS, {"lr": 1e-3, "weight_decay": 0.0}, method={"_target_": target},
        tokenizer=tokenizer,
    ).train()  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--m", type=int, default=24)
    ap.add_argument("--t", type=int, default=3)
    ap.add_argument("--cot", type=int, default=64)
    args = ap.parse_args()
    corpus = [f"Ann has {i} boxes with {i + 3} pens each. <<{i}*{i + 3}={i * (i + 3)}>>" for i in range(300)]
    tok = train_tiny_tokenizer(corpus, vocab_size=TINY["vocab_size"])  # as bench/run.py
    batch = synthetic_batch(16, 48, args.cot, len(tok))
    modules = {name: build(tok, target, args.m, args.t) for name, target in METHODS.items()}
    opts = {n: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for n, m in modules.items()}
    times: dict[str, list[float]] = {n: [] for n in modules}
    for r in range(args.rounds + 1):
        for name, module in modules.items():
            start = time.perf_counter()
            module.compute_losses(batch)["loss"].backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            if r:
                times[name].append(time.perf_counter() - start)
    med = {n: statistics.median(v) for n, v in times.items()}
    shape = f"M={args.m}, T={args.t}, batch 16, question 48, CoT {args.cot}"
    print(f"threads {torch.get_num_threads()}, {shape}, {args.rounds} rounds")
    print("| method | step ms (median) | / kava |\n|---|---|---|")
    for n, v in med.items():
        print(f"| {n} | {1000 * v:.0f} | {v / med['kava']:.2f} |")

    model = modules["kava"].backbone
    jacobi = LatentStudent(TINY["hidden_size"], args.m, args.m)
    seq = SequentialStudent(TINY["hidden_size"], args.m)
    seq.load_state_dict(jacobi.state_dict())
    q = (model, batch.s_q_ids, batch.s_q_mask)
    lat: dict[str, list[float]] = {"jacobi T=M": [], "sequential": []}
    with torch.no_grad():
        for r in range(args.rounds + 1):
            for name, st in (("jacobi T=M", jacobi), ("sequential", seq)):
                start = time.perf_counter()
                st.rollout(*q)
                if r:
                    lat[name].append(time.perf_counter() - start)
    lm = {n: statistics.median(v) for n, v in lat.items()}
    print(f"\n| latents (M={args.m}, no grad) | rollout ms (median) | / jacobi T=M |\n|---|---|---|")
    for n, v in lm.items():
        print(f"| {n} | {1000 * v:.1f} | {v / lm['jacobi T=M']:.3f} |")


if __name__ == "__main__":
    main()
