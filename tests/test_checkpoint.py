"""Checkpoints hold only trained parameters and reproduce the losses exactly."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import make_module

from kava.checkpoint import load_module
from kava.errors import ResumeError


def save(module, path):
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=0,
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)


def test_checkpoint_has_no_frozen_weights_and_reloads_exactly(tokenizer, batch, tmp_path):
    module = make_module(tokenizer)
    with torch.no_grad():  # move the trained parts away from their init, so a reload must restore them
        module.student.special.add_(0.3)
        for p in module.student.prj.parameters():
            p.mul_(1.1)
    path = tmp_path / "m.ckpt"
    save(module, path)
    ckpt = torch.load(path, weights_only=False)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    assert frozen and set(ckpt["state_dict"]) == trainable
    assert not any("lora_" not in k and k.startswith("method.backbone.") for k in ckpt["state_dict"])
    assert "tokenizer_files" in ckpt["kava"]

    reloaded = load_module(path).eval()
    assert reloaded.tokenizer("The answer is: 12")["input_ids"] == tokenizer("The answer is: 12")["input_ids"]
    with torch.no_grad():
        a, b = module.compute_losses(batch), reloaded.compute_losses(batch)
    for k in a:
        assert torch.equal(a[k], b[k]), k

    # a checkpoint from before the method owned the backbone and the student names them without ``method.``
    ckpt["state_dict"] = {k.removeprefix("method."): v for k, v in ckpt["state_dict"].items()}
    assert any(k.startswith("student.") for k in ckpt["state_dict"])
    torch.save(ckpt, tmp_path / "old.ckpt")
    with torch.no_grad():
        c = load_module(tmp_path / "old.ckpt").eval().compute_losses(batch)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_checkpoint_missing_trained_parameters_is_refused(tokenizer, tmp_path):
    module = make_module(tokenizer)
    path = tmp_path / "m.ckpt"
    save(module, path)
    ckpt = torch.load(path, weights_only=False)
    del ckpt["state_dict"]["method.student.special"]
    torch.save(ckpt, path)
    with pytest.raises(ResumeError, match="student.special"):  # a user error: one line from the entry points
        load_module(path)
