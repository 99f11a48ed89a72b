"""Gradient flow of the teacher pass (docs/design.md §2.3): shared trains through its CE only, frozen not at all."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_module
from helpers import compose_train

from kava.data.collate import target_rows
from kava.distill.losses import selected_token_ce, target_logits, token_ce
from kava.distill.rkv import compress
from kava.model.student import decoder_of
from kava.model.teacher import teacher_forward


def lora_grads(module):
    return {n: p.grad for n, p in module.backbone.named_parameters() if p.requires_grad}


def test_shared_mode_teacher_ce_has_gradient_and_targets_do_not(tokenizer, batch):
    module = make_module(tokenizer, mode="shared")
    out = teacher_forward(module.backbone, batch, "shared")
    assert out.logits.requires_grad
    for target in (out.distill_hidden, out.keys, out.values, out.importance):
        assert not target.requires_grad and target.grad_fn is None
    sel = batch.t_targets != -100
    assert out.logits.shape[0] == int(sel.sum())  # logits at the CE's target positions only
    torch.nn.functional.cross_entropy(out.logits, batch.t_targets[sel]).backward()
    grads = lora_grads(module)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_frozen_mode_runs_the_base_model_without_gradient(tokenizer, batch):
    module = make_module(tokenizer, mode="frozen")
    out = teacher_forward(module.backbone, batch, "frozen")
    for t in (out.logits, out.distill_hidden, out.keys, out.values, out.importance):
        assert not t.requires_grad
    # adapters are off: the logits equal those of the base model with LoRA disabled by hand
    with torch.no_grad(), module.backbone.disable_adapter():
        base = module.backbone(input_ids=batch.t_ids, attention_mask=batch.t_mask, position_ids=batch.t_pos)
    sel = batch.t_targets != -100
    torch.testing.assert_close(out.logits, base.logits[sel], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        lora = module.backbone(input_ids=batch.t_ids, attention_mask=batch.t_mask, position_ids=batch.t_pos)
    assert not torch.allclose(out.logits, lora.logits[sel], atol=1e-4)


def test_selected_ce_equals_token_ce_with_a_row_without_targets():
    """Per-sample values of ``selected_token_ce`` equal ``token_ce``'s, a row with no target (0) included."""
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    targets = torch.randint(0, 11, (3, 7))
    targets[0, :3] = -100
    targets[1] = -100
    targets[2, 5:] = -100
    rows = target_rows(targets)
    ce, per = selected_token_ce(logits.flatten(0, 1)[rows], targets, rows)
    ref, ref_per = token_ce(logits, targets)
    torch.testing.assert_close(per, ref_per)
    torch.testing.assert_close(ce, ref)
    assert per[1] == 0 and per[0] > 0 and per[2] > 0
    plain = [  # a plain reference: each sample's CE over its own target positions, 0 for none
        F.cross_entropy(logits[b][targets[b] != -100], targets[b][targets[b] != -100]) if (targets[b] != -100).any()
        else torch.tensor(0.0) for b in range(3)
    ]  # fmt: skip
    torch.testing.assert_close(per, torch.stack(plain), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ce, torch.stack(plain).mean(), rtol=1e-6, atol=1e-6)


def test_teacher_ce_from_target_rows_equals_the_full_logits_ce(tokenizer, batch):
    """The teacher's CE from the logits of its target positions only: same batch and per-sample values (to 1e-6) and
    the same gradients as the CE over the full (B, S, V) logits with -100 ignored; no logits elsewhere."""
    module = make_module(tokenizer, mode="shared")
    out = teacher_forward(module.backbone, batch, "shared", capture=False)
    ce, per = selected_token_ce(out.logits, batch.t_targets, batch.t_target_rows)
    hidden = decoder_of(module.backbone)(input_ids=batch.t_ids, attention_mask=batch.t_mask, position_ids=batch.t_pos)
    full = module.backbone.get_output_embeddings()(hidden.last_hidden_state)
    ref, ref_per = token_ce(full, batch.t_targets)
    assert full.shape[:2] == batch.t_targets.shape and out.logits.shape[0] < full.shape[0] * full.shape[1]
    assert (batch.t_targets == -100).any(-1).all()  # every row has positions without logits (its question)
    torch.testing.assert_close(ce, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(per, ref_per, rtol=1e-6, atol=1e-6)
    params = [p for p in module.backbone.parameters() if p.requires_grad]
    got = torch.autograd.grad(ce, params, allow_unused=True)
    want = torch.autograd.grad(ref, params, allow_unused=True)
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_frozen_mode_total_loss_ignores_teacher(tokenizer, batch):
    module = make_module(tokenizer, mode="frozen")
    terms = module.compute_losses(batch)
    expected = terms["student_ce"] + 10.0 * terms["codi"] + terms["kv_total"]
    torch.testing.assert_close(terms["loss"], expected)
    terms["loss"].backward()
    # gradients reach LoRA only through the student; the student's own parameters train
    assert module.student.special.grad is not None


def test_shared_mode_distillation_terms_do_not_reach_teacher(tokenizer, batch, monkeypatch):
    """KV and CODI gradients are the same whether or not the teacher pass is recorded by autograd (the student runs
    its own question here: a shared question is the one path into the teacher pass, test_shared_question_*)."""
    import kava.methods.base as lm

    def grads_of_distill_terms():
        module = make_module(tokenizer, mode="shared", extra=["teacher.share_question=false"])
        terms = module.compute_losses(batch)
        (terms["kv_total"] + terms["codi"]).backward()
        return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    with_graph = grads_of_distill_terms()
    real = lm.teacher_forward

    def no_grad_teacher(*args, **kwargs):
        with torch.no_grad():
            return real(*args, **kwargs)

    monkeypatch.setattr(lm, "teacher_forward", no_grad_teacher)
    without_graph = grads_of_distill_terms()
    assert with_graph.keys() == without_graph.keys() and with_graph
    for n in with_graph:
        torch.testing.assert_close(with_graph[n], without_graph[n], atol=1e-7, rtol=1e-6)


def test_unknown_mode_is_rejected():
    from kava.schema import validate_train

    with pytest.raises(ValueError, match="teacher.mode=bogus: must be one of"):  # checked before anything loads
        validate_train(compose_train(["teacher.mode=bogus"]))


def test_the_step_losses_have_no_data_dependent_shapes(tokenizer, batch):
    """The CEs and the R-KV compression trace into one graph each: boolean-mask indexing, ``nonzero`` or ``.item()``
    (a shape read from the data, a host sync per call on a GPU) would break dynamo's graph (its default config)."""
    torch.manual_seed(0)
    logits = torch.randn(*batch.s_targets.shape, 50)
    assert torch._dynamo.explain(token_ce)(logits, batch.s_targets.clamp(max=49)).graph_break_count == 0
    hidden, head = torch.randn(*batch.t_targets.shape, 16), torch.nn.Linear(16, 300)

    def teacher_ce(hidden, targets, rows):
        return selected_token_ce(target_logits(head, hidden, rows), targets, rows)

    assert torch._dynamo.explain(teacher_ce)(hidden, batch.t_targets, batch.t_target_rows).graph_break_count == 0
    n_l, bsz, n_h, s, d = 2, batch.size, 2, batch.t_ids.shape[1], 8
    keys, values, imp = torch.randn(n_l, bsz, n_h, s, d), torch.randn(n_l, bsz, n_h, s, d), torch.rand(n_l, bsz, n_h, s)
    args = (keys, values, imp, batch.cot_start, batch.cot_len, 4, 0.1)
    assert torch._dynamo.explain(compress)(*args, span=batch.cot_span).graph_break_count == 0
    assert torch._dynamo.explain(compress)(*args).graph_break_count > 0  # without the host's span: read from the data
