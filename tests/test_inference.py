"""Batched, cached decoding: batch = one by one, exact pass counts, CoT = transformers' greedy generate."""

from __future__ import annotations

import pytest
import torch
from conftest import make_module

from kava.inference import cot_generate, encode_questions, latent_generate, stop_token_ids
from kava.model.cache import cache_kw, cache_of
from kava.model.student import decoder_of, pad_positions


def questions(records, n=5):
    qs = [r.question for r in records[:n]]
    qs[1] = qs[1][: len(qs[1]) // 2]  # different lengths, so the batch is left-padded
    return qs


def test_latent_batched_equals_one_by_one(tokenizer, records):
    module = make_module(tokenizer, m=4, t=3)
    qs = questions(records)
    stops = {tokenizer.eos_token_id}
    q_ids, q_mask = encode_questions(tokenizer, qs)
    batched = latent_generate(module.student, module.backbone, tokenizer, q_ids, q_mask, "The answer is:", 6, stops)
    for i, q in enumerate(qs):
        one_ids, one_mask = encode_questions(tokenizer, [q])
        one = latent_generate(module.student, module.backbone, tokenizer, one_ids, one_mask, "The answer is:", 6, stops)
        assert batched.tokens[i] == one.tokens[0]
        assert batched.texts[i] == one.texts[0]
        assert batched.forward_passes[i] == one.forward_passes[0]


def test_latent_forward_pass_count_is_exact(tokenizer, records):
    module = make_module(tokenizer, m=4, t=2)
    qs = questions(records, 3)
    q_ids, q_mask = encode_questions(tokenizer, qs)
    calls = []
    hook = module.backbone.get_decoder().register_forward_hook(lambda *a: calls.append(1))
    # make the first question stop after its 2nd token: treat that token as a stop token
    free = latent_generate(module.student, module.backbone, tokenizer, q_ids, q_mask, "The answer is:", 5, set())
    calls.clear()
    stops = {free.tokens[0][1]}
    out = latent_generate(module.student, module.backbone, tokenizer, q_ids, q_mask, "The answer is:", 5, stops)
    hook.remove()
    for toks, passes in zip(out.tokens, out.forward_passes, strict=True):
        assert passes == 1 + 2 + (len(toks) - 1)  # prefill, T passes (``<eot> P`` rides in the last), tokens
    assert len(out.tokens[0]) <= 2
    # the batch runs as many passes as its slowest question
    assert len(calls) == max(out.forward_passes)
    assert all(len(t) == 5 for t, f in zip(free.tokens, free.forward_passes, strict=True))
    assert free.forward_passes == [1 + 2 + 4] * 3


def test_cot_decoding_equals_generate(tokenizer, records):
    module = make_module(tokenizer)
    model = module.backbone
    qs = questions(records, 4)
    q_ids, q_mask = encode_questions(tokenizer, qs)
    ours = cot_generate(model, tokenizer, q_ids, q_mask, max_new_tokens=12, stops={tokenizer.eos_token_id})
    ref = model.generate(
        input_ids=q_ids,
        attention_mask=q_mask,
        do_sample=False,
        max_new_tokens=12,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    for i in range(len(qs)):
        gen = ref[i, q_ids.shape[1] :].tolist()
        n = len(ours.tokens[i])
        assert ours.tokens[i] == gen[:n]
        assert n == 12 or ours.tokens[i][-1] == tokenizer.eos_token_id
        assert ours.forward_passes[i] == n


def test_newline_tokens_stop(tokenizer):
    stops = stop_token_ids(tokenizer)
    assert tokenizer.eos_token_id in stops
    nl = tokenizer("a\nb", add_special_tokens=False)["input_ids"]
    assert any(t in stops for t in nl)
    assert not any(t in stops for t in tokenizer(" 42", add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("extra", [(), ("latent.align_positions=true",), ("method=codi",), ("method=pause",)])
def test_latent_decoding_equals_a_separate_prompt_pass(tokenizer, records, extra):
    """``<eot> P`` riding in the rollout's last pass decodes what the rollout followed by a pass of its own over
    ``<eot> P`` decodes (the reference below: greedy, no stop token)."""
    module = make_module(tokenizer, m=4, t=3, extra=extra)
    st, model = module.student, module.backbone
    q_ids, q_mask = encode_questions(tokenizer, questions(records, 4))
    seen = []  # the LM head's output at every decoding step
    hook = model.get_output_embeddings().register_forward_hook(lambda mod, args, res: seen.append(res))
    out = latent_generate(st, model, tokenizer, q_ids, q_mask, "The answer is:", 4, set())
    hook.remove()
    bsz = q_ids.shape[0]
    with torch.no_grad():
        cache = st.rollout(model, q_ids, q_mask).cache
        p_ids = torch.tensor(tokenizer(" The answer is:", add_special_tokens=False)["input_ids"])[None]
        emb = torch.cat(
            [st.special[st.EOT].expand(bsz, 1, -1), model.get_input_embeddings()(p_ids).expand(bsz, -1, -1)], 1
        )
        mask = torch.cat([q_mask, q_mask.new_ones(bsz, 1 + st.num_tokens + emb.shape[1])], 1)
        pos = st.answer_positions(pad_positions(mask)[:, -emb.shape[1] :])
        tokens = []
        for _ in range(4):
            o = decoder_of(model)(
                inputs_embeds=emb, attention_mask=mask, position_ids=pos, **cache_kw(cache), use_cache=True
            )
            logits = model.get_output_embeddings()(o.last_hidden_state[:, -1])
            torch.testing.assert_close(seen[len(tokens)], logits, atol=1e-5, rtol=1e-5)
            nxt = logits.argmax(-1)
            tokens.append(nxt)
            cache, emb = cache_of(o), model.get_input_embeddings()(nxt[:, None])
            mask, pos = torch.cat([mask, mask.new_ones(bsz, 1)], 1), pos[:, -1:] + 1
    assert len(seen) == 4 and out.tokens == torch.stack(tokens, 1).tolist()
    assert out.forward_passes == [st.rollout(model, q_ids[:1], q_mask[:1]).passes + 3] * bsz
