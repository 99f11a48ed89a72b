"""``method=kava``: the latent student distilled from the teacher's R-KV-compressed CoT cache (the paper), with
the KV loss at every Jacobi step (dense supervision, ``loss.kv_steps``), the CODI term and the shared teacher's CE."""

from __future__ import annotations

import torch

from kava.data.collate import Batch
from kava.diagnostics import kv_cosine_sums, pass_change_sums
from kava.distill.losses import kv_step_loss, step_slot_counts, step_weights
from kava.distill.rkv import CompressedKV, compress
from kava.methods.base import LatentMethod, Parts, Terms
from kava.model.rope import unrotate_keys
from kava.model.student import StudentOutput
from kava.model.teacher import TeacherOutput
from kava.schema import LatentSchema, LossSchema, TeacherSchema


class KaVa(LatentMethod):
    """Logs ``student_ce``, ``teacher_ce``, ``codi``, ``kv_step_1..T``, ``kv_total`` and ``loss``; at validation
    also the cosine of each latent's K and V with its target (``kv_cosine``, shape (T, 2, L, M))."""

    def __init__(self, loss: LossSchema, teacher: TeacherSchema, latent: LatentSchema) -> None:
        super().__init__(loss, teacher, latent)
        self.key_space = loss.key_space
        self.kv_weights = step_weights(loss.kv_steps, latent.num_iterations)
        self.kv_slots = step_slot_counts(loss.kv_slots, latent.num_tokens, latent.num_iterations)
        self.kv_cosine: torch.Tensor | None = None  # (T, 2, L, M) from the last validation; see kava.diagnostics

    def distill_forward(self, parts: Parts, batch: Batch) -> tuple[TeacherOutput, CompressedKV, StudentOutput]:
        """The teacher pass, its R-KV-compressed CoT cache and the student passes of one batch."""
        t = self.teacher_pass(parts, batch, capture=True)
        return t, self.compress_target(parts, batch, t), self.student_pass(parts, batch)

    def compress_target(self, parts: Parts, batch: Batch, t: TeacherOutput) -> CompressedKV:
        """The teacher's CoT cache compressed by R-KV to the student's M slots (``loss.rkv_lambda``)."""
        return compress(
            t.keys,
            t.values,
            t.importance,
            batch.cot_start,
            batch.cot_len,
            parts.student.num_tokens,
            lam=self.loss_cfg.rkv_lambda,
            layer_chunk=self.loss_cfg.rkv_layer_chunk,
        )

    def losses(self, parts: Parts, batch: Batch) -> tuple[Terms, Terms]:
        return self.terms(parts, batch, *self.distill_forward(parts, batch))

    def terms(
        self,
        parts: Parts,
        batch: Batch,
        t: TeacherOutput,
        target: CompressedKV,
        s: StudentOutput,
        kv: tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor] | None = None,
    ) -> tuple[Terms, Terms]:
        """Every term from the passes; ``kv`` is ``kv_in_key_space``'s result when the caller already has it."""
        cfg = self.loss_cfg
        terms, per = self.ce_terms(batch, s, t)
        terms["codi"], per["codi"] = self.codi_term(parts, batch, s, t)
        weights = self.kv_weights.to(s.answer_logits.device)
        kv_total = torch.zeros((), device=s.answer_logits.device)
        kv_per = torch.zeros_like(per["codi"])
        latent_kv, t_keys = kv if kv is not None else self.kv_in_key_space(parts, batch, target, s)
        slots = torch.arange(target.mask.shape[-1], device=target.mask.device)
        for i, (k_t, v_t) in enumerate(latent_kv):
            name = f"kv_step_{i + 1}"
            mask = target.mask & (slots < self.kv_slots[i])  # the step's leading slots (loss.kv_slots)
            terms[name], per[name] = kv_step_loss(k_t, v_t, t_keys, target.values, mask, cfg.kv_loss, cfg.layerwise_std)
            kv_total = kv_total + weights[i] * terms[name]
            kv_per = kv_per + weights[i] * per[name]
        terms["kv_total"], per["kv_total"] = kv_total, kv_per
        w_teacher = self.teacher_ce_weight
        a1, a2 = cfg.alpha1, cfg.alpha2
        terms["loss"] = terms["student_ce"] + w_teacher * terms["teacher_ce"] + a1 * terms["codi"] + a2 * kv_total
        per["loss"] = per["student_ce"] + w_teacher * per["teacher_ce"] + a1 * per["codi"] + a2 * kv_per
        return terms, per

    def kv_in_key_space(
        self, parts: Parts, batch: Batch, target: CompressedKV, s: StudentOutput
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """The student's (K_t, V_t) per Jacobi step and the target keys in ``loss.key_space``.

        ``post_rope`` compares the keys as cached; ``pre_rope`` rotates both sides back to position 0, so that a
        latent at position ``nq + 1 + m`` is not asked to reproduce the rotation of a CoT token at ``nq + j``.
        """
        if self.key_space == "post_rope":
            return s.latent_kv, target.keys
        dev = target.keys.device
        m = parts.student.num_tokens
        s_pos = parts.student.place(batch.s_q_mask.sum(-1)[:, None] + 1 + torch.arange(m, device=dev)[None], 1)
        t_pos = batch.cot_start.to(dev)[None, :, None, None] + target.index  # (L, B, H, M)
        t_keys = unrotate_keys(parts.backbone, target.keys, t_pos) * target.mask[None, :, None, :, None]
        latent_kv = [(unrotate_keys(parts.backbone, k, s_pos[None, :, None, :]), v) for k, v in s.latent_kv]
        return latent_kv, t_keys

    def loss_weights(self) -> dict[str, float]:
        cfg = self.loss_cfg
        weights = {"student_ce": 1.0, "teacher_ce": self.teacher_ce_weight, "codi": cfg.alpha1}
        for i, w in enumerate(self.kv_weights.tolist()):
            weights[f"kv_step_{i + 1}"] = cfg.alpha2 * w
        return weights

    def validation_losses(self, parts: Parts, batch: Batch) -> tuple[Terms, dict[str, torch.Tensor]]:
        t, target, s = self.distill_forward(parts, batch)
        latent_kv, t_keys = self.kv_in_key_space(parts, batch, target, s)
        terms, _ = self.terms(parts, batch, t, target, s, kv=(latent_kv, t_keys))
        if not latent_kv:  # none for pause tokens (T = 0)
            return terms, {}
        sums, counts = kv_cosine_sums(latent_kv, t_keys, target.values, target.mask)
        return terms, {"kv_cos_sums": sums, "kv_cos_counts": counts, "kv_pass_change": pass_change_sums(s.latent_kv)}

    def summarize(self, stats: dict[str, torch.Tensor]) -> dict[str, float]:
        """``kv_cos_{k,v}_step_t``: the mean cosine of each latent slot's K / V with its R-KV target, per step;
        ``kv_pass_change_step_t`` (t < T): the relative distance of pass t's latent KV from the last pass's."""
        if "kv_cos_sums" not in stats:
            return {}
        sums, counts = stats["kv_cos_sums"], stats["kv_cos_counts"]
        self.kv_cosine = (sums / counts.clamp(min=1)).detach().cpu()
        valid = (counts > 0).cpu()
        out = {}
        for i in range(self.kv_cosine.shape[0]):
            for j, kind in enumerate(("k", "v")):
                value = self.kv_cosine[i, j][:, valid].mean() if valid.any() else torch.tensor(0.0)
                out[f"kv_cos_{kind}_step_{i + 1}"] = float(value)
        change = stats.get("kv_pass_change")
        if change is not None:
            for i in range(change.shape[0] - 1):
                out[f"kv_pass_change_step_{i + 1}"] = float((change[i, 0] / change[i, 1].clamp(min=1e-12)).sqrt())
        return out
