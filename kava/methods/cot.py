"""``method=cot``: CoT fine-tuning, the CE of ``Q C P A EOS``; the model answers by writing its CoT. With
``data.drop_cot=true`` (``method=nocot``) the sequence is ``Q P A EOS``: the direct-answer baseline."""

from __future__ import annotations

import torch

from kava.data.collate import Batch
from kava.distill.losses import selected_token_ce, target_logits
from kava.inference import Generation, Sync, cot_generate
from kava.methods.base import Method, Terms
from kava.model.student import decoder_of


class CoT(Method):
    """No latents: nothing but the backbone (LoRA or full) trains. Logs ``teacher_ce`` and ``loss``."""

    student_class = None
    writes_cot = True

    def losses(self, batch: Batch) -> tuple[Terms, Terms]:
        out = decoder_of(self.backbone)(input_ids=batch.t_ids, attention_mask=batch.t_mask, position_ids=batch.t_pos)
        logits = target_logits(self.backbone.get_output_embeddings(), out.last_hidden_state, batch.t_target_rows)
        ce, per = selected_token_ce(logits, batch.t_targets, batch.t_target_rows)
        return {"teacher_ce": ce}, {"teacher_ce": per}

    def loss_weights(self) -> dict[str, float]:
        return {"teacher_ce": 1.0}

    def generate(
        self,
        q_ids: torch.Tensor,
        q_mask: torch.Tensor,
        max_new_tokens: int,
        max_cot_tokens: int,
        stops: set[int] | None = None,
        sync: Sync | None = None,
        decoder: str = "student",
    ) -> Generation:
        """The model writes its CoT (``method=cot``) or answers directly (``nocot``): ``student`` and ``teacher`` are
        the same decoder here."""
        if decoder not in self.decoders():
            raise ValueError(f"decoder={decoder}: this method decodes with {', '.join(self.decoders())}")
        return cot_generate(self.backbone, self.tokenizer, q_ids, q_mask, max_cot_tokens, stops, sync=sync)
