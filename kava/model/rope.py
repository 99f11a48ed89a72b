"""Undo the rotary embedding of cached keys, for ``loss.key_space=pre_rope`` (docs/design.md §2.4).

The cache holds keys after RoPE. A RoPE key at position p is the pre-RoPE key rotated by p * theta_i in each
frequency pair, so rotating back by -p * theta_i (same cos, negated sin) recovers the key as the projection
(and any key norm) produced it, exactly, with no extra capture in the forward pass. Values carry no RoPE.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def unrotate_keys(model: PreTrainedModel, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Pre-RoPE keys from post-RoPE ``keys`` (..., N, d) at integer ``positions`` broadcastable to (..., N).

    Uses the model's own rotary module (so Llama-3 frequency scaling and Qwen's base are honoured).
    """
    rotary = model.get_decoder().rotary_emb
    pos = positions.expand(keys.shape[:-1]).reshape(1, -1).to(keys.device)
    cos, sin = rotary(keys.reshape(1, -1, keys.shape[-1]), position_ids=pos)
    cos, sin = cos.reshape(keys.shape).to(keys.dtype), sin.reshape(keys.shape).to(keys.dtype)
    return keys * cos - _rotate_half(keys) * sin
