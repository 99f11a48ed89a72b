"""``model.compile``: the compiled decoder gives eager's losses and gradients, reuses its graphs on batches of other
lengths, and the loss computation has no graph break in kava's own code (docs/design.md §3). These tests compile
(seconds to a minute each on a CPU): they are marked slow. ``model.compile=step`` (the whole loss computation in one
graph) is checked for kava."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
import torch
import torch._dynamo.utils as dynamo_utils
from conftest import make_module
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from kava.data.collate import collate
from kava.lit_module import KAVALitModule
from kava.methods.base import compile_losses
from kava.schema import ConfigValueError

pytestmark = pytest.mark.slow
METHODS = ["kava", "pccot", "codi", "pause", "cot", "nocot", "answer_ce"]


def build(tokenizer, method: str, compiled: bool | str) -> KAVALitModule:
    """The unit tests' module for ``method``, one layer (same seed, so the same weights either way); ``compiled``:
    ``model.compile``'s value."""
    extra = ["model.tiny.num_layers=1", f"method={method}", f"model.compile={str(compiled).lower()}"]
    return make_module(tokenizer, extra=extra).train()


def losses_and_grads(module: KAVALitModule, batch) -> tuple[dict, dict]:
    module.zero_grad(set_to_none=True)
    terms = module.compute_losses(batch)
    terms["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads


def assert_same_losses_and_grads(eager: KAVALitModule, compiled: KAVALitModule, batch) -> None:
    """Every loss term and every gradient of ``compiled`` equals ``eager``'s to 1e-5 on ``batch``."""
    terms, grads = losses_and_grads(eager, batch)
    c_terms, c_grads = losses_and_grads(compiled, batch)
    assert terms.keys() == c_terms.keys() and grads.keys() == c_grads.keys() and grads
    for k in terms:
        torch.testing.assert_close(c_terms[k], terms[k], rtol=1e-5, atol=1e-5, msg=k)
    for k in grads:
        torch.testing.assert_close(c_grads[k], grads[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize("method", METHODS)
def test_compiled_losses_and_gradients_equal_eager(tokenizer, batch, segments, method):
    """Losses and gradients to 1e-5; for ``kava``, also 20 optimizer steps on batches of 2-5 samples (the teacher
    lengths differ): after the first step has compiled each call pattern (teacher pass, prefill, Jacobi passes, the
    last with the answer), at most 2 more graphs are compiled."""
    if method == "kava":
        torch._dynamo.reset()  # compile from scratch, so that the first step's graphs are counted
    start = dynamo_utils.counters["stats"]["unique_graphs"]
    eager, compiled = build(tokenizer, method, False), build(tokenizer, method, True)
    assert compiled.backbone.get_decoder()._compiled_call_impl is not None  # the decoder really is compiled
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints do not change
    assert_same_losses_and_grads(eager, compiled, batch)
    if method != "kava":
        return
    assert dynamo_utils.counters["stats"]["unique_graphs"] > start  # the step above compiled
    opt = torch.optim.AdamW([p for p in compiled.parameters() if p.requires_grad], lr=1e-3)
    batches = [collate(segments[i % 12 : i % 12 + 2 + i % 4], tokenizer.pad_token_id) for i in range(20)]
    assert len({b.t_ids.shape for b in batches}) >= 4
    graphs = []
    for b in batches:
        opt.zero_grad()
        compiled.compute_losses(b)["loss"].backward()
        opt.step()
        graphs.append(dynamo_utils.counters["stats"]["unique_graphs"])
    assert graphs[-1] - graphs[0] <= 2, graphs


def test_the_loss_computation_has_no_graph_break_in_kava_code(tokenizer, batch):
    """``torch._dynamo.explain`` of each latent method's losses: the graph breaks it reports (the names of the files
    where they happen, from dynamo's graph-break log) are all in libraries (transformers' output capture, torch's
    hooks), none in kava/."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    log = logging.getLogger("torch._dynamo.symbolic_convert.__graph_breaks")
    torch._logging.set_logs(graph_breaks=True)
    log.addHandler(handler)
    try:
        for method in ("kava", "codi"):
            module = build(tokenizer, method, False)
            explained = torch._dynamo.explain(module.method.losses)(batch)
            assert explained.graph_count >= 1
    finally:
        log.removeHandler(handler)
        torch._logging.set_logs()
    where = {m.group(1) for r in records for m in [re.search(r"in user code at (\S+)", r)] if m}
    assert where, "dynamo's graph-break log was not captured: the check would see nothing"
    assert not [w for w in where if "/kava/" in w], where


def test_model_compile_step_compiles_the_losses_not_the_decoder(tokenizer):
    """``model.compile=step`` wires ``compile_losses`` (nothing is traced until the first step) and leaves the decoder
    and the checkpoint's keys as eager's; ``decoder`` compiles the decoder only; a run whose strategy is not
    Lightning's single-device one stops at fit start."""
    calls = dynamo_utils.counters["stats"]["calls_captured"]
    step, decoder = build(tokenizer, "kava", "step"), build(tokenizer, "kava", "decoder")
    assert dynamo_utils.counters["stats"]["calls_captured"] == calls
    assert step.method.compiled_losses is not None and decoder.method.compiled_losses is None
    assert step.backbone.get_decoder()._compiled_call_impl is None
    assert decoder.backbone.get_decoder()._compiled_call_impl is not None
    assert step.state_dict().keys() == build(tokenizer, "kava", False).state_dict().keys()
    step._trainer = SimpleNamespace(strategy=DDPStrategy(), world_size=2)  # trainer.devices=auto on two GPUs
    with pytest.raises(ConfigValueError, match="strategy is DDPStrategy with 2 process"):
        step.on_fit_start()
    step._trainer = SimpleNamespace(strategy=SingleDeviceStrategy("cpu"), world_size=1)
    step.on_fit_start()
    decoder._trainer = SimpleNamespace(strategy=DDPStrategy(), world_size=2)
    decoder.on_fit_start()  # the decoder scope runs under DDP


def test_compiled_step_is_one_graph_equal_to_eager(tokenizer, batch, segments):
    """``model.compile=step`` (``compile_losses``, here with ``aot_eager``: dynamo's graphs without code generation):
    kava's losses and gradients equal eager's to 1e-5; the whole loss computation is one graph with no break, which
    20 optimizer steps on batches of 2-5 samples reuse (at most 2 more graphs may compile); the method's forward in
    eval mode (validation) runs eagerly."""
    torch._dynamo.reset()
    dynamo_utils.counters.clear()  # reset() keeps the counts of the tests before
    eager, compiled = build(tokenizer, "kava", False), build(tokenizer, "kava", False)
    compile_losses(compiled.method, backend="aot_eager")
    assert_same_losses_and_grads(eager, compiled, batch)
    stats = dynamo_utils.counters["stats"]
    assert stats["unique_graphs"] == 1 and not dynamo_utils.counters["graph_break"], dict(stats)
    opt = torch.optim.AdamW([p for p in compiled.parameters() if p.requires_grad], lr=1e-3)
    batches = [collate(segments[i % 12 : i % 12 + 2 + i % 4], tokenizer.pad_token_id) for i in range(20)]
    assert len({b.t_ids.shape for b in batches}) >= 4
    for b in batches:
        opt.zero_grad()
        compiled.compute_losses(b)["loss"].backward()
        opt.step()
    assert stats["unique_graphs"] <= 3 and not dynamo_utils.counters["graph_break"], dict(stats)
    calls = stats["calls_captured"]
    compiled.eval()
    with torch.no_grad():
        compiled.method(batch)
    assert stats["calls_captured"] == calls  # validation traced nothing
