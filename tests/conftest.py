"""Shared fixtures: a tiny GQA backbone, its tokenizer and batches of synthetic samples."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("KAVA_CACHE", tempfile.mkdtemp(prefix="kava-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402

import kava.config  # noqa: E402,F401
from kava.data.collate import collate  # noqa: E402
from kava.data.sequences import encode  # noqa: E402
from kava.data.synthetic import generate_records  # noqa: E402
from kava.data.tokenizer import train_tiny_tokenizer  # noqa: E402
from kava.lit_module import KAVALitModule  # noqa: E402

TINY = {
    "name": "tiny",
    "name_or_path": None,
    "tokenizer_path": None,
    "init_seed": 0,
    "dtype": "float32",
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "vocab_size": 300,
        "max_position_embeddings": 512,
    },
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
}
LOSS = {
    "alpha1": 10.0,
    "alpha2": 1.0,
    "kv_steps": "all",
    "kv_slots": "all",
    "kv_loss": "smooth_l1",
    "layerwise_std": True,
    "rkv_lambda": 0.1,
    "teacher_ce_weight": 1.0,
    "codi_std_norm": True,
}
OPTIM = {"lr": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0}


@pytest.fixture(scope="session")
def records():
    return generate_records(16, seed=7, num_steps=3)


@pytest.fixture(scope="session")
def tokenizer(records):
    texts = [r.question for r in records] + [" " + " ".join(r.steps) for r in records] + [" The answer is: 0"]
    return train_tiny_tokenizer(texts, vocab_size=300)


def make_module(tokenizer, m: int = 4, t: int = 3, mode: str = "shared", **loss) -> KAVALitModule:
    torch.manual_seed(0)
    module = KAVALitModule(
        model=TINY,
        latent={
            "num_tokens": m,
            "num_iterations": t,
            "use_projection": True,
            "proj_dim": None,
            "align_positions": False,
        },
        teacher={"mode": mode},
        loss={**LOSS, **loss},
        optim=OPTIM,
        tokenizer=tokenizer,
    )
    with torch.no_grad():  # non-zero LoRA B, so adapters change the output
        for n, p in module.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return module.eval()


@pytest.fixture
def module(tokenizer):
    return make_module(tokenizer)


@pytest.fixture(scope="session")
def segments(records, tokenizer):
    return [encode(r, tokenizer) for r in records]


@pytest.fixture
def batch(segments, tokenizer):
    return collate(segments[:4], tokenizer.pad_token_id)
