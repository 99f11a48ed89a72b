"""``method=kava``: the latent student distilled from the teacher's R-KV-compressed CoT cache (the paper), with
the KV loss at every Jacobi step (dense supervision, ``loss.kv_steps``), the CODI term and the shared teacher's CE."""

from __future__ import annotations

from typing import Any

import torch

from kava.data.collate import Batch
from kava.diagnostics import kv_cosine_sums, pass_change_sums
from kava.distill.losses import kv_steps_loss, step_slot_counts, step_weights
from kava.distill.rkv import CompressedKV, compress
from kava.methods.base import LatentMethod, Terms
from kava.model.rope import unrotate_keys
from kava.model.student import StudentOutput
from kava.model.teacher import TeacherOutput


class KaVa(LatentMethod):
    """Logs ``student_ce``, ``teacher_ce``, ``codi``, ``kv_step_1..T``, ``kv_total`` and ``loss``; at validation
    also the cosine of each latent's K and V with its target (``kv_cosine``, shape (T, 2, L, M))."""

    def __init__(self, **parts: Any) -> None:
        super().__init__(**parts)
        loss, latent = self.loss_cfg, self.latent_cfg
        self.key_space = loss.key_space
        self.kv_weights = step_weights(loss.kv_steps, latent.num_iterations).tolist()  # floats: no device copy
        self.kv_slots = step_slot_counts(loss.kv_slots, latent.num_tokens, latent.num_iterations)

    def distill_forward(self, batch: Batch) -> tuple[TeacherOutput, CompressedKV, StudentOutput]:
        """The teacher pass, its R-KV-compressed CoT cache and the student passes of one batch."""
        t = self.teacher_pass(batch, capture=True)
        return t, self.compress_target(batch, t), self.student_pass(batch, t)

    def compress_target(self, batch: Batch, t: TeacherOutput) -> CompressedKV:
        """The teacher's CoT cache compressed by R-KV to the student's M slots (``loss.rkv_lambda``)."""
        return compress(
            t.keys,
            t.values,
            t.importance,
            batch.cot_start,
            batch.cot_len,
            self.student.num_tokens,
            lam=self.loss_cfg.rkv_lambda,
            layer_chunk=self.loss_cfg.rkv_layer_chunk,
            span=batch.cot_span,
        )

    def losses(self, batch: Batch) -> tuple[Terms, Terms]:
        return self.terms(batch, *self.distill_forward(batch))

    def terms(
        self,
        batch: Batch,
        t: TeacherOutput,
        target: CompressedKV,
        s: StudentOutput,
        kv: tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor] | None = None,
    ) -> tuple[Terms, Terms]:
        """Every term from the passes (``loss`` not included: ``total``); ``kv`` is ``kv_in_key_space``'s result when
        the caller already has it."""
        cfg = self.loss_cfg
        terms, per = self.ce_terms(batch, s, t)
        terms["codi"], per["codi"] = self.codi_term(batch, s, t)
        weights = self.kv_weights
        kv_total = torch.zeros((), device=s.answer_logits.device)
        kv_per = torch.zeros_like(per["codi"])
        latent_kv, t_keys = kv if kv is not None else self.kv_in_key_space(batch, target, s)
        if latent_kv:  # the T steps in one computation
            slots = torch.arange(target.mask.shape[-1], device=target.mask.device)
            masks = torch.stack([target.mask & (slots < n) for n in self.kv_slots])  # each step's leading slots
            keys, values = torch.stack([k for k, _ in latent_kv]), torch.stack([v for _, v in latent_kv])
            step, step_per = kv_steps_loss(keys, values, t_keys, target.values, masks, cfg.kv_loss, cfg.layerwise_std)
            for i in range(len(latent_kv)):
                name = f"kv_step_{i + 1}"
                terms[name], per[name] = step[i], step_per[i]
                kv_total = kv_total + weights[i] * terms[name]
                kv_per = kv_per + weights[i] * per[name]
        terms["kv_total"], per["kv_total"] = kv_total, kv_per  # logged; ``loss`` weighs the steps one by one
        return terms, per

    def kv_in_key_space(
        self, batch: Batch, target: CompressedKV, s: StudentOutput
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """The student's (K_t, V_t) per Jacobi step and the target keys in ``loss.key_space``.

        ``post_rope`` compares the keys as cached; ``pre_rope`` rotates both sides back to position 0, so that a
        latent at position ``nq + 1 + m`` is not asked to reproduce the rotation of a CoT token at ``nq + j``.
        """
        if self.key_space == "post_rope":
            return s.latent_kv, target.keys
        dev = target.keys.device
        m = self.student.num_tokens
        s_pos = self.student.place(batch.s_q_mask.sum(-1)[:, None] + 1 + torch.arange(m, device=dev)[None], 1)
        t_pos = batch.cot_start.to(dev)[None, :, None, None] + target.index  # (L, B, H, M)
        t_keys = unrotate_keys(self.backbone, target.keys, t_pos) * target.mask[None, :, None, :, None]
        latent_kv = [(unrotate_keys(self.backbone, k, s_pos[None, :, None, :]), v) for k, v in s.latent_kv]
        return latent_kv, t_keys

    def loss_weights(self) -> dict[str, float]:
        cfg = self.loss_cfg
        weights = {"student_ce": 1.0, "teacher_ce": self.teacher_ce_weight, "codi": cfg.alpha1}
        for i, w in enumerate(self.kv_weights):
            weights[f"kv_step_{i + 1}"] = cfg.alpha2 * w
        return weights

    def validation_losses(self, batch: Batch) -> tuple[Terms, dict[str, torch.Tensor]]:
        t, target, s = self.distill_forward(batch)
        latent_kv, t_keys = self.kv_in_key_space(batch, target, s)
        terms, _ = self.total(*self.terms(batch, t, target, s, kv=(latent_kv, t_keys)))
        if not latent_kv:  # none for pause tokens (T = 0)
            return terms, {}
        sums, counts = kv_cosine_sums(latent_kv, t_keys, target.values, target.mask)
        return terms, {"kv_cos_sums": sums, "kv_cos_counts": counts, "kv_pass_change": pass_change_sums(s.latent_kv)}

    def summarize(self, stats: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """``kv_cos_{k,v}_step_t``: the mean cosine of each latent slot's K / V with its R-KV target, per step;
        ``kv_pass_change_step_t`` (t < T): the relative distance of pass t's latent KV from the last pass's; and the
        tensor ``kv_cosine`` (T, 2, L, M) for the figure (kava.callbacks.KVCosineFigure)."""
        if "kv_cos_sums" not in stats:
            return {}, {}
        sums, counts = stats["kv_cos_sums"], stats["kv_cos_counts"]
        cosine = (sums / counts.clamp(min=1)).detach().cpu()
        valid = (counts > 0).cpu()
        out = {}
        for i in range(cosine.shape[0]):
            for j, kind in enumerate(("k", "v")):
                value = cosine[i, j][:, valid].mean() if valid.any() else torch.tensor(0.0)
                out[f"kv_cos_{kind}_step_{i + 1}"] = float(value)
        change = stats.get("kv_pass_change")
        if change is not None:
            for i in range(change.shape[0] - 1):
                out[f"kv_pass_change_step_{i + 1}"] = float((change[i, 0] / change[i, 1].clamp(min=1e-12)).sqrt())
        return out, {"kv_cosine": cosine}
