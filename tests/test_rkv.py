"""Tests for the R-KV compression of the teacher CoT cache (docs/design.md §2.4) against a plain-loop reference."""

from __future__ import annotations

import math

import pytest
import torch

from kava.distill.rkv import compress, redundancy

L, B, H, S, D = 2, 3, 2, 20, 8
# sample 0: long CoT with non-CoT positions before and after; sample 1: CoT shorter than the slots;
# sample 2: no CoT at all. Positions after cot_start + cot_len stand for P A EOS and padding.
COT_START = [3, 5, 2]
COT_LEN = [12, 4, 0]


# ----------------------------------------------------------------------------------------------------------
# plain-Python reference
# ----------------------------------------------------------------------------------------------------------


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(torch.dot(a, b) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)))


def ref_redundancy_list(keys: list[torch.Tensor]) -> list[float]:
    """R_i = softmax_i(-rho_i), rho_i = mean cosine similarity of key i to the other keys."""
    n = len(keys)
    rho = []
    for i in range(n):
        if n == 1:
            rho.append(0.0)
            continue
        total = 0.0
        for j in range(n):
            if j != i:
                total += _cos(keys[i], keys[j])
        rho.append(total / (n - 1))
    exps = [math.exp(-r) for r in rho]
    z = sum(exps)
    return [e / z for e in exps]


def ref_compress(keys, values, importance, cot_start, cot_len, m, lam):
    """Returns index (L, B, H, M) long, mask (B, M) bool, keys/values (L, B, H, M, d) on valid slots."""
    n_l, bsz, n_h, _, d = keys.shape
    index = torch.zeros(n_l, bsz, n_h, m, dtype=torch.long)
    mask = torch.zeros(bsz, m, dtype=torch.bool)
    k_out = torch.zeros(n_l, bsz, n_h, m, d, dtype=keys.dtype)
    v_out = torch.zeros(n_l, bsz, n_h, m, d, dtype=values.dtype)
    for b in range(bsz):
        s0, n = int(cot_start[b]), int(cot_len[b])
        for slot in range(min(n, m)):
            mask[b, slot] = True
        for layer in range(n_l):
            for h in range(n_h):
                ks = [keys[layer, b, h, s0 + i] for i in range(n)]
                red = ref_redundancy_list(ks)
                scored = []
                for i in range(n):
                    score = lam * float(importance[layer, b, h, s0 + i]) + (1.0 - lam) * red[i]
                    scored.append((score, i))
                scored.sort(reverse=True)
                kept = sorted(i for _, i in scored[:m])
                for slot, i in enumerate(kept):
                    index[layer, b, h, slot] = i
                    k_out[layer, b, h, slot] = keys[layer, b, h, s0 + i]
                    v_out[layer, b, h, slot] = values[layer, b, h, s0 + i]
    return index, mask, k_out, v_out


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------


def _inputs(seed: int, cot_start=COT_START, cot_len=COT_LEN, seq=S):
    g = torch.Generator().manual_seed(seed)
    bsz = len(cot_start)
    keys = torch.randn(L, bsz, H, seq, D, generator=g)
    values = torch.randn(L, bsz, H, seq, D, generator=g)
    importance = torch.rand(L, bsz, H, seq, generator=g)
    return keys, values, importance, torch.tensor(cot_start), torch.tensor(cot_len)


def _valid_slots(mask: torch.Tensor) -> torch.Tensor:
    """(B, M) -> (L, B, H, M) bool."""
    return mask[None, :, None].expand(L, *mask.shape[:1], H, mask.shape[1])


# ----------------------------------------------------------------------------------------------------------
# 1. agreement with the reference
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.1, 0.0, 1.0])
@pytest.mark.parametrize("m", [6, 14])  # 14 > longest CoT: the candidate axis is shorter than the slots
@pytest.mark.parametrize("seed", [0, 1])
def test_compress_matches_loop_reference(lam, m, seed):
    keys, values, imp, start, length = _inputs(seed)
    out = compress(keys, values, imp, start, length, m, lam)
    r_index, r_mask, r_keys, r_values = ref_compress(keys, values, imp, start, length, m, lam)

    assert out.keys.shape == (L, B, H, m, D)
    assert out.values.shape == (L, B, H, m, D)
    assert out.index.shape == (L, B, H, m)
    assert out.mask.shape == (B, m)
    assert out.mask.dtype == torch.bool
    assert torch.equal(out.mask, r_mask)
    valid = _valid_slots(r_mask)
    assert torch.equal(out.index[valid], r_index[valid])
    torch.testing.assert_close(out.keys[valid], r_keys[valid], rtol=0, atol=0)
    torch.testing.assert_close(out.values[valid], r_values[valid], rtol=0, atol=0)
    # documented convention for the invalid slots: they point at CoT position 0
    assert (out.index[~valid] == 0).all()


def test_compress_layer_chunk_does_not_change_result():
    keys, values, imp, start, length = _inputs(3)
    full = compress(keys, values, imp, start, length, 6, 0.1)
    chunked = compress(keys, values, imp, start, length, 6, 0.1, layer_chunk=1)
    assert torch.equal(full.index, chunked.index)
    assert torch.equal(full.mask, chunked.mask)
    assert torch.equal(full.keys, chunked.keys)
    assert torch.equal(full.values, chunked.values)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_redundancy_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    c = 9
    keys = torch.randn(L, 4, H, c, D, generator=g)
    valid = torch.zeros(4, c, dtype=torch.bool)
    valid[0, :] = True  # all valid
    valid[1, :5] = True  # prefix
    valid[2, [0, 3, 4, 8]] = True  # arbitrary subset
    valid[3, 2] = True  # single valid key: rho = 0, R = 1
    red = redundancy(keys, valid)
    assert red.shape == (L, 4, H, c)
    for b in range(4):
        pos = valid[b].nonzero().flatten().tolist()
        for layer in range(L):
            for h in range(H):
                expected = ref_redundancy_list([keys[layer, b, h, i] for i in pos])
                got = red[layer, b, h, pos].double()
                torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), atol=1e-5, rtol=0)
                # invalid positions carry no mass, valid ones sum to one
                assert float(red[layer, b, h][~valid[b]].abs().sum()) == 0.0
                assert abs(float(got.sum()) - 1.0) < 1e-5


# ----------------------------------------------------------------------------------------------------------
# 2. ordering, valid slots first, non-CoT positions never kept
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [1.0, 0.1])
def test_only_cot_positions_are_kept_sorted_and_first(lam):
    keys, values, imp, start, length = _inputs(4)
    # make every non-CoT position (question, answer, padding) look extremely important
    in_cot = torch.zeros(B, S, dtype=torch.bool)
    for b in range(B):
        in_cot[b, COT_START[b] : COT_START[b] + COT_LEN[b]] = True
    imp = torch.where(in_cot[None, :, None], imp, torch.full_like(imp, 1e6))
    m = 6
    out = compress(keys, values, imp, start, length, m, lam)

    for b in range(B):
        n_valid = int(out.mask[b].sum())
        assert n_valid == min(COT_LEN[b], m)
        # valid slots come first
        assert out.mask[b, :n_valid].all() and not out.mask[b, n_valid:].any()
        for layer in range(L):
            for h in range(H):
                idx = out.index[layer, b, h, :n_valid]
                assert ((idx >= 0) & (idx < COT_LEN[b])).all()
                assert (idx[1:] > idx[:-1]).all()  # strictly ascending: sorted, no duplicates
                abs_pos = COT_START[b] + idx
                assert torch.equal(out.keys[layer, b, h, :n_valid], keys[layer, b, h, abs_pos])
                assert torch.equal(out.values[layer, b, h, :n_valid], values[layer, b, h, abs_pos])


def test_importance_drives_selection_with_lam_one():
    keys, values, imp, start, length = _inputs(5, cot_start=[2], cot_len=[10])
    imp = torch.zeros_like(imp)
    favourite = [1, 4, 7]  # CoT-relative
    imp[..., [2 + f for f in favourite]] = 1.0
    out = compress(keys, values, imp, start, length, 3, lam=1.0)
    assert (out.index == torch.tensor(favourite)).all()


# ----------------------------------------------------------------------------------------------------------
# 3. fewer CoT entries than slots, and empty CoT
# ----------------------------------------------------------------------------------------------------------


def test_short_cot_keeps_everything():
    keys, values, imp, start, length = _inputs(6, cot_start=[1, 4], cot_len=[3, 10])
    m = 5
    out = compress(keys, values, imp, start, length, m, 0.1)
    assert out.mask[0].tolist() == [True, True, True, False, False]
    assert out.mask[1].all()
    for layer in range(L):
        for h in range(H):
            assert out.index[layer, 0, h, :3].tolist() == [0, 1, 2]
            assert torch.equal(out.keys[layer, 0, h, :3], keys[layer, 0, h, 1:4])
            assert torch.equal(out.values[layer, 0, h, :3], values[layer, 0, h, 1:4])
    assert torch.isfinite(out.keys).all() and torch.isfinite(out.values).all()
    assert (out.index[:, 0, :, 3:] == 0).all()


def test_empty_cot_sample_is_all_invalid_and_finite():
    keys, values, imp, start, length = _inputs(7)
    out = compress(keys, values, imp, start, length, 6, 0.1)
    assert not out.mask[2].any()
    assert (out.keys[:, 2] == 0).all() and (out.values[:, 2] == 0).all()
    for t in (out.keys, out.values):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("lam", [0.1, 0.0, 1.0])
def test_batch_without_any_cot(lam):
    keys, values, imp, start, length = _inputs(8, cot_start=[0, 3, 7], cot_len=[0, 0, 0])
    m = 4
    out = compress(keys, values, imp, start, length, m, lam)
    assert out.keys.shape == (L, 3, H, m, D)
    assert out.values.shape == (L, 3, H, m, D)
    assert out.index.shape == (L, 3, H, m)
    assert out.mask.shape == (3, m)
    assert not out.mask.any()
    assert (out.keys == 0).all() and (out.values == 0).all()
    assert torch.isfinite(out.keys).all() and torch.isfinite(out.values).all()


def test_single_cot_entry():
    keys, values, imp, start, length = _inputs(9, cot_start=[5], cot_len=[1])
    out = compress(keys, values, imp, start, length, 3, 0.0)
    assert out.mask.tolist() == [[True, False, False]]
    assert (out.index[..., 0] == 0).all()
    assert torch.equal(out.keys[:, :, :, 0], keys[:, :, :, 5])
    assert torch.isfinite(out.keys).all()


# ----------------------------------------------------------------------------------------------------------
# 4. redundancy penalises duplicated keys
# ----------------------------------------------------------------------------------------------------------


def _duplicate_keys(n: int, scale_dup: float, seed: int = 0) -> torch.Tensor:
    """(1, 1, 1, n, D): key 1 is key 0 (times scale_dup); the others orthogonal directions."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    dirs = q.T[: n - 1].float()  # orthonormal rows
    mags = torch.rand(n - 1, 1, generator=g) * 2 + 0.5
    rows = dirs * mags
    keys = torch.cat([rows[:1], rows[:1] * scale_dup, rows[1:]])
    return keys[None, None, None]


@pytest.mark.parametrize("scale_dup", [1.0, 3.0])
def test_duplicated_key_has_lower_redundancy_score(scale_dup):
    n = 6
    keys = _duplicate_keys(n, scale_dup)
    red = redundancy(keys, torch.ones(1, n, dtype=torch.bool))[0, 0, 0]
    assert red[0] < red[2:].min()
    assert red[1] < red[2:].min()
    # distinct, mutually orthogonal keys all score the same
    torch.testing.assert_close(red[2:], red[2:].mean().expand(n - 2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale_dup", [1.0, 3.0])
def test_lam_zero_evicts_one_duplicate(scale_dup):
    n, off = 6, 2
    core = _duplicate_keys(n, scale_dup)[0, 0, 0]
    g = torch.Generator().manual_seed(11)
    keys = torch.randn(1, 1, 1, n + off + 3, D, generator=g)
    keys[0, 0, 0, off : off + n] = core
    values = torch.randn(keys.shape, generator=g)
    imp = torch.rand(1, 1, 1, keys.shape[3], generator=g)
    out = compress(keys, values, imp, torch.tensor([off]), torch.tensor([n]), n - 1, lam=0.0)
    kept = out.index[0, 0, 0].tolist()
    assert out.mask.all()
    assert len(set(kept) & {0, 1}) == 1  # exactly one of the duplicates is evicted
    assert set(range(2, n)) <= set(kept)


# ----------------------------------------------------------------------------------------------------------
# 5. batching does not change per-sample results
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.1, 0.0])
@pytest.mark.parametrize("m", [3, 6, 14])
def test_batch_equals_samples_alone(lam, m):
    keys, values, imp, start, length = _inputs(10)
    batch = compress(keys, values, imp, start, length, m, lam)
    for b in range(B):
        sl = slice(b, b + 1)
        alone = compress(keys[:, sl], values[:, sl], imp[:, sl], start[sl], length[sl], m, lam)
        assert torch.equal(batch.mask[sl], alone.mask)
        valid = alone.mask[None, :, None].expand(L, 1, H, m)
        assert torch.equal(batch.index[:, sl][valid], alone.index[valid])
        assert torch.equal(batch.keys[:, sl][valid], alone.keys[valid])
        assert torch.equal(batch.values[:, sl][valid], alone.values[valid])
