"""``teacher.share_question``: the student reads the question's KV from the shared teacher's pass (docs/design.md
§2.2). It is the same computation: the same weights over the same tokens at the same positions, so losses and
gradients equal those of a student that runs its question itself."""

from __future__ import annotations

import pytest
import torch
from conftest import make_module
from helpers import decoder_calls

from kava.model.teacher import teacher_forward

WITH_TEACHER = ["kava", "pccot", "codi", "pause"]


def terms_and_grads(module, batch):
    terms = module.compute_losses(batch)
    terms["loss"].backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads


def loss_calls(module, batch) -> list[tuple[int, int]]:
    """(new positions, columns attended) of every decoder call one loss computation makes."""
    return [(n, cols) for _, n, cols in decoder_calls(module, lambda: module.compute_losses(batch))[0]]


@pytest.mark.parametrize("method", WITH_TEACHER)
@pytest.mark.parametrize("extra", [[], ["latent.align_positions=true", "teacher.targets=base"]])
def test_shared_question_gives_the_losses_and_gradients_of_the_students_own(tokenizer, batch, method, extra):
    """Every term and every parameter's gradient, with and without the shared question; the questions of the batch
    differ in length, so the teacher's right-padded question columns hold CoT tokens that must stay masked out."""
    assert batch.s_q_mask.sum(-1).unique().numel() > 1
    out = {}
    for share in (True, False):
        module = make_module(tokenizer, extra=[f"method={method}", f"teacher.share_question={share}", *extra])
        assert module.method.share_question is share
        out[share] = terms_and_grads(module, batch)
    (terms, grads), (ref_terms, ref_grads) = out[True], out[False]
    assert terms.keys() == ref_terms.keys() and grads.keys() == ref_grads.keys() and grads
    for k in terms:
        torch.testing.assert_close(terms[k], ref_terms[k], rtol=1e-6, atol=1e-6)
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("extra", [[], ["teacher.targets=base"]])
@pytest.mark.parametrize("method", WITH_TEACHER)
def test_shared_question_is_not_run_again(tokenizer, batch, method, extra):
    """With the question shared, the student's first call computes only ``<bot>`` and what follows it, on a cache
    of the question's S_q columns; without it, the question is among its new positions."""
    q_len = batch.s_q_ids.shape[1]
    shared = loss_calls(make_module(tokenizer, extra=[f"method={method}", *extra]), batch)
    own = loss_calls(make_module(tokenizer, extra=[f"method={method}", "teacher.share_question=false", *extra]), batch)
    assert len(shared) == len(own) and shared[: 1 + len(extra)] == own[: 1 + len(extra)]  # the teacher's call(s)
    shared, own = shared[len(extra) :], own[len(extra) :]
    assert own[1][0] == shared[1][0] + q_len and own[1][1] == shared[1][1]
    assert shared[2:] == own[2:]


def test_teacher_question_is_the_students_own_question_kv(tokenizer, batch):
    """The teacher's question columns (right-padded) hold the keys and values the student's prefill computes for its
    left-padded question, at every layer; the mask covers each question's own tokens."""
    module = make_module(tokenizer)
    model, st = module.backbone, module.student
    t = teacher_forward(model, batch, "shared", question=True)
    own, _ = st.prefill(model, batch.s_q_ids, batch.s_q_mask)
    q_len, nq = batch.s_q_ids.shape[1], batch.s_q_mask.sum(-1)
    assert torch.equal(t.question.mask, (torch.arange(q_len)[None] < nq[:, None]).to(t.question.mask.dtype))
    assert len(t.question.kv) == len(own) == model.config.num_hidden_layers
    for (tk, tv), (sk, sv) in zip(t.question.kv, own, strict=True):
        assert tk.shape[2] == q_len and tk.requires_grad
        for b, n in enumerate(nq.tolist()):
            torch.testing.assert_close(tk[b, :, :n], sk[b, :, q_len - n : q_len], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(tv[b, :, :n], sv[b, :, q_len - n : q_len], rtol=1e-5, atol=1e-6)


def test_frozen_teacher_does_not_share_its_question(tokenizer, batch):
    """A frozen teacher runs the base model without gradient: its question KV is not the student's."""
    module = make_module(tokenizer, mode="frozen")
    assert not module.method.share_question
    assert module.method.teacher_pass(batch, capture=False).question is None
    with pytest.raises(ValueError, match="frozen teacher"):
        teacher_forward(module.backbone, batch, "frozen", question=True)
