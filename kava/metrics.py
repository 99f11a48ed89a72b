"""Evaluation metrics (answer parsing is in :mod:`kava.data.answers`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from kava.data.answers import answers_match


class AnswerAccuracy(Metric):
    """Fraction of predicted answers that match the gold answers (see :func:`answers_match`).

    States are summed counts, so the metric syncs across processes like any torchmetrics metric;
    with no updates it computes 0.0 rather than NaN, so an empty eval set cannot poison logs.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[float | None], golds: Sequence[float]) -> None:
        """Count one batch of ``(prediction, gold)`` pairs; predictions may be ``None`` (no answer found)."""
        if len(preds) != len(golds):
            raise ValueError(f"AnswerAccuracy.update: got {len(preds)} predictions but {len(golds)} gold answers")
        self.correct += sum(answers_match(p, float(g)) for p, g in zip(preds, golds, strict=True))
        self.total += len(golds)

    def compute(self) -> torch.Tensor:
        """Accuracy in [0, 1] as a float tensor (0.0 when nothing was counted)."""
        if self.total == 0:
            return torch.tensor(0.0)
        return self.correct.float() / self.total.float()
