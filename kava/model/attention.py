"""Attention function that runs SDPA and, on request, records R-KV importance scores.

The importance of a key is the attention probability that the answer-span queries put on it (softmax over
everything each query can see), max-pooled over the query heads of each KV head's group and averaged over
the answer-span queries. Only the answer rows of ``softmax(q k^T * scale + mask)`` are computed, so the
extra memory is O(rows x keys) per layer and no eager attention or (S x S) probability matrix is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_IMPLEMENTATION = "kava_sdpa"


@dataclass
class ImportanceCapture:
    """Answer-row query positions of a batch, and the per-layer importance recorded for them."""

    rows: torch.Tensor  # (B, R) long, query positions whose attention defines importance
    row_mask: torch.Tensor  # (B, R) bool, which of the R slots are real rows
    scores: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, H_kv, S_k) float32

    def stacked(self) -> torch.Tensor:
        """Importance of every layer, shape (L, B, H_kv, S_k)."""
        if not self.scores:
            raise RuntimeError(
                "no importance was recorded: the model does not use the "
                f"'{ATTN_IMPLEMENTATION}' attention implementation (see kava.model.backbone)"
            )
        return torch.stack([self.scores[i] for i in sorted(self.scores)])


_ACTIVE: list[ImportanceCapture] = []


@contextmanager
def capture_importance(rows: torch.Tensor, row_mask: torch.Tensor) -> Iterator[ImportanceCapture]:
    """Record answer-row importance in every attention call made inside the block."""
    cap = ImportanceCapture(rows=rows, row_mask=row_mask.bool())
    _ACTIVE.append(cap)
    try:
        yield cap
    finally:
        _ACTIVE.pop()


def _answer_row_bias(attention_mask: torch.Tensor | None, rows: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
    """Additive bias (B, 1, R, S_k) of the given query rows, from whatever mask form the model built."""
    device = rows.device
    if attention_mask is None:  # the model skipped the mask: plain causal, queries aligned to the end
        q_abs = rows + (k_len - q_len)
        allowed = torch.arange(k_len, device=device)[None, None, :] <= q_abs[:, :, None]
        return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))[:, None]
    mask = attention_mask
    if mask.shape[-1] != k_len:
        mask = mask[..., :k_len]
    idx = rows[:, None, :, None].expand(rows.shape[0], mask.shape[1], rows.shape[1], k_len)
    picked = mask.expand(rows.shape[0], -1, -1, -1).gather(2, idx)
    if picked.dtype == torch.bool:
        return torch.zeros(picked.shape, device=device).masked_fill(~picked, float("-inf"))
    return picked.float()


@torch.no_grad()
def _record(
    cap: ImportanceCapture,
    layer_idx: int,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
) -> None:
    bsz, n_q_heads, q_len, head_dim = query.shape
    n_kv = key.shape[1]
    group = n_q_heads // n_kv
    rows = cap.rows.to(query.device)
    n_rows = rows.shape[1]
    q_rows = query.gather(2, rows[:, None, :, None].expand(bsz, n_q_heads, n_rows, head_dim))
    q_rows = q_rows.view(bsz, n_kv, group, n_rows, head_dim).float()
    logits = torch.einsum("bhgrd,bhsd->bhgrs", q_rows, key.float()) * scaling
    bias = _answer_row_bias(attention_mask, rows, q_len, key.shape[2])  # (B, 1, R, S)
    probs = torch.softmax(logits + bias[:, :, None], dim=-1).nan_to_num(0.0)
    pooled = probs.amax(dim=2)  # max over the query heads of each KV head: (B, H, R, S)
    weights = cap.row_mask.to(pooled.dtype)[:, None, :, None]
    denom = cap.row_mask.sum(-1).clamp(min=1).to(pooled.dtype)[:, None, None]
    cap.scores[layer_idx] = (pooled * weights).sum(2) / denom


def kava_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA attention; also records answer-row importance while a capture is active."""
    out = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if _ACTIVE:
        scaling = kwargs.get("scaling") or getattr(module, "scaling", None) or query.shape[-1] ** -0.5
        _record(_ACTIVE[-1], module.layer_idx, query, key, attention_mask, scaling)
    return out


AttentionInterface.register(ATTN_IMPLEMENTATION, kava_sdpa_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
