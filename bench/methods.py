"""Training-step time of each method at the bench shape, and CODI's sequential latents against Jacobi with T = M.

    OMP_NUM_THREADS=2 python bench/methods.py [--rounds 5] [--cot 64] [--hidden 128 --layers 4] [--vocab 128256]
    OMP_NUM_THREADS=2 python bench/methods.py --only kava --vocab 128256     # one method, and its peak memory

Tiny GQA Llama (bench/run.py's; ``--hidden``/``--layers`` widen and deepen it, ``--vocab`` widens its LM head),
LoRA r=16, batch 16, question 48, CoT 64, M=24, T=3; a step is the method's losses, backward and an AdamW update.
Methods are timed in interleaved rounds (the first is warm-up) and the median is reported with its ratio to ``kava``.
A second table splits the steps of ``kava`` and ``pccot`` into their stages (teacher pass, R-KV, student passes, loss
terms, backward, AdamW), timed the same way: R-KV is then timed alone, and the KV losses' forward is the difference
of the two loss-term stages. The latent comparison times the student forward alone (no grad) of a Jacobi student with
T = M and of the sequential student, same M. ``--only`` times one method and reports the peak resident memory its
steps add (``ru_maxrss`` after the steps minus before them), so run it once per method.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from run import TINY, bench_tokenizer, make_module, synthetic_batch  # noqa: E402

from kava.lit_module import KAVALitModule  # noqa: E402
from kava.methods.kava import KaVa  # noqa: E402
from kava.model.student import LatentStudent, SequentialStudent  # noqa: E402

METHODS = ("kava", "pccot", "codi", "pause", "cot")  # config names (conf/method/)


def build(tokenizer, method: str, m: int, t: int, tiny: dict | None = None, vocab: int | None = None) -> KAVALitModule:
    """The method's module on the bench model; ``vocab`` widens its embedding and LM head (the tokenizer's ids stay
    below 512), for the cost of a real model's vocabulary."""
    module = make_module(tokenizer, m, t, method, tiny).train()
    if vocab:
        module.backbone.get_base_model().resize_token_embeddings(vocab, mean_resizing=False)
    return module


STAGES = ("teacher pass", "R-KV", "student passes", "loss terms", "backward", "AdamW")


def staged_step(module: KAVALitModule, opt: torch.optim.Optimizer, batch) -> tuple[dict[str, float], torch.Tensor]:
    """One training step of ``kava`` or ``pccot`` with each stage timed (seconds), and its loss; the stages are the
    ones the methods' ``losses`` run, in their order, so their sum is the step."""
    method = module.method
    kava = isinstance(method, KaVa)
    out: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        out[stage] = now - clock
        clock = now

    t = method.teacher_pass(batch, capture=kava)
    lap("teacher pass")
    if kava:
        target = method.compress_target(batch, t)
    lap("R-KV")
    s = method.student_pass(batch, t)
    lap("student passes")
    loss = method.total(*(method.terms(batch, t, target, s) if kava else method.terms(batch, t, s)))[0]["loss"]
    lap("loss terms")
    loss.backward()
    lap("backward")
    opt.step()
    opt.zero_grad(set_to_none=True)
    lap("AdamW")
    return out, loss.detach()


def stage_table(modules: dict[str, KAVALitModule], opts: dict[str, torch.optim.Optimizer], batch, rounds: int) -> str:
    """Median time of each stage of ``kava``'s and ``pccot``'s steps, interleaved rounds (the first is warm-up)."""
    names = ("kava", "pccot")
    times = {n: {st: [] for st in STAGES} for n in names}
    for r in range(rounds + 1):
        for n in names:
            laps, _ = staged_step(modules[n], opts[n], batch)
            if r:
                for st, v in laps.items():
                    times[n][st].append(v)
    med = {n: {st: statistics.median(v) for st, v in times[n].items()} for n in names}
    total = {n: sum(med[n].values()) for n in names}
    rows = ["| stage | kava ms | pccot ms | kava - pccot, % of kava's step |", "|---|---|---|---|"]
    for st in STAGES:
        a, b = med["kava"][st], med["pccot"][st]
        rows.append(f"| {st} | {1000 * a:.1f} | {1000 * b:.1f} | {100 * (a - b) / total['kava']:+.1f} |")
    a, b = total["kava"], total["pccot"]
    rows.append(f"| sum of the medians | {1000 * a:.1f} | {1000 * b:.1f} | {100 * (a - b) / a:+.1f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--m", type=int, default=24)
    ap.add_argument("--t", type=int, default=3)
    ap.add_argument("--cot", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=TINY["hidden_size"], help="width: a multiple of 128 (other than the "
                    "default: heads of 64, 2 KV heads, MLP 4x)")  # fmt: skip
    ap.add_argument("--layers", type=int, default=TINY["num_layers"])
    ap.add_argument("--vocab", type=int, default=None, help="embedding and LM head rows (e.g. Llama 3's 128256)")
    ap.add_argument("--only", choices=list(METHODS), help="one method alone, with the peak memory its steps add")
    args = ap.parse_args()
    tiny = dict(TINY, num_layers=args.layers)
    if args.hidden != TINY["hidden_size"]:
        if args.hidden % 128:
            ap.error(f"--hidden must be a multiple of 128 (heads of 64 over 2 KV heads), got {args.hidden}")
        tiny.update(hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_heads=args.hidden // 64)
    tok = bench_tokenizer()
    batch = synthetic_batch(16, 48, args.cot, len(tok))
    names = [args.only] if args.only else list(METHODS)
    modules = {name: build(tok, name, args.m, args.t, tiny, args.vocab) for name in names}
    opts = {n: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for n, m in modules.items()}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux: the peak so far, before any step
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
    heads = f"{tiny['num_heads']}/{tiny['num_kv_heads']} heads"
    width = f"hidden {tiny['hidden_size']}, {tiny['num_layers']} layers, {heads}"
    shape = f"{width}, vocab {args.vocab or len(tok)}, M={args.m}, T={args.t}, batch 16, question 48, CoT {args.cot}"
    print(f"threads {torch.get_num_threads()}, {shape}, {args.rounds} rounds")
    if args.only:
        added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
        print(f"{args.only}: step {1000 * med[args.only]:.0f} ms (median), peak resident memory added {added:.0f} MB")
        return
    print("| method | step ms (median) | / kava |\n|---|---|---|")
    for n, v in med.items():
        print(f"| {n} | {1000 * v:.0f} | {v / med['kava']:.2f} |")
    print(f"\n{stage_table(modules, opts, batch, args.rounds)}")

    model = modules["kava"].backbone
    jacobi = LatentStudent(tiny["hidden_size"], args.m, args.m)
    seq = SequentialStudent(tiny["hidden_size"], args.m)
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
