"""The interface every method implements, and the loss pieces several methods share.

A method says which parts train (``build_student``), what its loss terms are for a batch (``losses``, with the
weight of each in ``loss_weights``) and how it answers a question (``generate``). ``KAVALitModule`` owns the
backbone, optimisation, logging and checkpoints and calls only this interface.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel

from kava.data.collate import Batch
from kava.distill.losses import answer_only_targets, codi_loss, selected_token_ce, token_ce
from kava.inference import Generation, Sync, latent_generate
from kava.model.student import LatentStudent, StudentOutput
from kava.model.teacher import TeacherOutput, teacher_forward
from kava.schema import LatentSchema, LossSchema, TeacherSchema

Terms = dict[str, torch.Tensor]


def latent_output_scale(kind: str, embeddings: torch.Tensor) -> float | None:
    """``latent.output_scale``: ``layernorm`` keeps prj's LayerNorm gain at 1 (latents of RMS 1, as PCCoT/CODI);
    ``embedding`` starts it at the token embeddings' RMS, so latents enter the backbone at the scale of a token."""
    return float(embeddings.detach().float().pow(2).mean().sqrt()) if kind == "embedding" else None


@dataclass
class Parts:
    """What a method computes with: the (LoRA) backbone, the latent student if it has one, the tokenizer."""

    backbone: PreTrainedModel
    student: LatentStudent | None
    tokenizer: Any
    answer_prompt: str


class Method:
    """A latent-reasoning method. Subclasses implement ``losses`` and ``loss_weights``; the method's name is its
    config's (``method.name``, the YAML file's name), not the class's.

    ``loss``, ``teacher`` and ``latent`` are the run's config sections as typed objects (``kava.schema``), their
    values checked before the run started; each method reads the keys it uses and declares no defaults.
    """

    student_class: ClassVar[type[LatentStudent] | None] = LatentStudent  # None: no latents, nothing of them trains

    def __init__(self, loss: LossSchema, teacher: TeacherSchema, latent: LatentSchema) -> None:
        self.loss_cfg, self.latent_cfg = loss, latent
        self.teacher_mode, self.teacher_targets = teacher.mode, teacher.targets

    # which parts train --------------------------------------------------------------------------
    def student_options(self) -> dict[str, Any]:
        """Constructor arguments of the student from ``latent.*`` (a method may fix some of them)."""
        lat = self.latent_cfg
        return {
            "num_tokens": lat.num_tokens,
            "num_iterations": lat.num_iterations,
            "use_projection": lat.use_projection,
            "proj_dim": lat.proj_dim,
            "align_positions": lat.align_positions,
        }

    def build_student(self, backbone: PreTrainedModel) -> LatentStudent | None:
        if self.student_class is None:
            return None
        emb = backbone.get_input_embeddings().weight
        init_seed = self.latent_cfg.init_seed
        with torch.random.fork_rng(devices=[], enabled=init_seed is not None):
            if init_seed is not None:  # prj's weights apart from the adapters' and the data order's seed
                torch.manual_seed(int(init_seed))
            return self.student_class(
                hidden_size=backbone.config.hidden_size,
                init_embedding=emb.detach().float().mean(0),
                output_scale=latent_output_scale(self.latent_cfg.output_scale, emb),
                **self.student_options(),
            )

    # losses -------------------------------------------------------------------------------------
    def losses(self, parts: Parts, batch: Batch) -> tuple[Terms, Terms]:
        """Batch values and per-sample values (B,) of every term, ``loss`` (the weighted sum) included."""
        raise NotImplementedError

    def loss_weights(self) -> dict[str, float]:
        """The weight of each logged term in ``loss``."""
        raise NotImplementedError

    def validation_losses(self, parts: Parts, batch: Batch) -> tuple[Terms, dict[str, torch.Tensor]]:
        """The terms logged under ``val/`` and statistics to sum over the validation batches (see ``summarize``)."""
        return self.losses(parts, batch)[0], {}

    def summarize(self, stats: dict[str, torch.Tensor]) -> dict[str, float]:
        """Metrics from the validation statistics summed over batches and processes."""
        return {}

    # answering ----------------------------------------------------------------------------------
    writes_cot: ClassVar[bool] = False  # the model writes ``C P A`` itself (budget ``max_cot_tokens``)

    def generate(
        self,
        parts: Parts,
        q_ids: torch.Tensor,
        q_mask: torch.Tensor,
        max_new_tokens: int,
        max_cot_tokens: int,
        stops: set[int] | None = None,
        sync: Sync | None = None,
    ) -> Generation:
        """Greedy answers to left-padded questions (latent decoding: ``texts`` continue after ``P``); ``sync`` keeps
        the ranks of a sharded run in step (kava.inference._greedy)."""
        return latent_generate(
            parts.student,
            parts.backbone,
            parts.tokenizer,
            q_ids,
            q_mask,
            parts.answer_prompt,
            max_new_tokens,
            stops,
            sync=sync,
        )

    def answer_text(self, parts: Parts, text: str) -> str:
        """The text to parse the answer from: ``P`` + what latent decoding wrote after it."""
        return text if self.writes_cot else parts.answer_prompt + text


class LatentMethod(Method):
    """Shared by the latent students: the answer CE, the shared teacher's CE and the CODI hidden-state term."""

    def __init__(self, loss: LossSchema, teacher: TeacherSchema, latent: LatentSchema) -> None:
        super().__init__(loss, teacher, latent)
        self.student_ce_on, self.codi_position = loss.student_ce_on, loss.codi_position
        self.codi_layers = loss.codi_layers
        self._space_ids: torch.Tensor | None = None

    @property
    def teacher_ce_weight(self) -> float:
        return 0.0 if self.teacher_mode == "frozen" else self.loss_cfg.teacher_ce_weight

    def ce_terms(self, batch: Batch, s: StudentOutput, t: TeacherOutput | None) -> tuple[Terms, Terms]:
        """``student_ce`` (over ``P A EOS`` or ``A EOS``) and, given a teacher pass, ``teacher_ce``."""
        terms: Terms = {}
        per: Terms = {}
        s_targets = batch.s_targets
        if self.student_ce_on == "answer":
            s_targets = answer_only_targets(s_targets, batch.s_distill)
        terms["student_ce"], per["student_ce"] = token_ce(s.answer_logits, s_targets)
        if t is not None:
            terms["teacher_ce"], per["teacher_ce"] = selected_token_ce(t.logits, batch.t_targets)
        return terms, per

    def teacher_pass(self, parts: Parts, batch: Batch, capture: bool) -> TeacherOutput:
        """The teacher pass. ``teacher.targets=base`` takes every target from a second, adapter-free pass (targets
        that stay put); ``base_codi`` only the CODI targets (the hidden states), the KV targets stay adapted."""
        base = self.teacher_mode == "shared" and self.teacher_targets in ("base", "base_codi")
        all_base = base and self.teacher_targets == "base"
        t = teacher_forward(parts.backbone, batch, self.teacher_mode, capture=capture and not all_base)
        if not base:
            return t
        b = teacher_forward(parts.backbone, batch, "frozen", capture=capture and all_base)
        if all_base:  # the CE pass above, the targets from the adapter-free base
            return dataclasses.replace(b, logits=t.logits)
        return dataclasses.replace(t, distill_hidden=b.distill_hidden, next_hidden=b.next_hidden)

    def student_pass(self, parts: Parts, batch: Batch) -> StudentOutput:
        return parts.student(parts.backbone, batch.s_q_ids, batch.s_q_mask, batch.s_a_ids, batch.s_a_mask)

    def codi_term(
        self, parts: Parts, batch: Batch, s: StudentOutput, t: TeacherOutput
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CODI's hidden-state loss at the distillation token (``loss.codi_position``), at every layer or only the
        last (``loss.codi_layers=last``: the final-norm state that feeds the LM head)."""
        bidx = torch.arange(batch.s_distill.shape[0], device=s.answer_logits.device)
        s_idx, t_hidden = batch.s_distill, t.distill_hidden
        if self.codi_position == "before_answer":  # skip A's leading whitespace token: predict the first digit
            lead = self.leading_space(parts.tokenizer, batch)
            s_idx = s_idx + lead
            t_hidden = torch.where(lead.bool()[None, :, None].to(t_hidden.device), t.next_hidden, t_hidden)
        s_hidden = torch.stack(s.answer_hidden[1:])[:, bidx, s_idx]
        if self.codi_layers == "last":
            s_hidden, t_hidden = s_hidden[-1:], t_hidden[-1:]
        return codi_loss(s_hidden, t_hidden, self.loss_cfg.codi_std_norm)

    def leading_space(self, tokenizer, batch: Batch) -> torch.Tensor:
        """1 where the answer's first token is whitespace only (e.g. " " before single-digit tokens), else 0 (B,)."""
        if self._space_ids is None:
            ids = [i for i in range(len(tokenizer)) if tokenizer.decode([i]).strip() == ""]
            self._space_ids = torch.tensor(ids or [-1], dtype=torch.long)
        first = batch.s_a_ids.gather(1, batch.s_distill[:, None]).squeeze(1)  # A[0]: P sits at 0..npr-1
        return torch.isin(first, self._space_ids.to(first.device)).long()
