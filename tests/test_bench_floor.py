"""bench/run.py's floors: bare computations over the tokens our step processes, in the calls they claim."""

from __future__ import annotations

import pytest
from helpers import ROOT, decoder_calls, load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("kava_bench_run", ROOT / "bench" / "run.py")


def decoder_rows(module, step, batch) -> list[tuple[int, int, int]]:
    """(batch, new positions, columns attended: cache and new) of every decoder call one step makes."""
    module.zero_grad(set_to_none=True)
    return decoder_calls(module, lambda: step(module, batch))[0]


@pytest.mark.parametrize("share", [True, False])
def test_floors_process_the_tokens_of_our_step(bench, tokenizer, share):
    """The pass floor makes our step's decoder calls over the same positions and caches; the floor two calls over
    their sum, its student call on the teacher's question cache when the question is shared, and the question-twice
    floor one student call over the question and the rest."""
    tiny = {**bench.TINY, "vocab_size": 300}
    module = bench.make_module(tokenizer, 4, 3, tiny=tiny, overrides=[f"teacher.share_question={share}"])
    assert module.method.share_question is share
    batch = bench.synthetic_batch(3, 8, 9, len(tokenizer))
    q_len = batch.s_q_ids.shape[1]
    ours = decoder_rows(module, bench.our_step, batch)
    assert len(ours) == 2 + 3  # teacher, prefill, T passes (the answer rides in the last)
    assert ours[1][1] == (0 if share else q_len) + 1 + 4  # the prefill runs the question only when not shared
    assert ours[1][2] == q_len + 1 + 4
    assert decoder_rows(module, bench.pass_floor_step, batch) == ours
    floor = decoder_rows(module, bench.floor_step, batch)
    assert floor[0] == ours[0] and len(floor) == 2
    assert floor[1][1] == sum(n for _, n, _ in ours[1:])
    assert floor[1][2] == floor[1][1] + (q_len if share else 0)
    twice = decoder_rows(module, bench.floor_twice_step, batch)
    assert twice[0] == ours[0] and twice[1][1] == floor[1][1] + (q_len if share else 0)
