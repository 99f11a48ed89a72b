"""Diagnostics (per-term gradients, KV cosine, latent read-out, placeholder ablation) and the study options
(key space, answer-only CE, adapter-free targets, latent scale, pause tokens)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_module
from helpers import FAST, compose_train, metrics_rows

from kava.diagnostics import kv_cosine_sums, pass_change_sums, term_gradients, weighted_terms
from kava.distill.losses import answer_only_targets, codi_loss, token_ce
from kava.evaluation import run_evaluation
from kava.inference import latent_generate, latent_readout
from kava.methods.base import latent_output_scale
from kava.model.rope import unrotate_keys
from kava.model.student import LatentStudent, decoder_of
from kava.model.teacher import teacher_forward
from kava.training import train


def test_term_gradients_match_autograd_and_compare_with_the_ce(module, batch):
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    terms = module.compute_losses(batch)
    weights = module.loss_weights()
    assert weights["codi"] == 10.0 and weights["kv_step_2"] == pytest.approx(1.0 / 3)
    stats = term_gradients(weighted_terms(terms, weights), named)
    for name in ("student_ce", "codi", "kv_step_3"):
        module.zero_grad()
        terms = module.compute_losses(batch)
        (weights[name] * terms[name]).backward()
        norm = torch.cat([p.grad.flatten() for _, p in named if p.grad is not None]).norm()
        assert stats[f"{name}_norm"] == pytest.approx(float(norm), rel=1e-4)
    assert "student_ce_cos_ce" not in stats and -1 <= stats["codi_cos_ce"] <= 1
    assert sum(v for k, v in stats.items() if k.endswith("_share")) == pytest.approx(1.0)
    groups = {k.rsplit("_", 1)[1] for k in stats if "_norm_" in k}
    assert groups == {"lora", "prj", "special"}
    # a term that is the CE scaled by 3 has cosine 1 with it and three times its norm
    terms = module.compute_losses(batch)
    twin = term_gradients({"student_ce": terms["student_ce"], "twin": 3 * terms["student_ce"]}, named)
    assert twin["twin_cos_ce"] == pytest.approx(1.0, abs=1e-5)
    assert twin["twin_norm"] == pytest.approx(3 * twin["student_ce_norm"], rel=1e-5)


def test_pass_change_is_the_relative_distance_to_the_last_pass():
    g = torch.Generator().manual_seed(0)
    last = (torch.randn(2, 3, 2, 4, 5, generator=g), torch.randn(2, 3, 2, 4, 5, generator=g))
    moved = (last[0] + 0.1 * torch.randn(2, 3, 2, 4, 5, generator=g), last[1].clone())
    rows = pass_change_sums([last, moved, last])  # pass 1 = the last pass (a fixed point), pass 2 moved
    rel = (rows[:, 0] / rows[:, 1]).sqrt()
    expect = (moved[0] - last[0]).norm() / torch.cat([last[0].flatten(), last[1].flatten()]).norm()
    assert rel[0] == 0 and rel[2] == 0
    assert rel[1] == pytest.approx(float(expect), rel=1e-5)


def test_kv_cosine_sums_equal_a_loop():
    torch.manual_seed(0)
    n_l, bsz, n_h, m, d, n_t = 2, 3, 2, 4, 5, 3
    latent_kv = [(torch.randn(n_l, bsz, n_h, m, d), torch.randn(n_l, bsz, n_h, m, d)) for _ in range(n_t)]
    tk, tv = torch.randn(n_l, bsz, n_h, m, d), torch.randn(n_l, bsz, n_h, m, d)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    sums, counts = kv_cosine_sums(latent_kv, tk, tv, mask)
    cos = torch.nn.functional.cosine_similarity
    assert sums.shape == (n_t, 2, n_l, m) and counts.tolist() == [4.0, 4.0, 2.0, 2.0]
    for t in range(n_t):
        for j, target in enumerate((tk, tv)):
            for layer in range(n_l):
                for slot in range(m):
                    ref = sum(
                        float(cos(latent_kv[t][j][layer, b, h, slot], target[layer, b, h, slot], dim=0))
                        for b in range(bsz)
                        for h in range(n_h)
                        if mask[b, slot]
                    )
                    assert float(sums[t, j, layer, slot]) == pytest.approx(ref, abs=1e-5)


def _k_proj_outputs(model) -> tuple[list[torch.Tensor], list]:
    """Record every layer's k_proj output (the key before RoPE) during the next forward passes."""
    seen: list[torch.Tensor] = []
    hooks = [
        layer.self_attn.k_proj.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
        for layer in decoder_of(model).layers
    ]
    return seen, hooks


def _heads(x: torch.Tensor, n_kv: int) -> torch.Tensor:
    bsz, seq, _ = x.shape
    return x.view(bsz, seq, n_kv, -1).transpose(1, 2)  # (B, H, S, d)


def test_pre_rope_keys_equal_the_unrotated_projections(module, batch):
    model, cfg = module.backbone, module.backbone.config
    n_kv = cfg.num_key_value_heads
    seen, hooks = _k_proj_outputs(model)
    with torch.no_grad():
        t = teacher_forward(model, batch, "shared")
        teacher_pre = [_heads(k, n_kv) for k in seen]
        seen.clear()
        s = module.student(model, batch.s_q_ids, batch.s_q_mask, batch.s_a_ids, batch.s_a_mask)
    for h in hooks:
        h.remove()
    n_l = cfg.num_hidden_layers
    unrot = unrotate_keys(model, t.keys, batch.t_pos[None, :, None, :])
    for layer in range(n_l):
        torch.testing.assert_close(unrot[layer], teacher_pre[layer], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(t.keys[layer], teacher_pre[layer], atol=1e-3)  # RoPE did rotate them
    # the student's latents: the k_proj calls of the Jacobi passes are layers 0..L-1 after the prefill's
    module.method.key_space = "pre_rope"
    target = module.method.distill_forward(batch)[1]
    latent_kv, t_keys = module.method.kv_in_key_space(batch, target, s)
    m, t_passes = module.student.num_tokens, module.student.num_iterations
    last_pass = [_heads(k, n_kv)[:, :, :m] for k in seen[n_l * t_passes : n_l * (t_passes + 1)]]  # the answer follows
    for layer in range(n_l):
        torch.testing.assert_close(latent_kv[-1][0][layer], last_pass[layer], atol=1e-5, rtol=1e-5)
    # the targets are the unrotated teacher keys at the kept positions
    pos = batch.cot_start[None, :, None, None] + target.index
    gathered = teacher_pre_stack = torch.stack(teacher_pre)
    idx = pos[..., None].expand(*pos.shape, gathered.shape[-1])
    expect = teacher_pre_stack.gather(3, idx) * target.mask[None, :, None, :, None]
    torch.testing.assert_close(t_keys, expect, atol=1e-5, rtol=1e-5)
    module.method.key_space = "post_rope"
    post_kv, post_keys = module.method.kv_in_key_space(batch, target, s)
    assert post_kv is s.latent_kv and post_keys is target.keys


def test_answer_only_ce_covers_the_answer_and_eos(module, batch):
    targets = answer_only_targets(batch.s_targets, batch.s_distill)
    for b in range(targets.shape[0]):
        kept = targets[b][targets[b] != -100].tolist()
        full = batch.s_targets[b][batch.s_targets[b] != -100].tolist()
        n_prompt = int(batch.s_distill[b])
        assert kept == full[n_prompt:] and kept[-1] == module.tokenizer.eos_token_id
    logits = torch.randn(*batch.s_targets.shape, 7)
    ce, per = token_ce(logits, answer_only_targets(batch.s_targets.clamp(max=6), batch.s_distill))
    assert torch.isfinite(ce) and per.shape == (targets.shape[0],)


def test_answer_only_option_changes_only_the_student_ce(tokenizer, batch):
    a, b = make_module(tokenizer), make_module(tokenizer, student_ce_on="answer")
    ta, tb = a.compute_losses(batch), b.compute_losses(batch)
    assert not torch.isclose(ta["student_ce"], tb["student_ce"])
    for k in ("teacher_ce", "codi", "kv_step_1", "kv_total"):
        torch.testing.assert_close(ta[k], tb[k])


def test_base_targets_come_from_the_adapter_free_model(tokenizer, batch):
    module = make_module(tokenizer)
    module.method.teacher_targets = "base"
    t, target, _ = module.method.distill_forward(batch)
    shared = teacher_forward(module.backbone, batch, "shared")
    frozen = teacher_forward(module.backbone, batch, "frozen")
    torch.testing.assert_close(t.distill_hidden, frozen.distill_hidden)
    torch.testing.assert_close(t.keys, frozen.keys)
    assert not torch.allclose(t.distill_hidden, shared.distill_hidden)
    torch.testing.assert_close(t.logits, shared.logits)
    assert t.logits.requires_grad  # the teacher CE still trains the adapters
    module.method.teacher_targets = "base_codi"  # only the CODI target from the base
    t, target, _ = module.method.distill_forward(batch)
    torch.testing.assert_close(t.distill_hidden, frozen.distill_hidden)
    torch.testing.assert_close(t.next_hidden, frozen.next_hidden)
    torch.testing.assert_close(t.keys, shared.keys)
    torch.testing.assert_close(t.importance, shared.importance)
    assert not torch.allclose(t.keys, frozen.keys) and t.logits.requires_grad


def test_embedding_scale_starts_latents_at_token_scale(module, batch):
    emb = module.backbone.get_input_embeddings().weight
    rms = float(emb.pow(2).mean().sqrt())
    assert latent_output_scale("layernorm", emb) is None
    from kava.schema import validate_train

    with pytest.raises(ValueError, match="latent.output_scale=huge: must be one of"):  # checked before anything loads
        validate_train(compose_train(["latent.output_scale=huge"]))
    student = LatentStudent(
        emb.shape[1], 4, 3, init_embedding=emb.mean(0), output_scale=latent_output_scale("embedding", emb)
    )
    with torch.no_grad():
        _, z0 = student.prefill(module.backbone, batch.s_q_ids, batch.s_q_mask)
        _, z_default = module.student.prefill(module.backbone, batch.s_q_ids, batch.s_q_mask)
    assert float(z0.pow(2).mean().sqrt()) == pytest.approx(rms, rel=0.05)
    assert float(z_default.pow(2).mean().sqrt()) == pytest.approx(1.0, rel=0.05)


def test_pause_tokens_answer_from_the_placeholders(tokenizer, batch):
    module = make_module(tokenizer, t=0, alpha1=0.0, alpha2=0.0)
    terms = module.compute_losses(batch)
    assert "kv_step_1" not in terms and float(terms["kv_total"]) == 0.0
    # the answer pass equals one plain forward over Q <bot> ph..ph <eot> P A
    model, st = module.backbone, module.student
    with torch.no_grad():
        s = st(model, batch.s_q_ids, batch.s_q_mask, batch.s_a_ids, batch.s_a_mask)
        bsz, m = batch.s_q_ids.shape[0], st.num_tokens
        emb = model.get_input_embeddings()
        special = [st.special_embed(i, bsz, torch.float32) for i in (st.BOT, st.PH, st.EOT)]
        embeds = torch.cat(
            [emb(batch.s_q_ids), special[0], special[1].expand(bsz, m, -1), special[2], emb(batch.s_a_ids)], dim=1
        )
        mask = torch.cat([batch.s_q_mask, batch.s_q_mask.new_ones(bsz, m + 2), batch.s_a_mask], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = decoder_of(model)(inputs_embeds=embeds, attention_mask=mask, position_ids=pos)
        ref = model.get_output_embeddings()(out.last_hidden_state[:, -s.answer_logits.shape[1] :])
    valid = batch.s_a_mask.bool()
    torch.testing.assert_close(s.answer_logits[:, 1:][valid], ref[:, 1:][valid], atol=1e-4, rtol=1e-4)


def test_placeholder_ablation_replaces_the_latents(module, batch, tokenizer):
    model, st = module.backbone, module.student
    fed = []
    hook = decoder_of(model).register_forward_pre_hook(
        lambda _m, args, kwargs: fed.append(kwargs.get("inputs_embeds")), with_kwargs=True
    )
    q_ids, q_mask = batch.s_q_ids, batch.s_q_mask
    with torch.no_grad():  # one answer token: no decoding pass after <eot> P
        full = latent_generate(st, model, tokenizer, q_ids, q_mask, "The answer is:", 1)
        n_full = len(fed)
        fed.clear()
        abl = latent_generate(st, model, tokenizer, q_ids, q_mask, "The answer is:", 1, placeholder_latents=True)
    hook.remove()
    m, t = st.num_tokens, st.num_iterations
    assert n_full == 1 + t and len(fed) == 1  # <eot> P rides in the last pass
    assert full.forward_passes == [t + 1] * len(q_ids) and abl.forward_passes == [1] * len(q_ids)
    phs = fed[0][:, q_ids.shape[1] + 1 : q_ids.shape[1] + 1 + m]  # Q <bot>, M placeholders (nothing projected), <eot> P
    assert torch.equal(phs, st.special[st.PH].expand_as(phs))
    assert torch.equal(fed[0][:, q_ids.shape[1] + 1 + m], st.special[st.EOT].expand_as(fed[0][:, 0]))


def test_latent_readout_shapes(module, batch):
    ids, probs = latent_readout(module.student, module.backbone, batch.s_q_ids, batch.s_q_mask, k=3)
    t, m = module.student.num_iterations, module.student.num_tokens
    assert ids.shape == probs.shape == (t, batch.s_q_ids.shape[0], m, 3)
    assert (probs[..., :-1] >= probs[..., 1:]).all() and (probs <= 1).all()


def test_training_writes_gradient_and_kv_cosine_diagnostics(tmp_path):
    cfg = compose_train(
        [o for o in FAST if o != "callbacks=none"]
        + ["callbacks=default", "callbacks.progress_bar=null", "diagnostics.grad_every_n_steps=2"]
        + [f"paths.output_dir={tmp_path}"]
    )
    train(cfg)
    rows = metrics_rows(tmp_path)
    grad_rows = [r for r in rows if r.get("train/grad/codi_norm")]
    assert [int(r["step"]) for r in grad_rows] == [0, 2]
    assert {"train/grad/kv_step_3_cos_ce", "train/grad/student_ce_share", "train/grad/teacher_ce_norm"} <= set(rows[0])
    assert any(r.get("val/kv_cos_k_step_3") for r in rows)
    change = [r for r in rows if r.get("val/kv_pass_change_step_1")]
    assert change and all(0.0 <= float(r["val/kv_pass_change_step_2"]) for r in change)
    assert "val/kv_pass_change_step_3" not in rows[0]  # the last pass is the reference
    figures = tmp_path / "figures"
    assert (figures / "kv_cosine_step4.png").exists()
    lines = (figures / "kv_cosine.csv").read_text().splitlines()
    assert lines[0] == "global_step,jacobi_step,kind,layer,slot,cosine"
    n_layers, m, t = cfg.model.tiny.num_layers, cfg.latent.num_tokens, cfg.latent.num_iterations
    assert len(lines) == 1 + t * 2 * n_layers * m
    assert all(-1.0001 <= float(line.rsplit(",", 1)[1]) <= 1.0001 for line in lines[1:])


def test_eval_inspects_latents_and_ablates_them(tmp_path):
    run = tmp_path / "run"
    train(compose_train(FAST + [f"paths.output_dir={run}", "callbacks=default", "callbacks.progress_bar=null"]))
    out = tmp_path / "eval"
    results = run_evaluation(
        str(run / "checkpoints" / "last.ckpt"),
        out,
        batch_size=4,
        max_new_tokens=3,
        inspect_latents=True,
        inspect_top_k=2,
    )
    assert set(results["synthetic"]) == {"student", "student_placeholder"}
    report = json.loads((out / "results.json").read_text())
    readout = report["latent_readout"]["synthetic"]
    assert readout["questions_with_cot"] == 8 and len(readout["share_top1_in_cot_by_step"]) == 3
    rows = [json.loads(line) for line in (out / "latents.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and rows[0]["cot"] and len(rows[0]["steps"]) == 3
    slot = rows[0]["steps"][0][0]
    assert set(slot) == {"slot", "top", "top1_in_cot"} and len(slot["top"]) == 2
    assert isinstance(slot["top"][0][0], str) and 0 <= slot["top"][0][1] <= 1


def test_codi_before_answer_distils_the_state_that_predicts_the_first_digit(tokenizer, batch):
    module = make_module(tokenizer, codi_position="before_answer")
    assert module.method._space_ids is not None  # found when built: a compiled step (model.compile=step) has no loop
    assert make_module(tokenizer).method._space_ids is None  # only that setting pays for the vocabulary scan
    lead = module.method.leading_space(batch)
    first = batch.s_a_ids.gather(1, batch.s_distill[:, None]).squeeze(1)
    assert all(tokenizer.decode([int(i)]).strip() == "" for i in first) and lead.tolist() == [1] * len(first)
    t, target, s = module.method.distill_forward(batch)
    terms, _ = module.method.terms(batch, t, target, s)
    bidx = torch.arange(len(first))
    s_h = torch.stack(s.answer_hidden[1:])[:, bidx, batch.s_distill + 1]
    with torch.no_grad():
        ids, mask, pos = batch.t_ids, batch.t_mask, batch.t_pos
        dec = decoder_of(module.backbone)
        out = dec(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
    t_h = torch.stack(out.hidden_states[1:])[:, bidx, batch.t_distill + 1]
    torch.testing.assert_close(t.next_hidden, t_h)
    torch.testing.assert_close(terms["codi"], codi_loss(s_h, t_h, True)[0])
    # the teacher position is the one whose next token is the answer's first digit
    nxt = batch.t_ids.gather(1, (batch.t_distill + 2)[:, None]).squeeze(1)
    assert all(tokenizer.decode([int(i)]).strip().isdigit() or tokenizer.decode([int(i)]).strip() == "-" for i in nxt)
    default = make_module(tokenizer)
    assert not torch.isclose(default.compute_losses(batch)["codi"], terms["codi"])


@pytest.mark.parametrize("key", ["student_ce_on", "codi_position", "key_space", "codi_layers"])
def test_unknown_study_option_names_the_setting(key):
    from kava.schema import validate_train

    with pytest.raises(ValueError, match=f"loss.{key}=bogus: must be one of"):  # checked once, before anything loads
        validate_train(compose_train([f"loss.{key}=bogus"]))


def test_gradient_diagnostics_leave_training_unchanged(tmp_path):
    base = [o for o in FAST if o != "callbacks=none"] + ["callbacks=default", "callbacks.progress_bar=null"]
    base += ["callbacks.kv_step_figure=null", "callbacks.kv_cosine_figure=null", "model.lora.dropout=0.1"]
    losses = []
    for every in (0, 1):
        out = tmp_path / f"every{every}"
        train(compose_train(base + [f"diagnostics.grad_every_n_steps={every}", f"paths.output_dir={out}"]))
        losses.append([float(r["train/loss"]) for r in metrics_rows(out) if r.get("train/loss")])
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-6)
