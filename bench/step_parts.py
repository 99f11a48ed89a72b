"""Where KaVa's step spends the time its floors do not: the step with each part of the method's own work left out.

Section 1's bench model and batch (bench/run.py), ours, the floor and the pass floor, and ours with one part at a
time replaced by a stand-in of the same shapes: the importance capture (zeros), R-KV (the target of a first,
untimed call), the KV loss with each pass's latent KV stacking (none), the CODI term (zero) and the projection
(identity); then all five at once. Timing only: the variants' losses are not the method's. Interleaved rounds on one
module (the same weights), glibc's heap kept steady; the medians of the per-round ratios are printed. What is left of
"ours without its own work" over the pass floor is the rest of the method's bookkeeping (special embeddings,
positions, the teacher's hidden states, the CE terms' selections); the pass floor over the floor is what the T + 1
dependent student calls cost.

    OMP_NUM_THREADS=2 python bench/step_parts.py [--rounds 31]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from run import (  # noqa: E402
    bench_tokenizer,
    floor_step,
    fmt_ratio,
    interleaved_rounds,
    make_module,
    our_step,
    paired_ratio,
    pass_floor_step,
    steady_allocator,
    synthetic_batch,
)

import kava.model.attention  # noqa: E402
import kava.model.student  # noqa: E402


def stand_ins(module, batch) -> dict[str, list[tuple[object, str, object]]]:
    """Each part's stand-in: the (owner, attribute, replacement) triples that put it in place."""
    method = module.method
    target = method.compress_target(batch, method.teacher_pass(batch, capture=True))

    def zero_importance(cap, layer_idx, query, key, attention_mask, scaling):
        cap.scores[layer_idx] = key.new_zeros(key.shape[:3])

    def no_codi(batch, s, t):
        zero = s.answer_logits.sum() * 0
        return zero, zero.expand(batch.s_q_ids.shape[0])

    return {
        "importance capture": [(kava.model.attention, "_record", zero_importance)],
        "R-KV": [(method, "compress_target", lambda batch, t: target)],
        "KV loss": [
            (method, "kv_in_key_space", lambda batch, target, s: ([], target.keys)),
            (kava.model.student, "stack_kv", lambda kv: kv[0]),
        ],
        "CODI": [(method, "codi_term", no_codi)],
        "projection": [(method.student, "project", lambda h: h)],
    }


def without(patches: list[tuple[object, str, object]]) -> Callable:
    """Our step with the given stand-ins in place (``mock.patch.object``) for its duration."""

    def step(module, batch):
        with ExitStack() as stack:
            for owner, name, value in patches:
                stack.enter_context(mock.patch.object(owner, name, value))
            return our_step(module, batch)

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=31)
    args = ap.parse_args()
    steady = steady_allocator()
    tok = bench_tokenizer()
    batch = synthetic_batch(16, 48, 64, len(tok))
    module = make_module(tok, 24, 3).train()
    parts = stand_ins(module, batch)
    fns = {"ours": our_step, "floor": floor_step, "pass floor": pass_floor_step}
    fns |= {f"ours without {name}": without(patches) for name, patches in parts.items()}
    fns["ours without all five"] = without([p for patches in parts.values() for p in patches])
    times = interleaved_rounds({k: (fn, module) for k, fn in fns.items()}, batch, args.rounds)
    print(f"threads={torch.get_num_threads()} rounds={args.rounds} steady_heap={steady}\n")
    print("| step | ms | ours / it | it / pass floor | it / floor |\n|---|---|---|---|---|")
    for name, ts in times.items():
        cols = [fmt_ratio(paired_ratio(times, a, b)) if a != b else "–" for a, b in
                (("ours", name), (name, "pass floor"), (name, "floor"))]  # fmt: skip
        print(f"| {name} | {1000 * statistics.median(ts):.0f} | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main()
