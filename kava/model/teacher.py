"""The teacher pass (docs/design.md §2.3): one forward over ``Q C P A EOS`` that yields every distillation target.

``shared`` mode runs the LoRA backbone with gradient (its CE trains the backbone) and detaches every target;
``frozen`` mode runs the base model (adapters disabled) without gradient. In shared mode the pass can also hand the
student its question's KV, with gradient: the same weights over the same tokens at the same positions, computed once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from kava.data.collate import Batch
from kava.distill.losses import target_logits
from kava.model.attention import capture_importance
from kava.model.cache import KV, Prefix, cache_of, layer_kv, slice_kv, stack_kv
from kava.model.student import decoder_of
from kava.schema import TEACHER_MODES


@dataclass
class TeacherOutput:
    logits: torch.Tensor  # (N, V) at the N positions with a CE target (t_targets != -100), row-major; a gradient in
    # shared mode
    distill_hidden: torch.Tensor  # (L, B, D) hidden states of layers 1..L at the distillation token, detached
    keys: torch.Tensor  # (L, B, H, S, d) post-RoPE keys of every position, detached
    values: torch.Tensor  # (L, B, H, S, d) detached
    importance: torch.Tensor  # (L, B, H, S) answer-span attention per key, no gradient
    next_hidden: torch.Tensor | None = None  # (L, B, D) the same one token later (``loss.codi_position``), detached
    question: Prefix | None = None  # the question's KV over the student's S_q columns, right-padded (the CoT after a
    # short question is masked out), with gradient: what the student's prefill reads (``teacher.share_question``)


def _adapters_off(model: PreTrainedModel) -> contextlib.AbstractContextManager:
    if isinstance(model, PeftModel):
        return model.disable_adapter()
    raise ValueError("teacher.mode=frozen needs LoRA adapters to disable; set model.lora.r > 0 or teacher.mode=shared")


def question_prefix(kv: KV, batch: Batch) -> Prefix:
    """The question's part of a teacher cache ``kv`` (with whatever gradient it carries), over the student's S_q
    columns: ``Q`` sits at columns 0..nq-1 in both layouts and at the same positions; the rest is masked out."""
    n = batch.s_q_ids.shape[1]
    cols = torch.arange(n, device=batch.t_mask.device)
    mask = (cols[None] < batch.cot_start.to(cols.device)[:, None]).to(batch.t_mask.dtype)
    return Prefix(slice_kv(kv, 0, n), mask)


def teacher_forward(
    model: PreTrainedModel, batch: Batch, mode: str = "shared", capture: bool = True, question: bool = False
) -> TeacherOutput:
    """Run the teacher sequence once, capturing answer-span importance inside the attention calls.

    ``capture=False`` skips the importance capture (``importance`` is then empty): for a pass whose targets are
    not used (the CE pass when ``teacher.targets=base`` takes the targets from a second, adapter-free pass).
    ``question=True`` (shared mode only) also returns the question's KV for the student (``TeacherOutput.question``).
    """
    if mode not in TEACHER_MODES:
        raise ValueError(f"teacher.mode must be one of {TEACHER_MODES}, got '{mode}'")
    frozen = mode == "frozen"
    if frozen and question:
        raise ValueError("the frozen teacher runs other weights than the student: its question KV is not the student's")
    outer = contextlib.ExitStack()
    if frozen:
        outer.enter_context(torch.no_grad())
        outer.enter_context(_adapters_off(model))
    if capture:
        cap = outer.enter_context(capture_importance(batch.t_ans_rows, batch.t_ans_mask))
    with outer:
        out = decoder_of(model)(
            input_ids=batch.t_ids,
            attention_mask=batch.t_mask,
            position_ids=batch.t_pos,
            use_cache=True,
            output_hidden_states=True,
        )
        logits = target_logits(model.get_output_embeddings(), out.last_hidden_state, batch.t_target_rows)
    kv = layer_kv(cache_of(out))
    keys, values = stack_kv([(k.detach(), v.detach()) for k, v in kv])
    shared_question = question_prefix(kv, batch) if question else None
    first = out.hidden_states[1]
    idx = batch.t_distill.to(first.device)
    cols = torch.stack([idx, (idx + 1).clamp(max=first.shape[1] - 1)], dim=1)  # the token and the one after it
    rows = torch.arange(first.shape[0], device=first.device)[:, None]
    picked = torch.stack([h.detach()[rows, cols] for h in out.hidden_states[1:]])  # (L, B, 2, D): two rows per
    # layer, not a copy of every layer's states
    importance = cap.stacked() if capture else keys.new_zeros(0)
    return TeacherOutput(logits, picked[:, :, 0], keys, values, importance, picked[:, :, 1], shared_question)
