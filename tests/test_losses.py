"""The KV loss of the T Jacobi steps at once against a plain per-step, per-layer computation."""

from __future__ import annotations

import pytest
import torch

from kava.distill.losses import kv_step_loss, kv_steps_loss


def plain_step(s_k, s_v, t_k, t_v, mask, kind, layerwise_std):
    """One step, written out: the valid entries of each layer, their std, the elementwise loss, the means."""
    per_sample = torch.zeros(mask.shape[0], dtype=torch.float64)
    total = 0.0
    for s_all, t_all in ((s_k, t_k), (s_v, t_v)):
        for layer in range(t_all.shape[0]):
            sel = mask[:, None, :, None].expand(t_all.shape[1:])  # (B, H, M, d)
            std = t_all[layer][sel].double().std() if sel.sum() > 1 else torch.tensor(1.0, dtype=torch.float64)
            std = std.clamp(min=1e-6) if layerwise_std else torch.tensor(1.0, dtype=torch.float64)
            r = (s_all[layer].double() - t_all[layer].double()) / std
            e = {"mse": r**2, "l1": r.abs(), "smooth_l1": torch.where(r.abs() < 1, 0.5 * r**2, r.abs() - 0.5)}[kind]
            e = e * sel
            per_sample += e.sum(dim=(1, 2, 3)) / 2
            total += float(e.sum()) / 2
    n = mask.sum(-1).double() * s_k.shape[0] * s_k.shape[2] * s_k.shape[4]
    return total / max(float(n.sum()), 1.0), per_sample / n.clamp(min=1)


@pytest.mark.parametrize("kind", ["smooth_l1", "mse", "l1"])
@pytest.mark.parametrize("layerwise_std", [False, True])
def test_kv_steps_loss_equals_each_step_computed_plainly(kind, layerwise_std):
    g = torch.Generator().manual_seed(0)
    n_layers, bsz, heads, m, d, steps = 3, 4, 2, 5, 6, 3
    s_k, s_v = (torch.randn(steps, n_layers, bsz, heads, m, d, generator=g) * 2 for _ in range(2))
    t_k, t_v = (torch.randn(n_layers, bsz, heads, m, d, generator=g) * 3 for _ in range(2))
    masks = torch.ones(steps, bsz, m, dtype=torch.bool)
    masks[0, :, 2:] = False  # step 1 covers two slots, step 2 four, step 3 all
    masks[1, :, 4:] = False
    masks[:, 1, 3:] = False  # a sample with fewer targets
    masks[:, 2] = False  # and one with none
    terms, per = kv_steps_loss(s_k, s_v, t_k, t_v, masks, kind, layerwise_std)
    assert terms.shape == (steps,) and per.shape == (steps, bsz)
    for i in range(steps):
        want, want_per = plain_step(s_k[i], s_v[i], t_k, t_v, masks[i], kind, layerwise_std)
        torch.testing.assert_close(terms[i].double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(per[i].double(), want_per, rtol=1e-5, atol=1e-6)
        one, one_per = kv_step_loss(s_k[i], s_v[i], t_k, t_v, masks[i], kind, layerwise_std)
        torch.testing.assert_close(one, terms[i])
        torch.testing.assert_close(one_per, per[i])
    assert per[:, 2].eq(0).all()
