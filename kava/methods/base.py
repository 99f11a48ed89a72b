"""The interface every method implements, and the loss pieces several methods share.

A method is the model: an ``nn.Module`` that owns the (LoRA) backbone and its latent student, says what its loss
terms are for a batch (``forward``, the total formed once from ``loss_weights``) and how it answers a question with
each decoder (``generate``). ``KAVALitModule`` keeps optimisation, logging and checkpoint contents and calls only
this interface.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel

from kava.data.collate import Batch
from kava.distill.losses import answer_only_targets, codi_loss, selected_token_ce, token_ce
from kava.inference import Generation, Sync, cot_generate, latent_generate
from kava.model.student import LatentStudent, StudentOutput
from kava.model.teacher import TeacherOutput, teacher_forward
from kava.schema import LatentSchema, LossSchema, TeacherSchema

try:
    from transformers.utils.output_capturing import maybe_install_capturing_hooks as install_capture_hooks
except ImportError:  # a transformers without these hooks: nothing to install before compiling
    install_capture_hooks = None

Terms = dict[str, torch.Tensor]
DECODERS = ("student", "student_placeholder", "teacher")  # generate's decoders (eval.py's names)


def latent_output_scale(kind: str, embeddings: torch.Tensor) -> float | None:
    """``latent.output_scale``: ``layernorm`` keeps prj's LayerNorm gain at 1 (latents of RMS 1, as PCCoT/CODI);
    ``embedding`` starts it at the token embeddings' RMS, so latents enter the backbone at the scale of a token."""
    return float(embeddings.detach().float().pow(2).mean().sqrt()) if kind == "embedding" else None


class Method(torch.nn.Module):
    """A latent-reasoning method over ``backbone``. Subclasses implement ``losses`` (the terms) and ``loss_weights``
    (the weight of each in ``loss``); the method's name is its config's (``method.name``, the YAML file's name).

    ``loss``, ``teacher`` and ``latent`` are the run's config sections as typed objects (``kava.schema``), their
    values checked before the run started; each method reads the keys it uses and declares no defaults.
    """

    student_class: ClassVar[type[LatentStudent] | None] = LatentStudent  # None: no latents, nothing of them trains
    compiled_losses: Callable[[Batch], tuple[Terms, Terms]] | None = None  # ``losses`` compiled (``compile_losses``)

    def __init__(
        self,
        loss: LossSchema,
        teacher: TeacherSchema,
        latent: LatentSchema,
        backbone: PreTrainedModel,
        tokenizer: Any,
        answer_prompt: str,
    ) -> None:
        super().__init__()
        self.loss_cfg, self.latent_cfg = loss, latent
        self.teacher_mode, self.teacher_targets = teacher.mode, teacher.targets
        self.share_question = teacher.share_question and teacher.mode == "shared"  # a frozen teacher runs the base
        self.tokenizer, self.answer_prompt = tokenizer, answer_prompt
        self.backbone = backbone
        self.student = self.build_student(backbone)

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
    def forward(self, batch: Batch) -> tuple[Terms, Terms]:
        """Batch values and per-sample values (B,) of every term and of ``loss``, their weighted sum; in training with
        ``model.compile=step``, from the compiled ``losses``."""
        compiled = self.compiled_losses if self.training else None
        return self.total(*(compiled or self.losses)(batch))

    def losses(self, batch: Batch) -> tuple[Terms, Terms]:
        """Batch values and per-sample values (B,) of every term the batch computes (``loss`` is added by ``total``)."""
        raise NotImplementedError

    def loss_weights(self) -> dict[str, float]:
        """The weight of each logged term in ``loss``; terms absent from it (``kv_total``) are only logged."""
        raise NotImplementedError

    def total(self, terms: Terms, per: Terms) -> tuple[Terms, Terms]:
        """``loss`` = the sum of the computed terms times their weights (the one place the total is formed)."""
        weights = self.loss_weights()
        for out in (terms, per):
            out["loss"] = sum(w * out[k] for k, w in weights.items() if k in out)
        return terms, per

    def validation_losses(self, batch: Batch) -> tuple[Terms, dict[str, torch.Tensor]]:
        """The terms logged under ``val/`` and statistics to sum over the validation batches (see ``summarize``)."""
        return self(batch)[0], {}

    def summarize(self, stats: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """From the validation statistics summed over batches and processes: metrics to log, and tensors for the
        figures (``KAVALitModule.val_tensors``)."""
        return {}, {}

    # answering ----------------------------------------------------------------------------------
    writes_cot: ClassVar[bool] = False  # the model writes ``C P A`` itself (budget ``max_cot_tokens``)

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
        """Greedy answers to left-padded questions with one decoder: ``student`` (the method's own: latent decoding,
        whose ``texts`` continue after ``P``), ``student_placeholder`` (the latents replaced by the placeholder) or
        ``teacher`` (the backbone writes its CoT; without adapters when the teacher is frozen). ``sync`` keeps the
        ranks of a sharded run in step (kava.inference._greedy)."""
        if decoder == "teacher":
            frozen = self.teacher_mode == "frozen"
            with self.backbone.disable_adapter() if frozen else contextlib.nullcontext():
                return cot_generate(self.backbone, self.tokenizer, q_ids, q_mask, max_cot_tokens, stops, sync=sync)
        if decoder not in DECODERS or (self.student is None and decoder == "student_placeholder"):
            raise ValueError(f"decoder={decoder}: this method decodes with {', '.join(self.decoders())}")
        return latent_generate(
            self.student,
            self.backbone,
            self.tokenizer,
            q_ids,
            q_mask,
            self.answer_prompt,
            max_new_tokens,
            stops,
            placeholder_latents=decoder == "student_placeholder",
            sync=sync,
        )

    def decoders(self) -> tuple[str, ...]:
        """The decoders ``generate`` takes for this method."""
        return DECODERS if self.student is not None else ("student", "teacher")

    def answer_text(self, text: str, decoder: str = "student") -> str:
        """The text to parse the answer from: ``P`` + what latent decoding wrote after it; a written CoT as is."""
        return text if self.writes_cot or decoder == "teacher" else self.answer_prompt + text


def compile_losses(method: Method, backend: str = "inductor") -> None:
    """``model.compile=step``: compile the method's whole loss computation (the teacher pass, R-KV, every student
    pass and the losses) into one graph with dynamic shapes, whose backward is compiled with it: no Python runs
    between the decoder calls, and the small operations around them fuse. Training steps only; validation runs the
    eager ``losses`` (a second, eval-mode graph would compile otherwise) and decoding stays eager. ``backend``:
    dynamo's (the tests use ``aot_eager``, which generates no code).

    transformers installs its output-capture hooks at a model's first call that asks for hidden states, under a
    lock that breaks a graph; they are installed here first, so that the step traces into one graph."""
    if install_capture_hooks is not None:
        install_capture_hooks(method.backbone.get_decoder())
    method.compiled_losses = torch.compile(method.losses, dynamic=True, backend=backend)


def whitespace_token_ids(tokenizer) -> torch.Tensor:
    """The ids of the tokens that decode to whitespace only ([-1] if none)."""
    ids = [i for i in range(len(tokenizer)) if tokenizer.decode([i]).strip() == ""]
    return torch.tensor(ids or [-1], dtype=torch.long)


class LatentMethod(Method):
    """Shared by the latent students: the answer CE, the shared teacher's CE and the CODI hidden-state term."""

    def __init__(self, **parts: Any) -> None:
        super().__init__(**parts)
        loss = self.loss_cfg
        self.student_ce_on, self.codi_position = loss.student_ce_on, loss.codi_position
        self.codi_layers = loss.codi_layers
        self._space_ids: torch.Tensor | None = None
        if self.codi_position == "before_answer":  # now, not in the first step: a compiled step would trace the loop
            self._space_ids = whitespace_token_ids(self.tokenizer)

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
            terms["teacher_ce"], per["teacher_ce"] = selected_token_ce(t.logits, batch.t_targets, batch.t_target_rows)
        return terms, per

    def teacher_pass(self, batch: Batch, capture: bool) -> TeacherOutput:
        """The teacher pass. ``teacher.targets=base`` takes every target from a second, adapter-free pass (targets
        that stay put); ``base_codi`` only the CODI targets (the hidden states), the KV targets stay adapted."""
        base = self.teacher_mode == "shared" and self.teacher_targets in ("base", "base_codi")
        all_base = base and self.teacher_targets == "base"
        t = teacher_forward(
            self.backbone, batch, self.teacher_mode, capture=capture and not all_base, question=self.share_question
        )
        if not base:
            return t
        b = teacher_forward(self.backbone, batch, "frozen", capture=capture and all_base)
        if all_base:  # the CE pass above, the targets from the adapter-free base
            return dataclasses.replace(b, logits=t.logits, question=t.question)
        return dataclasses.replace(t, distill_hidden=b.distill_hidden, next_hidden=b.next_hidden)

    def student_pass(self, batch: Batch, t: TeacherOutput | None = None) -> StudentOutput:
        """The student's passes; the question's KV is read from the teacher pass ``t`` when it carries it
        (``teacher.share_question``), else computed in the prefill."""
        question = t.question if t is not None else None
        return self.student(self.backbone, batch.s_q_ids, batch.s_q_mask, batch.s_a_ids, batch.s_a_mask, question)

    def codi_term(self, batch: Batch, s: StudentOutput, t: TeacherOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """CODI's hidden-state loss at the distillation token (``loss.codi_position``), at every layer or only the
        last (``loss.codi_layers=last``: the final-norm state that feeds the LM head)."""
        bidx = torch.arange(batch.s_distill.shape[0], device=s.answer_logits.device)
        s_idx, t_hidden = batch.s_distill, t.distill_hidden
        if self.codi_position == "before_answer":  # skip A's leading whitespace token: predict the first digit
            lead = self.leading_space(batch)
            s_idx = s_idx + lead
            t_hidden = torch.where(lead.bool()[None, :, None].to(t_hidden.device), t.next_hidden, t_hidden)
        s_hidden = torch.stack(s.answer_hidden[1:])[:, bidx, s_idx]
        if self.codi_layers == "last":
            s_hidden, t_hidden = s_hidden[-1:], t_hidden[-1:]
        return codi_loss(s_hidden, t_hidden, self.loss_cfg.codi_std_norm)

    def leading_space(self, batch: Batch) -> torch.Tensor:
        """1 where the answer's first token is whitespace only (e.g. " " before single-digit tokens), else 0 (B,); for
        ``loss.codi_position=before_answer``, whose whitespace ids are found when the method is built."""
        first = batch.s_a_ids.gather(1, batch.s_distill[:, None]).squeeze(1)  # A[0]: P sits at 0..npr-1
        return torch.isin(first, self._space_ids.to(first.device)).long()
