"""``method=pccot``: Jacobi latents trained by the answer CE, the shared teacher's CE and CODI's hidden-state loss;
no KV distillation, so no importance capture and no R-KV."""

from __future__ import annotations

from kava.data.collate import Batch
from kava.methods.base import LatentMethod, Terms
from kava.model.student import StudentOutput
from kava.model.teacher import TeacherOutput


class PCCoT(LatentMethod):
    """Logs ``student_ce``, ``teacher_ce``, ``codi`` and ``loss``."""

    def losses(self, batch: Batch) -> tuple[Terms, Terms]:
        t = self.teacher_pass(batch, capture=False)
        return self.terms(batch, t, self.student_pass(batch, t))

    def terms(self, batch: Batch, t: TeacherOutput, s: StudentOutput) -> tuple[Terms, Terms]:
        """Every term from the passes (``loss`` not included: ``total``)."""
        terms, per = self.ce_terms(batch, s, t)
        terms["codi"], per["codi"] = self.codi_term(batch, s, t)
        return terms, per

    def loss_weights(self) -> dict[str, float]:
        return {"student_ce": 1.0, "teacher_ce": self.teacher_ce_weight, "codi": self.loss_cfg.alpha1}
