"""``method=codi``: CODI's sequential latents (one per pass on a growing cache, M = 6 by default) with its
hidden-state loss, the answer CE and the shared teacher's CE; no KV distillation."""

from __future__ import annotations

from kava.methods.pccot import PCCoT
from kava.model.student import SequentialStudent


class CODI(PCCoT):
    """The losses of ``pccot``; the latents are computed one at a time (``latent.num_iterations`` is unused)."""

    student_class = SequentialStudent
