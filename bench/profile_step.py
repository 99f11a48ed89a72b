"""Where one training step's time goes (tiny model, batch 16, M=24, T=3), and naive/ours against question length.

OMP_NUM_THREADS=2 python bench/profile_step.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from run import bench_tokenizer, make_module, naive_step, our_step, synthetic_batch  # noqa: E402

from kava.distill.rkv import compress  # noqa: E402
from kava.model.teacher import teacher_forward  # noqa: E402


def median_time(fn, repeat: int = 5) -> float:
    fn()
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def main() -> None:
    tok = bench_tokenizer()
    module = make_module(tok, 24, 3).train()
    batch = synthetic_batch(16, 48, 64, len(tok))
    model, st = module.backbone, module.student

    def teacher():
        return teacher_forward(model, batch, "shared", question=module.method.share_question)

    t_out = teacher()

    def rkv():
        return compress(t_out.keys, t_out.values, t_out.importance, batch.cot_start, batch.cot_len, 24, 0.1)

    def student():
        return st(model, batch.s_q_ids, batch.s_q_mask, batch.s_a_ids, batch.s_a_mask, t_out.question)

    def forward_all():
        return module.compute_losses(batch)["loss"]

    def full():
        module.zero_grad(set_to_none=True)
        our_step(module, batch)

    parts = {
        "teacher forward (with importance capture)": median_time(teacher),
        "R-KV compression": median_time(rkv),
        "student forward (prefill + 3 Jacobi + answer)": median_time(student),
        "all forwards + losses": median_time(forward_all),
        "full step (forward + backward)": median_time(full),
    }
    print("| part | ms |\n|---|---|")
    for k, v in parts.items():
        print(f"| {k} | {1000 * v:.0f} |")
    backward = parts["full step (forward + backward)"] - parts["all forwards + losses"]
    print(f"| backward (full - forwards) | {1000 * backward:.0f} |")
    print("\n| question tokens | ours ms | naive ms | naive/ours |\n|---|---|---|---|")
    for q_len in (48, 128, 256):
        b = synthetic_batch(16, q_len, 64, len(tok))

        def ours(b=b):
            module.zero_grad(set_to_none=True)
            our_step(module, b)

        def naive(b=b):
            module.zero_grad(set_to_none=True)
            naive_step(module, b)

        o, n = median_time(ours, 3), median_time(naive, 3)
        print(f"| {q_len} | {1000 * o:.0f} | {1000 * n:.0f} | {n / o:.2f} |")


if __name__ == "__main__":
    main()
