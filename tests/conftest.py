"""Shared fixtures: a tiny GQA backbone, its tokenizer and batches of synthetic samples."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("KAVA_CACHE", tempfile.mkdtemp(prefix="kava-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import TINY_MODULE, module_sections  # noqa: E402

import kava.config  # noqa: E402,F401
from kava.data.collate import collate  # noqa: E402
from kava.data.sequences import encode  # noqa: E402
from kava.data.synthetic import generate_records  # noqa: E402
from kava.data.tokenizer import train_tiny_tokenizer  # noqa: E402
from kava.lit_module import KAVALitModule  # noqa: E402


@pytest.fixture(scope="session")
def records():
    return generate_records(16, seed=7, num_steps=3)


@pytest.fixture(scope="session")
def tokenizer(records):
    texts = [r.question for r in records] + [" " + " ".join(r.steps) for r in records] + [" The answer is: 0"]
    return train_tiny_tokenizer(texts, vocab_size=300)


def make_module(
    tokenizer, m: int = 4, t: int = 3, mode: str = "shared", extra: Sequence[str] = (), **loss
) -> KAVALitModule:
    """The real config (``TINY_MODULE``) with M, T, the teacher mode, ``extra`` overrides and ``loss.<key>``
    overrides, and non-zero LoRA B, so that the adapters change the output."""
    overrides = [*TINY_MODULE, f"latent.num_tokens={m}", f"latent.num_iterations={t}", f"teacher.mode={mode}", *extra]
    overrides += [f"loss.{k}={v}" for k, v in loss.items()]
    torch.manual_seed(0)
    module = KAVALitModule(**module_sections(overrides), tokenizer=tokenizer)
    with torch.no_grad():
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
