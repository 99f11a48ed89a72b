"""Jacobi-student invariants of docs/design.md §2.2 and the dense KV aggregation of §2.5."""

from __future__ import annotations

import pytest
import torch
from conftest import make_module

from kava.distill.losses import kv_step_loss, step_slot_counts
from kava.model.cache import cache_from, cache_kw, cache_of, layer_kv, slice_kv, stack_kv
from kava.model.student import decoder_of, pad_positions


def run_student(module, batch):
    with torch.no_grad():
        return module.student(module.backbone, batch.s_q_ids, batch.s_q_mask, batch.s_a_ids, batch.s_a_mask)


def sequential_rollout(module, batch):
    """CODI-style reference: z_1 = prj(h(<bot>)), then z_{i+1} = prj(h(z_i)) with a growing cache."""
    st, model = module.student, module.backbone
    q_ids, q_mask = batch.s_q_ids, batch.s_q_mask
    bsz = q_ids.shape[0]
    with torch.no_grad():
        emb = torch.cat([model.get_input_embeddings()(q_ids), st.special[st.BOT].expand(bsz, 1, -1)], 1)
        mask = torch.cat([q_mask, q_mask.new_ones(bsz, 1)], 1)
        out = decoder_of(model)(
            inputs_embeds=emb, attention_mask=mask, position_ids=pad_positions(mask), use_cache=True
        )
        cache, z = cache_of(out), [st.project(out.last_hidden_state[:, -1:])]
        for _ in range(st.num_tokens - 1):
            mask = torch.cat([mask, mask.new_ones(bsz, 1)], 1)
            out = decoder_of(model)(
                inputs_embeds=z[-1],
                attention_mask=mask,
                position_ids=pad_positions(mask)[:, -1:],
                **cache_kw(cache),
                use_cache=True,
            )
            cache = cache_of(out)
            z.append(st.project(out.last_hidden_state))
        # the KV of the last latent comes from one more step, as in the Jacobi pass that consumes it
        mask = torch.cat([mask, mask.new_ones(bsz, 1)], 1)
        out = decoder_of(model)(
            inputs_embeds=z[-1],
            attention_mask=mask,
            position_ids=pad_positions(mask)[:, -1:],
            **cache_kw(cache),
            use_cache=True,
        )
    return torch.cat(z, 1), stack_kv(slice_kv(layer_kv(cache_of(out)), -st.num_tokens))


def test_first_latent_is_fixed_across_iterations(tokenizer, batch):
    module = make_module(tokenizer, m=4, t=3)
    out = run_student(module, batch)
    assert len(out.latents) == 4
    for z in out.latents[1:]:
        assert torch.equal(z[:, 0], out.latents[0][:, 0])
    # the others do change, or the check above would be vacuous
    assert not torch.allclose(out.latents[1][:, 1:], out.latents[0][:, 1:])


@pytest.mark.parametrize("t", [4, 5])
def test_jacobi_with_t_ge_m_equals_sequential_rollout(tokenizer, batch, t):
    module = make_module(tokenizer, m=4, t=t)
    out = run_student(module, batch)
    z_seq, (k_seq, v_seq) = sequential_rollout(module, batch)
    torch.testing.assert_close(out.latents[t - 1], z_seq, atol=1e-5, rtol=1e-5)
    k_t, v_t = out.latent_kv[-1]
    torch.testing.assert_close(k_t, k_seq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v_t, v_seq, atol=1e-5, rtol=1e-5)


def test_jacobi_with_t_lt_m_differs_from_rollout(tokenizer, batch):
    module = make_module(tokenizer, m=4, t=2)
    out = run_student(module, batch)
    z_seq, _ = sequential_rollout(module, batch)
    # the first T latents are already exact, the later ones are not yet
    torch.testing.assert_close(out.latents[1][:, :2], z_seq[:, :2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.latents[1], z_seq, atol=1e-4)


def test_each_kv_t_comes_from_its_own_pass_and_answer_sees_kv_T(tokenizer, batch):
    module = make_module(tokenizer, m=4, t=3)
    calls = []
    hook = decoder_of(module.backbone).register_forward_hook(lambda *a: calls.append(1))
    out = run_student(module, batch)
    hook.remove()
    assert len(calls) == 1 + 3  # prefill, T Jacobi passes (the answer rides in the last): no extra forward for KV_t
    st, model = module.student, module.backbone
    prefix, _ = st.prefill(model, batch.s_q_ids, batch.s_q_mask)
    prefix_mask = torch.cat([batch.s_q_mask, batch.s_q_mask.new_ones(batch.s_q_ids.shape[0], 1)], 1)
    with torch.no_grad():
        for step in range(3):
            _, cache, _, _ = st.jacobi_pass(model, prefix, prefix_mask, out.latents[step])
            k, v = stack_kv(slice_kv(layer_kv(cache), -4))
            torch.testing.assert_close(out.latent_kv[step][0], k, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(out.latent_kv[step][1], v, atol=1e-6, rtol=1e-6)

        def answer_logits(kv):
            k, v = kv
            full = [(torch.cat([pk, k[i]], 2), torch.cat([pv, v[i]], 2)) for i, (pk, pv) in enumerate(prefix)]
            cache = cache_from(full, model.config)
            bsz = batch.s_q_ids.shape[0]
            a_emb = model.get_input_embeddings()(batch.s_a_ids)
            emb = torch.cat([st.special[st.EOT].expand(bsz, 1, -1), a_emb], 1)
            mask = torch.cat([prefix_mask, prefix_mask.new_ones(bsz, 5), batch.s_a_mask], 1)
            h = decoder_of(model)(
                inputs_embeds=emb,
                attention_mask=mask,
                position_ids=pad_positions(mask)[:, -emb.shape[1] :],
                **cache_kw(cache),
                use_cache=True,
            ).last_hidden_state
            return model.get_output_embeddings()(h)

        torch.testing.assert_close(out.answer_logits, answer_logits(out.latent_kv[-1]), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(out.answer_logits, answer_logits(out.latent_kv[0]), atol=1e-4)


def test_one_logged_kv_step_per_iteration(tokenizer, batch):
    for t in (1, 3):
        module = make_module(tokenizer, m=4, t=t)
        with torch.no_grad():
            terms = module.compute_losses(batch)
        steps = sorted(k for k in terms if k.startswith("kv_step_"))
        assert steps == [f"kv_step_{i}" for i in range(1, t + 1)]


def test_kv_steps_last_and_all(tokenizer, batch):
    last = make_module(tokenizer, m=4, t=3, kv_steps="last")
    uniform = make_module(tokenizer, m=4, t=3, kv_steps="all")
    linear = make_module(tokenizer, m=4, t=3, kv_steps="linear")
    with torch.no_grad():
        a, b, c = last.compute_losses(batch), uniform.compute_losses(batch), linear.compute_losses(batch)
    steps = torch.stack([b[f"kv_step_{i}"] for i in (1, 2, 3)])
    assert torch.equal(a["kv_total"], a["kv_step_3"])
    torch.testing.assert_close(b["kv_total"], steps.mean(), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(c["kv_total"], (steps * torch.tensor([1.0, 2.0, 3.0])).sum() / 6, atol=1e-7, rtol=1e-6)
    # same weights, same data: every per-step value is identical whatever the schedule
    for i in (1, 2, 3):
        assert torch.equal(a[f"kv_step_{i}"], b[f"kv_step_{i}"])
    assert not torch.equal(a["kv_total"], b["kv_total"])
    # the total is built from the schedule-weighted KV term
    expected = a["student_ce"] + a["teacher_ce"] + 10.0 * a["codi"] + 1.0 * a["kv_step_3"]
    torch.testing.assert_close(a["loss"], expected)


def test_step_slot_counts():
    assert step_slot_counts("all", 8, 3) == [8, 8, 8]
    assert step_slot_counts("progressive", 8, 3) == [3, 6, 8]
    assert step_slot_counts("progressive", 24, 3) == [8, 16, 24]
    assert step_slot_counts("progressive", 6, 6) == [1, 2, 3, 4, 5, 6]  # T = M: Jacobi's one latent per pass
    assert step_slot_counts("progressive", 2, 3) == [1, 2, 2]
    with pytest.raises(ValueError, match="loss.kv_slots"):
        step_slot_counts("first", 8, 3)


def test_kv_slots_progressive_covers_a_prefix_per_step(tokenizer, batch):
    """Step t's KV loss under ``progressive`` is the loss over the first ceil(t*M/T) slots, computed directly from
    the same passes; the last step covers every slot, so it equals the ``all`` value."""
    prog = make_module(tokenizer, m=4, t=3, kv_slots="progressive")
    with torch.no_grad():
        t_out, target, s = prog.method.distill_forward(batch)
        terms, _ = prog.method.terms(batch, t_out, target, s)
        full, _ = make_module(tokenizer, m=4, t=3).method.terms(batch, t_out, target, s)
    for i, n in enumerate((2, 3, 4)):
        k, v = s.latent_kv[i]
        expected, _ = kv_step_loss(
            k[..., :n, :], v[..., :n, :], target.keys[..., :n, :], target.values[..., :n, :],
            target.mask[:, :n], "smooth_l1", True,
        )  # fmt: skip
        torch.testing.assert_close(terms[f"kv_step_{i + 1}"], expected)
    assert not torch.allclose(terms["kv_step_1"], full["kv_step_1"])
    torch.testing.assert_close(terms["kv_step_3"], full["kv_step_3"])


@pytest.mark.parametrize("aligned", [False, True])
def test_aligned_latents_sit_at_the_teachers_cot_positions(tokenizer, aligned):
    """latent.align_positions: a latent fed the embedding of CoT token j makes the teacher's first-layer keys at j
    (same position, same rotation) only when aligned; so do ``<eot> P`` when M is the CoT's length."""
    module = make_module(tokenizer, m=4, t=1)
    st, model = module.student, module.backbone
    st.align_positions = aligned
    q = tokenizer("Tom has 3 boxes of 4 apples.")["input_ids"]
    c = tokenizer(" <<3*4=12>>", add_special_tokens=False)["input_ids"][:4]
    q_ids, q_mask = torch.tensor([q]), torch.ones(1, len(q), dtype=torch.long)
    with torch.no_grad():
        ids = torch.tensor([q + c])
        teacher = decoder_of(model)(input_ids=ids, position_ids=torch.arange(ids.shape[1])[None], use_cache=True)
        t_keys = layer_kv(cache_of(teacher))[0][0][:, :, -4:]  # layer 0, keys of the CoT
        prefix, _ = st.prefill(model, q_ids, q_mask)
        z = model.get_input_embeddings()(torch.tensor([c]))
        _, cache, _, _ = st.jacobi_pass(model, prefix, torch.cat([q_mask, q_mask.new_ones(1, 1)], 1), z)
        s_keys = layer_kv(cache)[0][0][:, :, -4:]
    assert torch.allclose(s_keys, t_keys, atol=1e-5) == aligned
    pos = pad_positions(torch.ones(1, len(q) + 1 + 4 + 3, dtype=torch.long))[:, -3:]  # <eot> and two prompt tokens
    want = torch.tensor([[len(q) + 4, len(q) + 4, len(q) + 5]]) if aligned else pos
    assert torch.equal(st.answer_positions(pos), want)


@pytest.mark.parametrize(
    "extra",
    [
        ("method=kava",),
        ("method=kava", "latent.align_positions=true"),
        ("method=pause", "latent.align_positions=true"),
        ("method=codi", "latent.align_positions=true"),
    ],
)
def test_answer_riding_in_the_last_pass_equals_a_separate_answer_pass(tokenizer, batch, extra):
    """The training forward runs ``<eot> P A EOS`` in the rollout's last decoder call; the reference runs the
    rollout alone, then the answer on its cache in a call of its own (decoding's way)."""
    module = make_module(tokenizer, m=4, t=3, extra=extra)
    st, model = module.student, module.backbone
    q_ids, q_mask, a_ids, a_mask = batch.s_q_ids, batch.s_q_mask, batch.s_a_ids, batch.s_a_mask
    bsz, m = q_ids.shape[0], st.num_tokens
    with torch.no_grad():
        out = st(model, q_ids, q_mask, a_ids, a_mask)
        r = st.rollout(model, q_ids, q_mask)
        emb = torch.cat([st.special[st.EOT].expand(bsz, 1, -1), model.get_input_embeddings()(a_ids)], 1)
        mask = torch.cat([q_mask, q_mask.new_ones(bsz, 1 + m + 1), a_mask], 1)
        ref = decoder_of(model)(
            inputs_embeds=emb,
            attention_mask=mask,
            position_ids=st.answer_positions(pad_positions(mask)[:, -emb.shape[1] :]),
            **cache_kw(r.cache),
            use_cache=True,
            output_hidden_states=True,
        )
    torch.testing.assert_close(out.answer_logits, model.get_output_embeddings()(ref.last_hidden_state))
    assert len(out.answer_hidden) == len(ref.hidden_states) == model.config.num_hidden_layers + 1
    for a, b in zip(out.answer_hidden, ref.hidden_states, strict=True):
        torch.testing.assert_close(a, b)
    for (k, v), (rk, rv) in zip(out.latent_kv, r.latent_kv, strict=True):  # the tail does not leak into KV_t
        torch.testing.assert_close(k, rk)
        torch.testing.assert_close(v, rv)
    assert len(out.latent_kv) == {"kava": 3, "pause": 0, "codi": 1}[extra[0].split("=")[1]]
