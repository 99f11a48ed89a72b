"""``method=pause``: a compute-only control. The M latent slots stay the learned placeholder embedding (no
projection, no Jacobi update); the answer reads their KV. Trained by the answer CE and the shared teacher's CE."""

from __future__ import annotations

from typing import Any

from kava.data.collate import Batch
from kava.methods.base import LatentMethod, Terms


class Pause(LatentMethod):
    """Logs ``student_ce``, ``teacher_ce`` (when the teacher trains) and ``loss``."""

    def student_options(self) -> dict[str, Any]:
        return {**super().student_options(), "num_iterations": 0, "use_projection": False}  # nothing of prj trains

    def losses(self, batch: Batch) -> tuple[Terms, Terms]:
        w_teacher = self.teacher_ce_weight
        t = self.teacher_pass(batch, capture=False) if w_teacher > 0 else None
        return self.ce_terms(batch, self.student_pass(batch, t), t)

    def loss_weights(self) -> dict[str, float]:
        return {"student_ce": 1.0, "teacher_ce": self.teacher_ce_weight}
