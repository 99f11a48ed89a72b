"""Tests for the "kava_sdpa" attention function and its answer-row importance capture (docs/design.md §2.4)."""

from __future__ import annotations

import pytest
import torch
import transformers

import kava.model.attention as kattn
from kava.model.attention import ImportanceCapture, capture_importance

N_LAYERS, N_Q, N_KV = 2, 4, 2
GROUP = N_Q // N_KV


def _config(impl: str) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_Q,
        num_key_value_heads=N_KV,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation=impl,
    )


@pytest.fixture(scope="module")
def models() -> dict[str, transformers.LlamaForCausalLM]:
    torch.manual_seed(0)
    kava_model = transformers.LlamaForCausalLM(_config("kava_sdpa")).eval()
    out = {"kava_sdpa": kava_model}
    for impl in ("eager", "sdpa"):
        other = transformers.LlamaForCausalLM(_config(impl)).eval()
        other.load_state_dict(kava_model.state_dict())
        out[impl] = other
    for name, model in out.items():
        assert model.config._attn_implementation == name
    return out


def _batch(lengths: list[int], seq: int, left: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), seq, dtype=torch.long)
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for b, n in enumerate(lengths):
        cols = slice(seq - n, seq) if left else slice(0, n)
        ids[b, cols] = torch.randint(3, 64, (n,), generator=g)
        mask[b, cols] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def _rows(lengths: list[int], seq: int, left: bool, n_rows: list[int]):
    """The last n_rows[b] real positions of each sample, padded with row 0 / row_mask False."""
    width = max(n_rows)
    rows = torch.zeros(len(lengths), width, dtype=torch.long)
    row_mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for b, (n, r) in enumerate(zip(lengths, n_rows, strict=True)):
        end = seq if left else n
        rows[b, :r] = torch.arange(end - r, end)
        row_mask[b, :r] = True
    return rows, row_mask


def _eager_importance(model, ids, mask, pos, rows, row_mask) -> torch.Tensor:
    """(L, B, H_kv, S): eager probabilities of the rows, max over each query-head group, mean over rows."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_attentions=True)
    assert out.attentions is not None and len(out.attentions) == N_LAYERS
    result = torch.zeros(N_LAYERS, ids.shape[0], N_KV, ids.shape[1], dtype=torch.float64)
    for layer, att in enumerate(out.attentions):
        assert att.shape == (ids.shape[0], N_Q, ids.shape[1], ids.shape[1])
        for b in range(ids.shape[0]):
            picked = [int(r) for r, ok in zip(rows[b], row_mask[b], strict=True) if ok]
            for h in range(N_KV):
                heads = att[b, h * GROUP : (h + 1) * GROUP].double()  # (g, S, S)
                pooled = heads[:, picked].amax(dim=0)  # (R_b, S)
                result[layer, b, h] = pooled.mean(dim=0)
    return result


def _absmax(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def _capture(model, ids, mask, pos, rows, row_mask):
    with torch.no_grad(), capture_importance(rows, row_mask) as cap:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    return cap, logits


# ----------------------------------------------------------------------------------------------------------
# 1-2. importance equals the eager reference for every padding layout
# ----------------------------------------------------------------------------------------------------------

LAYOUTS = {
    "right_padded": ([9, 6, 4], 9, False, [3, 2, 1]),
    "left_padded": ([9, 6, 4], 9, True, [3, 2, 1]),
    "no_padding": ([8, 8, 8], 8, False, [3, 1, 2]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_importance_matches_eager(models, layout):
    lengths, seq, left, n_rows = LAYOUTS[layout]
    ids, mask, pos = _batch(lengths, seq, left)
    rows, row_mask = _rows(lengths, seq, left, n_rows)
    cap, _ = _capture(models["kava_sdpa"], ids, mask, pos, rows, row_mask)
    got = cap.stacked()
    assert got.shape == (N_LAYERS, len(lengths), N_KV, seq)
    assert torch.isfinite(got).all()
    expected = _eager_importance(models["eager"], ids, mask, pos, rows, row_mask)
    real = mask.bool()[None, :, None].expand_as(got)
    torch.testing.assert_close(got[real].double(), expected[real], atol=1e-5, rtol=0)
    # padding keys get no attention, and for each row the group maximum is at least 1/g of its mass
    assert _absmax(got[~real]) < 1e-6
    sums = got.sum(-1)
    assert (sums > 1.0 - 1e-5).all() and (sums < GROUP + 1e-5).all()


def test_no_padding_with_mask_none(models):
    """attention_mask=None: the model skips the mask entirely and the causal default must be used."""
    lengths, seq = [7, 7], 7
    ids, mask, pos = _batch(lengths, seq, left=False, seed=3)
    rows = torch.tensor([[1, 2, 3], [2, 4, 0]])  # rows in the middle, so causality is visible
    row_mask = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad(), capture_importance(rows, row_mask) as cap:
        models["kava_sdpa"](input_ids=ids)
    expected = _eager_importance(models["eager"], ids, mask, pos, rows, row_mask)
    torch.testing.assert_close(cap.stacked().double(), expected, atol=1e-5, rtol=0)
    # causality: no row attends to a key after it
    got = cap.stacked()
    assert _absmax(got[:, 0, :, 4:]) == 0.0 and _absmax(got[:, 1, :, 5:]) == 0.0
    assert (got[:, 0, :, :4] > 0).all() and (got[:, 1, :, :5] > 0).all()


def test_mask_none_path_is_taken(models, monkeypatch):
    """The no-padding batch really exercises the ``attention_mask is None`` branch of the capture."""
    seen = []
    original = kattn._answer_row_bias

    def spy(attention_mask, *args, **kwargs):
        seen.append(attention_mask is None)
        return original(attention_mask, *args, **kwargs)

    monkeypatch.setattr(kattn, "_answer_row_bias", spy)
    ids, mask, pos = _batch([6, 6], 6, left=False)
    rows, row_mask = _rows([6, 6], 6, False, [2, 2])
    _capture(models["kava_sdpa"], ids, mask, pos, rows, row_mask)
    assert seen == [True] * N_LAYERS
    seen.clear()
    ids, mask, pos = _batch([6, 3], 6, left=False)
    _capture(models["kava_sdpa"], ids, mask, pos, rows, row_mask)
    assert seen == [False] * N_LAYERS


# ----------------------------------------------------------------------------------------------------------
# 3. outputs are plain SDPA, with or without a capture
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_logits_equal_sdpa(models, layout):
    lengths, seq, left, n_rows = LAYOUTS[layout]
    ids, mask, pos = _batch(lengths, seq, left, seed=1)
    rows, row_mask = _rows(lengths, seq, left, n_rows)
    kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    with torch.no_grad():
        ref = models["sdpa"](**kwargs).logits
        plain = models["kava_sdpa"](**kwargs).logits
    _, captured = _capture(models["kava_sdpa"], ids, mask, pos, rows, row_mask)
    real = mask.bool()
    torch.testing.assert_close(plain[real], ref[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(captured[real], ref[real], atol=1e-5, rtol=0)
    assert torch.equal(captured, plain)


def test_capture_keeps_gradients(models):
    model = models["kava_sdpa"]
    ids, mask, pos = _batch([5, 3], 5, left=False)
    rows, row_mask = _rows([5, 3], 5, False, [2, 1])
    with capture_importance(rows, row_mask) as cap:
        loss = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.sum()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    assert all(g is not None for g in grads)
    assert not cap.stacked().requires_grad


# ----------------------------------------------------------------------------------------------------------
# 4. capture scoping
# ----------------------------------------------------------------------------------------------------------


def test_nothing_recorded_outside_a_capture(models):
    ids, mask, pos = _batch([5, 3], 5, left=False)
    rows, row_mask = _rows([5, 3], 5, False, [2, 1])
    with capture_importance(rows, row_mask) as done:
        pass
    with torch.no_grad():
        models["kava_sdpa"](input_ids=ids, attention_mask=mask, position_ids=pos)
    assert done.scores == {}
    assert kattn._ACTIVE == []
    with capture_importance(rows, row_mask) as later:
        pass
    assert later.scores == {}
    with pytest.raises(RuntimeError):
        later.stacked()
    # a model that does not use kava_sdpa records nothing even inside a capture
    with torch.no_grad(), capture_importance(rows, row_mask) as cap:
        models["sdpa"](input_ids=ids, attention_mask=mask, position_ids=pos)
    assert cap.scores == {}


def test_nested_captures_record_into_innermost(models):
    ids, mask, pos = _batch([6, 4], 6, left=False)
    rows_a, mask_a = _rows([6, 4], 6, False, [1, 1])
    rows_b, mask_b = _rows([6, 4], 6, False, [3, 2])
    model = models["kava_sdpa"]
    with torch.no_grad(), capture_importance(rows_a, mask_a) as outer:
        with capture_importance(rows_b, mask_b) as inner:
            model(input_ids=ids, attention_mask=mask, position_ids=pos)
        assert outer.scores == {}
        assert sorted(inner.scores) == list(range(N_LAYERS))
        model(input_ids=ids, attention_mask=mask, position_ids=pos)  # back to the outer one
    assert sorted(outer.scores) == list(range(N_LAYERS))
    assert kattn._ACTIVE == []
    # each capture used its own rows
    expected_inner = _eager_importance(models["eager"], ids, mask, pos, rows_b, mask_b)
    expected_outer = _eager_importance(models["eager"], ids, mask, pos, rows_a, mask_a)
    real = mask.bool()[None, :, None].expand_as(expected_inner)
    torch.testing.assert_close(inner.stacked().double()[real], expected_inner[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(outer.stacked().double()[real], expected_outer[real], atol=1e-5, rtol=0)


def test_capture_is_popped_on_error(models):
    rows, row_mask = _rows([4], 4, False, [1])
    with pytest.raises(ValueError), capture_importance(rows, row_mask):
        raise ValueError("boom")
    assert kattn._ACTIVE == []


def test_capture_accepts_integer_row_mask():
    rows = torch.zeros(2, 3, dtype=torch.long)
    cap = ImportanceCapture(rows=rows, row_mask=torch.ones(2, 3, dtype=torch.bool))
    assert cap.scores == {}
    with capture_importance(rows, torch.tensor([[1, 1, 0], [1, 0, 0]])) as cap:
        assert cap.row_mask.dtype == torch.bool
        assert cap.row_mask.tolist() == [[True, True, False], [True, False, False]]


# ----------------------------------------------------------------------------------------------------------
# 5. memory: only (rows x keys) probabilities are formed
# ----------------------------------------------------------------------------------------------------------


def test_only_answer_rows_are_softmaxed(models, monkeypatch):
    lengths, seq = [12, 9, 5], 12
    ids, mask, pos = _batch(lengths, seq, left=False)
    rows, row_mask = _rows(lengths, seq, False, [2, 1, 2])
    shapes = []
    original = torch.softmax

    def spy(x, *args, **kwargs):
        shapes.append(tuple(x.shape))
        return original(x, *args, **kwargs)

    monkeypatch.setattr(kattn.torch, "softmax", spy)
    cap, _ = _capture(models["kava_sdpa"], ids, mask, pos, rows, row_mask)
    monkeypatch.undo()
    assert cap.stacked().shape == (N_LAYERS, len(lengths), N_KV, seq)
    assert len(shapes) == N_LAYERS
    for shape in shapes:
        assert shape[-2] == rows.shape[1] and shape[-1] == seq
        assert shape.count(seq) == 1  # never an (S x S) matrix
