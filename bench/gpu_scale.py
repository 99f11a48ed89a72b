"""GPU check at real scale: a llama1b-shaped random-init model (bf16, LoRA r=128 on all linear layers, M=24,
T=3) trained for a few steps at the largest micro batch that fits; step time, tokens/s, peak memory; and
whether the fsdp and deepspeed strategies instantiate. Also the training-step and decoding comparisons of
``bench/run.py`` at this scale.

    python bench/gpu_scale.py [--shape llama1b|tiny] [--device cuda] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from run import floor_step, naive_step, our_step, synthetic_batch  # noqa: E402

from kava.data.collate import Batch  # noqa: E402
from kava.inference import cot_generate, latent_generate  # noqa: E402
from kava.lit_module import KAVALitModule  # noqa: E402

SHAPES = {
    "llama1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_layers": 16, "num_heads": 32, "num_kv_heads": 8,
                "vocab_size": 128256, "max_position_embeddings": 4096},
    "tiny": {"hidden_size": 128, "intermediate_size": 512, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
             "vocab_size": 512, "max_position_embeddings": 2048},
}  # fmt: skip


class VocabOnly:
    """Stands in for a tokenizer where only the size and special ids matter (random token ids are fed)."""

    def __init__(self, size: int) -> None:
        self.size, self.pad_token_id, self.bos_token_id, self.eos_token_id = size, 0, 1, 2

    def __len__(self) -> int:
        return self.size

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [5, 6, 7, 8]}

    def decode(self, ids) -> str:
        return ""

    def get_vocab(self) -> dict:
        return {}

    def convert_tokens_to_string(self, tokens) -> str:
        return ""


def build(shape: str, device: str) -> KAVALitModule:
    spec = SHAPES[shape]
    model = {"name": shape, "name_or_path": None, "init_seed": 0, "dtype": "bfloat16", "tiny": spec,
             "lora": {"r": 128, "alpha": 32, "dropout": 0.1, "target_modules": "all-linear"}}  # fmt: skip
    loss = {"alpha1": 10.0, "alpha2": 1.0, "kv_steps": "all", "kv_loss": "smooth_l1", "layerwise_std": True,
            "rkv_lambda": 0.1, "teacher_ce_weight": 1.0, "codi_std_norm": True}  # fmt: skip
    latent = {"num_tokens": 24, "num_iterations": 3, "use_projection": True}
    module = KAVALitModule(model, latent, {"mode": "shared"}, loss, {"lr": 1e-4, "weight_decay": 0.0},
                           tokenizer=VocabOnly(spec["vocab_size"]))  # fmt: skip
    return module.to(device).train()


def to(batch: Batch, device: str) -> Batch:
    return batch.to(device)


def largest_batch(module, device: str, vocab: int, candidates=(64, 32, 16, 8, 4, 2, 1)) -> int:
    for bsz in candidates:
        try:
            module.zero_grad(set_to_none=True)
            our_step(module, to(synthetic_batch(bsz, 64, 128, vocab), device))
            torch.cuda.synchronize()
            return bsz
        except torch.cuda.OutOfMemoryError:  # probing the memory limit is the point here
            module.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    raise RuntimeError("not even a micro batch of 1 fits")


def timed(fn, steps: int, device: str) -> float:
    times = []
    for _ in range(steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama1b", choices=list(SHAPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    dev = args.device
    vocab = SHAPES[args.shape]["vocab_size"]
    module = build(args.shape, dev)
    if dev.startswith("cuda"):
        print(torch.cuda.get_device_name(), flush=True)
        bsz = largest_batch(module, dev, vocab)
        torch.cuda.reset_peak_memory_stats()
    else:
        bsz = 4
    batch = to(synthetic_batch(bsz, 64, 128, vocab), dev)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def train_step():
        opt.zero_grad(set_to_none=True)
        our_step(module, batch)
        opt.step()

    t = timed(train_step, args.steps, dev)
    tokens = int(batch.t_mask.sum() + batch.s_q_mask.sum() + batch.s_a_mask.sum()) + bsz * 24 * 4
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.startswith("cuda") else float("nan")
    print(f"micro batch {bsz}: {t * 1000:.0f} ms/step, {tokens / t:.0f} tokens/s, peak {peak:.1f} GiB", flush=True)
    ratios = {}
    for name, fn in (("ours", our_step), ("naive", naive_step), ("floor", floor_step)):
        module.zero_grad(set_to_none=True)
        ratios[name] = timed(lambda fn=fn: fn(module, batch), max(2, args.steps // 2), dev)
    print(f"ours/naive {ratios['ours'] / ratios['naive']:.2f}, ours/floor {ratios['ours'] / ratios['floor']:.2f}")
    module.eval()
    q = to(synthetic_batch(64, 64, 0, vocab), dev)
    for b in (1, 64):
        q_ids, q_mask = q.s_q_ids[:b], q.s_q_mask[:b]
        tl = timed(
            lambda q_ids=q_ids, q_mask=q_mask: latent_generate(
                module.student, module.backbone, module.tokenizer, q_ids, q_mask, "The answer is:", 8, {2}
            ),
            2,
            dev,
        )
        tc = timed(
            lambda q_ids=q_ids, q_mask=q_mask: cot_generate(module.backbone, module.tokenizer, q_ids, q_mask, 72, {2}),
            2,
            dev,
        )
        print(f"decode batch {b}: latent {b / tl:.1f} q/s, CoT {b / tc:.1f} q/s ({tc / tl:.1f}x)")
    for name in ("fsdp", "deepspeed"):
        try:
            from lightning.pytorch import Trainer

            from kava.strategies import fsdp_strategy

            if name == "fsdp":
                strategy = fsdp_strategy()
            else:
                from lightning.pytorch.strategies import DeepSpeedStrategy

                strategy = DeepSpeedStrategy(stage=2)
            Trainer(accelerator="gpu", devices=1, strategy=strategy, logger=False, max_steps=1)
            print(f"{name}: instantiates")
        except Exception as err:  # noqa: BLE001  (a report line, not training)
            print(f"{name}: does not instantiate here: {err!r}")


if __name__ == "__main__":
    main()
