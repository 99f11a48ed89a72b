"""Per-term gradient diagnostics: how large each loss term's gradient is and whether it agrees with the answer CE.

Each term enters the total loss with a weight (``alpha1`` for ``codi``, ``alpha2 * w_t`` for ``kv_step_t``...);
the diagnostics take the gradient of the *weighted* term, i.e. the part of the update it is responsible for, on
the parameters that train, split into groups (``lora``, ``prj``, ``special``). A term whose gradient norm dwarfs the
student CE's and whose cosine with it is negative pulls the student away from answering.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch


def param_group(name: str) -> str:
    """The group a trainable parameter belongs to, by its module name."""
    if name.startswith("method.student.prj"):
        return "prj"
    if name.startswith("method.student.special"):
        return "special"
    return "lora" if "lora_" in name else "backbone"


def weighted_terms(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """The terms that enter the loss with a non-zero weight, multiplied by it (a term may be a per-step KV loss)."""
    return {k: w * terms[k] for k, w in weights.items() if w != 0 and k in terms and terms[k].requires_grad}


def term_gradients(
    terms: Mapping[str, torch.Tensor], named_params: list[tuple[str, torch.nn.Parameter]], reference: str = "student_ce"
) -> dict[str, float]:
    """Norm of each term's gradient (overall and per parameter group) and its cosine with ``reference``'s.

    ``terms`` must share one autograd graph (it is kept until the last term). Returns flat names:
    ``<term>_norm``, ``<term>_norm_<group>``, ``<term>_cos_ce`` (the reference's own cosine is omitted) and
    ``<term>_share``: the term's norm over the sum of all terms' norms.
    """
    params = [p for _, p in named_params]
    groups = [param_group(n) for n, _ in named_params]
    flat: dict[str, torch.Tensor] = {}
    names = list(terms)
    for i, name in enumerate(names):
        grads = torch.autograd.grad(terms[name], params, retain_graph=i < len(names) - 1, allow_unused=True)
        flat[name] = torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).detach().float().flatten()
                for g, p in zip(grads, params, strict=True)
            ]
        )
    sizes = [p.numel() for p in params]
    out: dict[str, float] = {}
    total = sum(float(v.norm()) for v in flat.values()) or 1.0
    ref = flat.get(reference)
    for name, g in flat.items():
        out[f"{name}_norm"] = float(g.norm())
        out[f"{name}_share"] = float(g.norm()) / total
        for grp in sorted(set(groups)):
            parts = [c for c, gr in zip(g.split(sizes), groups, strict=True) if gr == grp]
            out[f"{name}_norm_{grp}"] = float(torch.cat(parts).norm())
        if ref is not None and name != reference:
            denom = (g.norm() * ref.norm()).clamp(min=1e-30)
            out[f"{name}_cos_ce"] = float(torch.dot(g, ref) / denom)
    return out


class GradientDiagnostics(L.Callback):
    """Every ``every_n_steps`` optimizer steps, log ``train/grad/<term>_{norm,share,cos_ce}`` for the batch.

    Runs one extra forward and one backward per term on the training batch (off by default, ``every_n_steps=0``:
    it costs about ``1 + number of terms`` steps each time). Terms are weighted as in the total loss.
    """

    def __init__(self, every_n_steps: int = 0, per_group: bool = False) -> None:
        if every_n_steps < 0:
            raise ValueError(f"diagnostics.grad_every_n_steps must be >= 0 (0 = off), got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.per_group = per_group

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step % self.every_n_steps or batch_idx % max(trainer.accumulate_grad_batches, 1):
            return
        named = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad():  # LoRA dropout: leave training's RNG alone
            terms = pl_module.compute_losses(batch)
            weighted = weighted_terms(terms, pl_module.loss_weights())
            stats = term_gradients(weighted, named)
        keep = {f"train/grad/{k}": v for k, v in stats.items() if self.per_group or "_norm_" not in k}
        for logger in trainer.loggers:
            logger.log_metrics(keep, step=step)


def kv_cosine_sums(
    latent_kv: list[tuple[torch.Tensor, torch.Tensor]],
    t_keys: torch.Tensor,
    t_values: torch.Tensor,
    slot_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine of each latent's K and V at each Jacobi step with its R-KV target, summed over batch and KV heads.

    ``latent_kv[t]`` = (K_t, V_t), each (L, B, H, M, d); targets (L, B, H, M, d); ``slot_mask`` (B, M).
    Returns ``sums`` of shape (T, 2, L, M) (index 0 = keys, 1 = values) and ``counts`` (M,) = valid (b, h)
    pairs per slot, so that ``sums / counts`` is the mean cosine per step, K/V, layer and slot (accumulate both
    over batches before dividing).
    """
    w = slot_mask.to(torch.float32)[None, :, None, :]  # (1, B, 1, M)
    rows = []
    for k_t, v_t in latent_kv:
        cos = [
            torch.nn.functional.cosine_similarity(s.detach().float(), t.detach().float(), dim=-1, eps=1e-8)
            for s, t in ((k_t, t_keys), (v_t, t_values))
        ]  # each (L, B, H, M)
        rows.append(torch.stack([(c * w).sum(dim=(1, 2)) for c in cos]))  # (2, L, M)
    counts = slot_mask.to(torch.float32).sum(0) * t_keys.shape[2]
    return torch.stack(rows), counts


def pass_change_sums(latent_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """How far each Jacobi pass's latent KV is from the last pass's: rows ``[sum ||KV_t - KV_T||^2, sum
    ||KV_T||^2]`` (K and V together, summed over layers, batch, heads, slots), shape (T, 2).

    ``sqrt(row[0] / row[1])`` (after summing over batches) is the relative change; values near 0 at every t mean the
    passes have settled on a fixed point at the first one and the later passes add no computation.
    """
    k_last, v_last = (x.detach().float() for x in latent_kv[-1])
    den = k_last.pow(2).sum() + v_last.pow(2).sum()
    rows = []
    for k_t, v_t in latent_kv:
        num = (k_t.detach().float() - k_last).pow(2).sum() + (v_t.detach().float() - v_last).pow(2).sum()
        rows.append(torch.stack([num, den]))
    return torch.stack(rows)
