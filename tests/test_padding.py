"""A sample's losses do not change when it is left-padded into a batch (docs/design.md §2.1, fp32, 1e-5)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_module

from kava.data.collate import collate

PER_SAMPLE = ("student_ce", "teacher_ce", "codi", "kv_step_1", "kv_step_2", "kv_step_3", "kv_total", "loss")


@pytest.mark.parametrize("layerwise_std", [False])
def test_every_loss_term_is_the_same_alone_and_in_a_padded_batch(tokenizer, segments, layerwise_std):
    # std normalisers are batch statistics by definition (CODI over batch x D, KV over the batch's valid
    # entries), so the per-sample comparison uses the un-normalised terms
    module = make_module(tokenizer, m=4, t=3, layerwise_std=layerwise_std, codi_std_norm=False)
    # pick samples of different question lengths so the short ones are left-padded
    order = sorted(range(len(segments)), key=lambda i: len(segments[i].question))
    chosen = [segments[order[0]], segments[order[-1]], segments[order[len(order) // 2]]]
    assert len({len(s.question) for s in chosen}) == 3
    with torch.no_grad():
        _, batched = module.losses_with_per_sample(collate(chosen, tokenizer.pad_token_id))
        for i, sample in enumerate(chosen):
            alone_terms, alone = module.losses_with_per_sample(collate([sample], tokenizer.pad_token_id))
            for name in PER_SAMPLE:
                torch.testing.assert_close(batched[name][i], alone[name][0], atol=1e-5, rtol=1e-5, msg=name)
                # a batch of one: the batch value is the sample's value
                torch.testing.assert_close(alone_terms[name], alone[name][0], atol=1e-6, rtol=1e-6)
    # the padded batch really had padding in both layouts
    b = collate(chosen, tokenizer.pad_token_id)
    assert (b.s_q_mask == 0).any() and (b.t_mask == 0).any()


def test_std_normalised_terms_in_a_batch_of_one_match_per_sample(tokenizer, segments):
    module = make_module(tokenizer, m=4, t=2)  # layerwise_std and codi_std_norm on
    with torch.no_grad():
        terms, per = module.losses_with_per_sample(collate(segments[:1], tokenizer.pad_token_id))
    for name in ("codi", "kv_step_1", "kv_step_2", "loss"):
        torch.testing.assert_close(terms[name], per[name][0])
        assert torch.isfinite(terms[name])
