"""Sequence layout and collation (docs/design.md §2.1)."""

from __future__ import annotations

import torch

from kava.data.collate import collate
from kava.data.records import Record
from kava.data.sequences import encode


def test_distillation_token_is_last_prompt_token_in_both_sequences(segments, tokenizer):
    samples = segments[:5]
    b = collate(samples, tokenizer.pad_token_id)
    for i, s in enumerate(samples):
        t_idx, s_idx = int(b.t_distill[i]), int(b.s_distill[i])
        assert b.t_ids[i, t_idx] == s.prompt[-1]
        # student answer pass input is <eot> P A EOS; s_a_ids holds P A EOS, so shift by one
        assert b.s_a_ids[i, s_idx - 1] == s.prompt[-1]
        # and the token after it is the first answer token in both layouts
        assert b.t_ids[i, t_idx + 1] == s.answer[0]
        assert b.s_a_ids[i, s_idx] == s.answer[0]
        assert b.t_targets[i, t_idx] == s.answer[0] and b.s_targets[i, s_idx] == s.answer[0]


def test_distillation_index_is_per_sample(tokenizer):
    recs = [
        Record("Ann has 2 boxes.", ("<<2*3=6>>", "<<6+1=7>>"), "7"),
        Record("Bo has 12 bags with 13 pens in each bag.", ("<<12*13=156>>", "<<156+100=256>>"), "256"),
    ]
    b = collate([encode(r, tokenizer) for r in recs], tokenizer.pad_token_id)
    assert b.t_distill[0] != b.t_distill[1]


def test_layout_masks_labels_and_padding(segments, tokenizer):
    samples = segments[:3]
    b = collate(samples, tokenizer.pad_token_id)
    q_len = b.s_q_ids.shape[1]
    for i, s in enumerate(samples):
        nq, nc = len(s.question), len(s.cot)
        # student questions are left-padded: the last column is always a real token
        assert b.s_q_mask[i].tolist() == [0] * (q_len - nq) + [1] * nq
        assert b.s_q_ids[i, -nq:].tolist() == list(s.question)
        # teacher right-padded, labels on C P A EOS only
        n = s.teacher_len()
        assert b.t_mask[i, :n].all() and not b.t_mask[i, n:].any()
        labelled = (b.t_targets[i] != -100).nonzero().flatten().tolist()
        assert labelled == list(range(nq - 1, n - 1))
        assert b.t_ids[i, nq : nq + nc].tolist() == list(s.cot)
        assert int(b.cot_start[i]) == nq and int(b.cot_len[i]) == nc
        # student labels: P A EOS predicted from <eot> onwards
        pa = list(s.prompt + s.answer)
        assert b.s_targets[i, : len(pa)].tolist() == pa and (b.s_targets[i, len(pa) :] == -100).all()
        # importance rows: the P A span, EOS excluded
        rows = b.t_ans_rows[i][b.t_ans_mask[i]].tolist()
        assert rows == list(range(nq + nc, n - 1))
    assert torch.equal(b.t_pos[0, : samples[0].teacher_len()], torch.arange(samples[0].teacher_len()))


def test_last_step_is_dropped_by_default(tokenizer):
    rec = Record("Q?", ("<<2*3=6>>", "<<6+1=7>>"), "7")
    kept = encode(rec, tokenizer, drop_last_step=False)
    dropped = encode(rec, tokenizer)
    assert tokenizer.decode(list(dropped.cot)).strip() == "<<2*3=6>>"
    assert tokenizer.decode(list(kept.cot)).strip() == "<<2*3=6>> <<6+1=7>>"
    assert tokenizer.decode(list(dropped.prompt)).strip() == "The answer is:"
    assert dropped.answer[-1] == tokenizer.eos_token_id
