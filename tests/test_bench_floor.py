"""bench/run.py's floors: bare computations over the tokens our step processes, in the calls they claim."""

from __future__ import annotations

import pytest
from helpers import ROOT, load_script

from kava.model.student import decoder_of


@pytest.fixture(scope="module")
def bench():
    return load_script("kava_bench_run", ROOT / "bench" / "run.py")


def decoder_rows(module, step, batch) -> list[tuple[int, int]]:
    """(batch, new positions) of every decoder call one step makes."""
    calls = []

    def record(_, args, kwargs):
        x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        calls.append(tuple(x.shape[:2]))

    handle = decoder_of(module.backbone).register_forward_pre_hook(record, with_kwargs=True)
    try:
        module.zero_grad(set_to_none=True)
        step(module, batch)
    finally:
        handle.remove()
    return calls


def test_floors_process_the_tokens_of_our_step(bench, tokenizer):
    """The pass floor makes our step's decoder calls over the same positions; the floor two calls over their sum."""
    module = bench.make_module(tokenizer, 4, 3, tiny={**bench.TINY, "vocab_size": 300})
    batch = bench.synthetic_batch(3, 8, 9, len(tokenizer))
    ours = decoder_rows(module, bench.our_step, batch)
    assert len(ours) == 2 + 3  # teacher, prefill, T passes (the answer rides in the last)
    assert decoder_rows(module, bench.pass_floor_step, batch) == ours
    floor = decoder_rows(module, bench.floor_step, batch)
    assert floor[0] == ours[0] and len(floor) == 2
    assert floor[1][1] == sum(n for _, n in ours[1:])
