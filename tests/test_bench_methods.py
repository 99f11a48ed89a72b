"""bench/methods.py's staged step times the computation the methods' own ``losses`` run, not a variant of it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from helpers import decoder_calls

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    path, before = str(ROOT / "bench"), set(sys.modules)
    sys.path.insert(0, path)
    try:
        spec = importlib.util.spec_from_file_location("kava_bench_methods", ROOT / "bench" / "methods.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # it puts bench/ on sys.path itself and imports bench/run.py as ``run``
        yield module
    finally:
        sys.path[:] = [p for p in sys.path if p != path]
        for name in set(sys.modules) - before:
            if name in ("run", "kava_bench_methods"):
                del sys.modules[name]


@pytest.mark.parametrize("name", ["kava", "pccot"])
def test_staged_step_is_the_methods_step(bench, tokenizer, name, monkeypatch):
    """Same loss as ``compute_losses``, every stage timed, R-KV run by KaVa only, and the update applied."""
    import kava.methods.kava as kava_method

    module = bench.build(tokenizer, name, 4, 2)
    batch = bench.synthetic_batch(3, 6, 9, len(tokenizer))
    own_calls, terms = decoder_calls(module, lambda: module.compute_losses(batch))  # the method's own step's calls
    expect = terms["loss"].detach()
    calls = []  # R-KV calls of the staged step alone
    compress = kava_method.compress
    monkeypatch.setattr(kava_method, "compress", lambda *a, **k: calls.append(1) or compress(*a, **k))
    params = [p for p in module.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    shapes, (laps, loss) = decoder_calls(
        module, lambda: bench.staged_step(module, torch.optim.AdamW(params, lr=1e-2), batch)
    )
    assert shapes == own_calls and len(own_calls) == 1 + 1 + 2  # teacher, prefill, T = 2 passes
    torch.testing.assert_close(loss, expect, rtol=1e-6, atol=1e-6)
    assert list(laps) == list(bench.STAGES)
    assert len(calls) == (name == "kava")
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, params, strict=True))
    assert all(p.grad is None for p in params)  # zeroed for the next round
