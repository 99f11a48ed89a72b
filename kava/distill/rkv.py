"""R-KV compression of the teacher's CoT cache to M entries per (sample, layer, KV head) (docs/design.md §2.4).

Score ``S_i = lambda * I_i + (1 - lambda) * R_i`` over the valid CoT positions, with importance ``I`` from
the teacher's answer-span attention and redundancy ``R_i = softmax_i(-rho_i)``, ``rho_i`` the mean cosine
similarity of key i to the other valid CoT keys. The top-M are kept and re-sorted by position. Everything
is batched over samples, layers and heads, and never forms the (C x C) similarity matrix (``rho`` is a dot product
with the sum of the normalised keys); ``layer_chunk`` only bounds the gathered span's memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CompressedKV:
    keys: torch.Tensor  # (L, B, H, M, d)
    values: torch.Tensor  # (L, B, H, M, d)
    mask: torch.Tensor  # (B, M) bool: slot m holds a real CoT entry
    index: torch.Tensor  # (L, B, H, M) CoT-relative positions kept (sorted; invalid slots point at 0)


def longest(length: torch.Tensor) -> int:
    """The longest span of ``length`` (B,), read on the host (a sync on a GPU: a batch carries it as ``cot_span``)."""
    return int(length.max()) if length.numel() else 0


def gather_span(
    x: torch.Tensor, start: torch.Tensor, length: torch.Tensor, span: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Take each sample's span [start, start+length) of the position axis (dim 3 of (L, B, H, S, ...)).

    Returns the spans right-padded to ``span`` (the longest, ``longest(length)``), and a (B, C) validity mask.
    """
    offs = torch.arange(span, device=x.device)
    valid = offs[None] < length[:, None].to(x.device)  # (B, C)
    pos = (start[:, None].to(x.device) + offs[None]).clamp(max=x.shape[3] - 1) * valid
    n_l, bsz, n_h = x.shape[:3]
    shape = (n_l, bsz, n_h, span) + x.shape[4:]
    idx = pos.view(1, bsz, 1, span, *([1] * (x.dim() - 4))).expand(shape)
    return x.gather(3, idx), valid


def redundancy(keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``R = softmax(-rho)`` over valid positions; keys (L, B, H, C, d), valid (B, C) -> (L, B, H, C)."""
    kn = torch.nn.functional.normalize(keys.float(), dim=-1)
    vf = valid.to(kn.dtype)[None, :, None]  # (1, B, 1, C)
    # sum_j valid_j cos(k_i, k_j) = k_i . (sum_j valid_j k_j): O(C d), no (C x C) similarity matrix
    total = (kn @ (kn * vf[..., None]).sum(-2)[..., None]).squeeze(-1) - (kn * kn).sum(-1) * vf  # other valid keys
    n_other = (valid.sum(-1).to(kn.dtype) - 1).clamp(min=1)[None, :, None, None]
    rho = total / n_other
    neg_inf = torch.finfo(rho.dtype).min
    return torch.softmax((-rho).masked_fill(~valid[None, :, None], neg_inf), dim=-1) * vf


def select(score: torch.Tensor, valid: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-m valid positions per (layer, sample, head), sorted by position; returns index and slot mask (B, m)."""
    n_l, bsz, n_h, c = score.shape
    if c < m:  # fewer CoT positions than slots in the whole batch: pad the candidate axis
        score = torch.cat([score, score.new_zeros(n_l, bsz, n_h, m - c)], dim=-1)
        valid = torch.cat([valid, valid.new_zeros(bsz, m - c)], dim=-1)
        c = m
    masked = score.masked_fill(~valid[None, :, None], float("-inf"))
    top = masked.topk(m, dim=-1).indices
    n_valid = valid.sum(-1)  # (B,)
    slot_mask = torch.arange(m, device=score.device)[None] < n_valid[:, None]  # (B, m)
    # invalid picks (only when n_valid < m) sort to the end, then point at position 0
    keyed = torch.where(valid[None, :, None].expand_as(masked).gather(-1, top), top, top + c)
    idx = keyed.sort(dim=-1).values
    return torch.where(slot_mask[None, :, None], idx, torch.zeros_like(idx)), slot_mask


def compress(
    keys: torch.Tensor,
    values: torch.Tensor,
    importance: torch.Tensor,
    cot_start: torch.Tensor,
    cot_len: torch.Tensor,
    num_slots: int,
    lam: float,
    layer_chunk: int | None = None,
    span: int | None = None,
) -> CompressedKV:
    """Compress the CoT span of the teacher cache (L, B, H, S, d) to ``num_slots`` entries, detached. ``span``: the
    longest ``cot_len`` when the caller knows it on the host (``Batch.cot_span``); None reads it from ``cot_len``."""
    span = longest(cot_len) if span is None else span
    with torch.no_grad():
        k_cot, valid = gather_span(keys, cot_start, cot_len, span)
        v_cot, _ = gather_span(values, cot_start, cot_len, span)
        imp, _ = gather_span(importance, cot_start, cot_len, span)
        chunk = layer_chunk or keys.shape[0]
        red = (
            torch.cat([redundancy(k_cot[i : i + chunk], valid) for i in range(0, keys.shape[0], chunk)])
            if k_cot.shape[3]
            else imp.float()
        )
        score = lam * imp.float() + (1.0 - lam) * red
        idx, slot_mask = select(score, valid, num_slots)
        if k_cot.shape[3] == 0:  # no CoT at all in the batch: every slot is invalid
            shape = keys.shape[:3] + (num_slots, keys.shape[-1])
            zeros = keys.new_zeros(shape)
            return CompressedKV(zeros, zeros.clone(), slot_mask, idx)
        gidx = idx.clamp(max=k_cot.shape[3] - 1)[..., None].expand(*idx.shape, keys.shape[-1])
        k_sel = k_cot.gather(3, gidx) * slot_mask[None, :, None, :, None]
        v_sel = v_cot.gather(3, gidx) * slot_mask[None, :, None, :, None]
    return CompressedKV(k_sel, v_sel, slot_mask, idx)
