"""``method=answer_ce``: Jacobi latents trained by the answer CE alone: no teacher pass, no distillation.

The smallest complete method, and the README's example of adding one.
"""

from __future__ import annotations

from kava.data.collate import Batch
from kava.methods.base import LatentMethod, Terms


class AnswerCE(LatentMethod):
    """Logs ``student_ce`` and ``loss`` (equal)."""

    def losses(self, batch: Batch) -> tuple[Terms, Terms]:
        s = self.student_pass(batch)  # prefill, T Jacobi passes, answer pass
        return self.ce_terms(batch, s, None)  # student_ce over P A EOS (or A EOS: loss.student_ce_on)

    def loss_weights(self) -> dict[str, float]:
        return {"student_ce": 1.0}
