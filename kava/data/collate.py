"""Segments -> one padded batch for the teacher and the student passes (docs/design.md §2.1).

Teacher: ``Q C P A EOS``, right-padded, targets on ``C P A EOS``. Student: questions left-padded so that
``<bot>``, the latents and ``<eot>`` share columns; the answer pass input is ``<eot> P A EOS`` (``<eot>`` is
an embedding, so only ``P A EOS`` ids are stored), right-padded, targets on ``P A EOS``. The distillation
token (last token of ``P``) is located per sample in both layouts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kava.data.sequences import Segments

IGNORE = -100


@dataclass
class Batch:
    """One padded batch of samples: the teacher part (``t_*``, ``cot_*``) and the student part (``s_*``).

    Shapes: B samples, S_t teacher length, S_q question length, S_a answer-pass length (``P A EOS``), R the longest
    ``P A`` span. Lightning moves it to the device like any dataclass of tensors.
    """

    t_ids: torch.Tensor  # (B, S_t) Q C P A EOS, right-padded
    t_mask: torch.Tensor  # (B, S_t) 1 on real tokens
    t_pos: torch.Tensor  # (B, S_t) position ids
    t_targets: torch.Tensor  # (B, S_t) next-token targets on C P A EOS, -100 elsewhere
    t_target_rows: torch.Tensor  # (N,) flat indices b * S_t + j of the positions with a target, row-major: the
    # selection of the teacher CE, built here so that the step indexes with a shape known on the host (no sync)
    t_ans_rows: torch.Tensor  # (B, R) teacher positions of P A (EOS excluded): the rows whose attention ranks keys
    t_ans_mask: torch.Tensor  # (B, R) bool, valid entries of t_ans_rows
    t_distill: torch.Tensor  # (B,) teacher position of the distillation token (last token of P)
    cot_start: torch.Tensor  # (B,) first CoT position (= question length)
    cot_len: torch.Tensor  # (B,) CoT length
    cot_span: int  # the longest CoT of the batch: R-KV's candidate axis, known on the host (no sync)
    s_q_ids: torch.Tensor  # (B, S_q) questions, left-padded
    s_q_mask: torch.Tensor  # (B, S_q)
    s_a_ids: torch.Tensor  # (B, S_a) P A EOS, right-padded (the answer pass reads <eot> before it)
    s_a_mask: torch.Tensor  # (B, S_a)
    s_targets: torch.Tensor  # (B, S_a + 1) answer-pass targets: position 0 (<eot>) predicts P[0]
    s_distill: torch.Tensor  # (B,) answer-pass position of the distillation token
    gold: torch.Tensor  # (B,) float64 numeric answers (nan when unknown)

    @property
    def size(self) -> int:
        return self.t_ids.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        fields = (f.name for f in dataclasses.fields(self))
        return dataclasses.replace(self, **{n: v.to(device) for n in fields if torch.is_tensor(v := getattr(self, n))})


def target_rows(targets: torch.Tensor) -> torch.Tensor:
    """The flat indices (N,) of the positions of ``targets`` (B, S) that predict a token (not -100), row-major."""
    return (targets.flatten() != IGNORE).nonzero().flatten()


def collate(samples: Sequence[Segments], pad_id: int) -> Batch:
    """Build every tensor the teacher and student passes need; see the module docstring."""
    bsz = len(samples)
    t_len = max(s.teacher_len() for s in samples)
    q_len = max(len(s.question) for s in samples)
    a_len = max(len(s.prompt) + len(s.answer) for s in samples)
    r_len = max(len(s.prompt) + len(s.answer) - 1 for s in samples)  # P A without EOS

    t_ids = torch.full((bsz, t_len), pad_id, dtype=torch.long)
    t_mask = torch.zeros((bsz, t_len), dtype=torch.long)
    t_targets = torch.full((bsz, t_len), IGNORE, dtype=torch.long)
    t_rows = torch.zeros((bsz, r_len), dtype=torch.long)
    t_rows_mask = torch.zeros((bsz, r_len), dtype=torch.bool)
    s_q_ids = torch.full((bsz, q_len), pad_id, dtype=torch.long)
    s_q_mask = torch.zeros((bsz, q_len), dtype=torch.long)
    s_a_ids = torch.full((bsz, a_len), pad_id, dtype=torch.long)
    s_a_mask = torch.zeros((bsz, a_len), dtype=torch.long)
    s_targets = torch.full((bsz, a_len + 1), IGNORE, dtype=torch.long)
    cot_start, cot_len, t_distill, s_distill = (torch.zeros(bsz, dtype=torch.long) for _ in range(4))

    for b, s in enumerate(samples):
        ids = list(s.question + s.cot + s.prompt + s.answer)
        n, nq, nc, npr = len(ids), len(s.question), len(s.cot), len(s.prompt)
        t_ids[b, :n] = torch.tensor(ids)
        t_mask[b, :n] = 1
        t_targets[b, nq - 1 : n - 1] = torch.tensor(ids[nq:])  # position j predicts token j + 1
        span = n - 1 - (nq + nc)  # P A (EOS excluded)
        t_rows[b, :span] = torch.arange(nq + nc, n - 1)
        t_rows_mask[b, :span] = True
        cot_start[b], cot_len[b] = nq, nc
        t_distill[b] = nq + nc + npr - 1
        s_q_ids[b, q_len - nq :] = torch.tensor(s.question)
        s_q_mask[b, q_len - nq :] = 1
        pa = list(s.prompt + s.answer)
        s_a_ids[b, : len(pa)] = torch.tensor(pa)
        s_a_mask[b, : len(pa)] = 1
        s_targets[b, : len(pa)] = torch.tensor(pa)  # answer-pass position 0 is <eot>, predicting P[0]
        s_distill[b] = npr  # <eot> at 0, P at 1..npr
    t_pos = (t_mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(
        t_ids=t_ids,
        t_mask=t_mask,
        t_pos=t_pos,
        t_targets=t_targets,
        t_target_rows=target_rows(t_targets),
        t_ans_rows=t_rows,
        t_ans_mask=t_rows_mask,
        t_distill=t_distill,
        cot_start=cot_start,
        cot_len=cot_len,
        cot_span=int(cot_len.max()),
        s_q_ids=s_q_ids,
        s_q_mask=s_q_mask,
        s_a_ids=s_a_ids,
        s_a_mask=s_a_mask,
        s_targets=s_targets,
        s_distill=s_distill,
        gold=torch.tensor([float("nan") if s.gold is None else s.gold for s in samples], dtype=torch.float64),
    )
