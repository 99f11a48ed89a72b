"""The only place that touches the transformers KV-cache API.

transformers renamed ``past_key_values`` to ``cache`` during the 5.x series (5.17 has the old name, 5.24 the new
one and a deprecated alias); ``cache_kw`` and ``cache_of`` speak whichever the installed version does.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedConfig
from transformers.models.llama.modeling_llama import LlamaModel

CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def cache_kw(cache: DynamicCache | None) -> dict[str, Any]:
    """The keyword that passes ``cache`` to a model's forward in this transformers version."""
    return {CACHE_ARG: cache}


def cache_of(out: Any) -> DynamicCache | None:
    """The KV cache a model's forward returned."""
    return getattr(out, CACHE_ARG)


KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values of shape (B, H_kv, S, d)


@dataclass
class Prefix:
    """Tokens whose KV another pass already computed: per layer (B, H_kv, S, d), and the mask (B, S) over their
    columns (holes allowed: a right-padded question is followed by padding, or by the CoT, masked out)."""

    kv: KV
    mask: torch.Tensor


def layer_kv(cache: DynamicCache) -> KV:
    """Per-layer (keys, values); keys are post-RoPE, values plain, neither expanded to query heads."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def cache_from(prefix: KV, config: PreTrainedConfig) -> DynamicCache:
    """A fresh cache that starts from ``prefix``; appending to it never alters the prefix tensors."""
    return DynamicCache(list(prefix), config=config)


def slice_kv(kv: KV, start: int, end: int | None = None) -> KV:
    """The positions [start, end) of every layer."""
    return [(k[:, :, start:end], v[:, :, start:end]) for k, v in kv]


def stack_kv(kv: KV) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack layers into keys and values of shape (L, B, H_kv, S, d)."""
    return torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv])
