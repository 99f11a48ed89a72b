"""``method=pccot``: Jacobi latents trained by the answer CE, the shared teacher's CE and CODI's hidden-state loss;
no KV distillation, so no importance capture and no R-KV."""

from __future__ import annotations

from kava.data.collate import Batch
from kava.methods.base import LatentMethod, Parts, Terms
from kava.model.student import StudentOutput
from kava.model.teacher import TeacherOutput


class PCCoT(LatentMethod):
    """Logs ``student_ce``, ``teacher_ce``, ``codi`` and ``loss``."""

    def losses(self, parts: Parts, batch: Batch) -> tuple[Terms, Terms]:
        return self.terms(parts, batch, self.teacher_pass(parts, batch, capture=False), self.student_pass(parts, batch))

    def terms(self, parts: Parts, batch: Batch, t: TeacherOutput, s: StudentOutput) -> tuple[Terms, Terms]:
        """Every term from the passes."""
        terms, per = self.ce_terms(batch, s, t)
        terms["codi"], per["codi"] = self.codi_term(parts, batch, s, t)
        w = self.loss_weights()
        for out in (terms, per):
            out["loss"] = out["student_ce"] + w["teacher_ce"] * out["teacher_ce"] + w["codi"] * out["codi"]
        return terms, per

    def loss_weights(self) -> dict[str, float]:
        return {"student_ce": 1.0, "teacher_ce": self.teacher_ce_weight, "codi": self.loss_cfg.alpha1}
