"""Loss terms of docs/design.md §2.5. Each returns the batch value and the per-sample values.

Per-sample values let a sample's losses be compared alone and inside a padded batch; the batch value of
the KV loss is the mean over every valid (b, l, h, m, d) entry, that of the CEs the mean of the samples'
token-mean CEs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kava.schema import KV_LOSSES, KV_SLOTS


def _elementwise(residual: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "smooth_l1":
        return F.smooth_l1_loss(residual, torch.zeros_like(residual), reduction="none")
    if kind == "mse":
        return residual.pow(2)
    if kind == "l1":
        return residual.abs()
    raise ValueError(f"loss.kv_loss must be one of {KV_LOSSES}, got '{kind}'")


def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``logits[:, j]`` (B, S, V) predicting ``targets[:, j]`` (-100 ignored); per-sample token
    mean. Every position gets a CE (0 where ignored), so no shape depends on the data (no host sync on a GPU); the CE
    is taken over the last dimension of (B * S, V) rows, not a strided (B, V, S) view."""
    targets = targets.to(logits.device)
    tok = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none", ignore_index=-100)
    return _per_sample(tok.view(targets.shape), targets != -100)


def target_logits(head: torch.nn.Module, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The LM head applied only at ``rows`` (``Batch.t_target_rows``) of ``hidden`` (B, S, D): (N, V). The question's
    and the padding's positions get no logits: at a 128k vocabulary their logits are a large part of the step's time
    and memory (docs/benchmarks.md). N is the length of ``rows``, known on the host: no sync."""
    return head(hidden.flatten(0, 1).index_select(0, rows.to(hidden.device)))


def selected_token_ce(
    logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_ce`` from ``target_logits``'s (N, V) rows: the same batch and per-sample values."""
    targets, rows = targets.to(logits.device), rows.to(logits.device)
    tok = F.cross_entropy(logits.float(), targets.flatten().index_select(0, rows), reduction="none")
    placed = tok.new_zeros(targets.numel()).index_copy(0, rows, tok)  # unique rows: no atomic adds
    return _per_sample(placed.view(targets.shape), targets != -100)


def _per_sample(tok: torch.Tensor, sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch value (mean of the samples') and per-sample token means of ``tok`` (B, S), 0 where not ``sel``."""
    per = tok.sum(-1) / sel.sum(-1).clamp(min=1)
    return per.mean(), per


def answer_only_targets(targets: torch.Tensor, first_answer_col: torch.Tensor) -> torch.Tensor:
    """``targets`` (B, S) with every column before ``first_answer_col`` (B,) set to -100: the CE then covers the
    answer tokens and EOS only, the paper's -(1/N_A) log p(A | Z, Q), not the fixed answer prompt ``P``."""
    cols = torch.arange(targets.shape[1], device=targets.device)[None]
    return targets.masked_fill(cols < first_answer_col.to(targets.device)[:, None], -100)


def layer_std(target: torch.Tensor, slot_masks: torch.Tensor) -> torch.Tensor:
    """Std of each layer's valid teacher entries under each of the T slot masks (T, B, M): (T, L, 1, 1, 1, 1); 1 where
    a layer has < 2 valid values. ``target`` is (L, B, H, M, d)."""
    w = slot_masks[:, None, :, None, :, None].to(target.dtype)  # (T, 1, B, 1, M, 1)
    n = slot_masks.sum(dim=(1, 2)).to(target.dtype)[:, None] * (target.shape[2] * target.shape[4])  # (T, 1)
    dims = (2, 3, 4, 5)
    mean = (target * w).sum(dim=dims) / n.clamp(min=1)  # (T, L)
    var = (((target - mean[..., None, None, None, None]) ** 2) * w).sum(dim=dims) / (n - 1).clamp(min=1)
    std = torch.where(n > 1, var.sqrt().clamp(min=1e-6), torch.ones_like(var))
    return std[..., None, None, None, None].detach()


def kv_steps_loss(
    s_keys: torch.Tensor,
    s_values: torch.Tensor,
    t_keys: torch.Tensor,
    t_values: torch.Tensor,
    slot_masks: torch.Tensor,
    kind: str,
    layerwise_std: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``L_t = (l(K_t - K~) + l(V_t - V~)) / 2`` over each step's valid slots, for the T steps at once: the student's
    K_t, V_t stacked (T, L, B, H, M, d), the targets (L, B, H, M, d), one slot mask (B, M) per step (T, B, M).
    Returns the steps' batch values (T,) and per-sample values (T, B)."""
    w = slot_masks[:, None, :, None, :, None].to(torch.float32)
    per_entry = s_keys.shape[1] * s_keys.shape[3] * s_keys.shape[5]  # values per slot of a sample (L * H * d)
    count_b = slot_masks.sum(-1).float() * per_entry  # (T, B)
    terms, per = [], []
    for s, t in ((s_keys, t_keys), (s_values, t_values)):
        t = t.detach().float()
        res = s.float() - t
        if layerwise_std:
            res = res / layer_std(t, slot_masks)
        per_b = (_elementwise(res, kind) * w).sum(dim=(1, 3, 4, 5))  # (T, B)
        terms.append(per_b.sum(-1) / count_b.sum(-1).clamp(min=1))
        per.append(per_b / count_b.clamp(min=1))
    return 0.5 * (terms[0] + terms[1]), 0.5 * (per[0] + per[1])


def kv_step_loss(
    s_keys: torch.Tensor,
    s_values: torch.Tensor,
    t_keys: torch.Tensor,
    t_values: torch.Tensor,
    slot_mask: torch.Tensor,
    kind: str,
    layerwise_std: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``kv_steps_loss`` of one step: all tensors (L, B, H, M, d), the slot mask (B, M); batch value and (B,)."""
    term, per = kv_steps_loss(s_keys[None], s_values[None], t_keys, t_values, slot_mask[None], kind, layerwise_std)
    return term[0], per[0]


def step_weights(spec: str | Sequence[float], num_steps: int) -> torch.Tensor:
    """Weights w_1..w_T of ``loss.kv_steps`` (all | last | linear | explicit list), normalised to sum 1.

    T = 0 (pause tokens: no Jacobi pass, so no latent KV to supervise) gives no weights.
    """
    if num_steps == 0:
        return torch.zeros(0)
    if isinstance(spec, str):
        if spec == "all":
            w = torch.ones(num_steps)
        elif spec == "last":
            w = torch.zeros(num_steps)
            w[-1] = 1.0
        elif spec == "linear":
            w = torch.arange(1, num_steps + 1, dtype=torch.float32)
        else:
            raise ValueError(f"loss.kv_steps must be all, last, linear or a list of T weights, got '{spec}'")
    else:
        w = torch.tensor([float(x) for x in spec])
        if w.numel() != num_steps:
            raise ValueError(
                f"loss.kv_steps lists {w.numel()} weights but latent.num_iterations is {num_steps}: give one per step"
            )
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"loss.kv_steps weights must be >= 0 with a positive sum, got {list(spec)}")
    return w / w.sum()


def step_slot_counts(spec: str, num_slots: int, num_steps: int) -> list[int]:
    """How many leading latent slots the KV loss of each Jacobi step t = 1..T covers (``loss.kv_slots``).

    ``all``: every slot at every step. ``progressive``: step t covers the first ceil(t * M / T) slots (the R-KV
    targets are sorted by CoT position), so early passes are asked for the start of the CoT only and the last pass
    for all of it; with T = M this is Jacobi's own order, where pass t fixes latent t. Dense supervision with
    ``all`` pulls every pass to the same targets and the passes collapse to a fixed point (docs/study.md).
    """
    if spec == "all":
        return [num_slots] * num_steps
    if spec == "progressive":
        return [-(-t * num_slots // num_steps) for t in range(1, num_steps + 1)]
    raise ValueError(f"loss.kv_slots must be one of {', '.join(KV_SLOTS)}, got '{spec}'")


def codi_loss(s_hidden: torch.Tensor, t_hidden: torch.Tensor, std_norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth-L1 between student and detached teacher hidden states (L, B, D), per layer / teacher std."""
    t = t_hidden.detach().float()
    e = F.smooth_l1_loss(s_hidden.float(), t, reduction="none")  # (L, B, D)
    if std_norm:
        std = t.flatten(1).std(dim=1) if t.shape[1] * t.shape[2] > 1 else torch.ones(t.shape[0], device=t.device)
        e = e / std.clamp(min=1e-6).view(-1, 1, 1)
    per = e.mean(dim=(0, 2))  # mean over layers and D, per sample
    return per.mean(), per
