"""Methods (``method=``): each trains from the configs and logs only its own terms; those without KV distillation
do no teacher KV work; CODI's sequential latents equal the Jacobi student with T = M; methods share their terms."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import make_module
from helpers import FAST, TINY_MODULE, compose_train, metrics_rows, module_sections

import kava.methods.kava as kava_method
import kava.model.teacher as teacher_module
from kava.checkpoint import load_module
from kava.compat import with_method
from kava.distill.losses import codi_loss
from kava.lit_module import KAVALitModule, build_method
from kava.model.student import LatentStudent, SequentialStudent
from kava.training import train

TERMS = {
    "kava": {"student_ce", "teacher_ce", "codi", "kv_step_1", "kv_step_2", "kv_step_3", "kv_total", "loss"},
    "pccot": {"student_ce", "teacher_ce", "codi", "loss"},
    "codi": {"student_ce", "teacher_ce", "codi", "loss"},
    "pause": {"student_ce", "teacher_ce", "loss"},
    "cot": {"teacher_ce", "loss"},
    "nocot": {"teacher_ce", "loss"},
    "answer_ce": {"student_ce", "loss"},
}


@pytest.mark.parametrize("method", list(TERMS))
def test_every_method_trains_and_logs_only_its_terms(tmp_path, method):
    cfg = compose_train(
        [
            *FAST,
            f"method={method}",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "callbacks=default",
            "callbacks.progress_bar=null",
            f"paths.output_dir={tmp_path}",
        ]
    )
    metrics = train(cfg)
    logged = {k.split("/", 1)[1] for k in metrics if k.startswith("train/")}
    assert logged == TERMS[method]
    assert {k.split("/", 1)[1] for k in metrics if k.startswith("val/") and k != "val/acc"} >= TERMS[method]
    assert "val/acc" in metrics and all(math.isfinite(v) for v in metrics.values())
    losses = [float(r["train/loss"]) for r in metrics_rows(tmp_path) if r.get("train/loss")]
    assert len(losses) == 3
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    reloaded = load_module(tmp_path / "checkpoints" / "last.ckpt")
    assert type(reloaded.method).__name__ == cfg.method._target_.rsplit(".", 1)[1]
    assert (reloaded.student is None) == (method in ("cot", "nocot"))


def _module(tokenizer, method: str, **latent) -> KAVALitModule:
    torch.manual_seed(0)
    overrides = [*TINY_MODULE, f"method={method}", "latent.num_tokens=4", "latent.num_iterations=3"]
    module = KAVALitModule(**module_sections(overrides + [f"latent.{k}={v}" for k, v in latent.items()]),
                           tokenizer=tokenizer)  # fmt: skip
    with torch.no_grad():
        for n, p in module.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return module.eval()


@pytest.mark.parametrize("target", ["pccot", "codi", "pause", "cot"])
def test_methods_without_kv_distillation_capture_no_importance_and_run_no_rkv(tokenizer, batch, monkeypatch, target):
    module = _module(tokenizer, target)

    def forbidden(*args, **kwargs):
        raise AssertionError("teacher KV work in a method without KV distillation")

    monkeypatch.setattr(kava_method, "compress", forbidden)
    monkeypatch.setattr(teacher_module, "capture_importance", forbidden)
    terms = module.compute_losses(batch)
    assert torch.isfinite(terms["loss"]) and not any(k.startswith("kv_") for k in terms)
    module.method.validation_losses(batch)  # validation too (no KV cosine)
    module.method.generate(batch.s_q_ids, batch.s_q_mask, 4, 8)
    # the same instrumentation does fire for KaVa, so the check above can fail
    with pytest.raises(AssertionError, match="teacher KV work"):
        _module(tokenizer, "kava").compute_losses(batch)


def test_shared_terms_equal_across_methods(tokenizer, batch):
    """PCCoT's terms are KaVa's (same weights, same batch) without the KV ones; its loss drops only alpha2 * KV."""
    kava, pccot = _module(tokenizer, "kava"), _module(tokenizer, "pccot")
    a, b = kava.compute_losses(batch), pccot.compute_losses(batch)
    for k in ("student_ce", "teacher_ce", "codi"):
        torch.testing.assert_close(a[k], b[k])
    torch.testing.assert_close(b["loss"], a["loss"] - kava.method.loss_cfg.alpha2 * a["kv_total"], rtol=1e-6, atol=1e-6)
    pause = _module(tokenizer, "pause")
    zero_t = _module(tokenizer, "kava", num_iterations=0, use_projection=False)
    torch.testing.assert_close(pause.compute_losses(batch)["student_ce"], zero_t.compute_losses(batch)["student_ce"])
    assert not any("prj" in n for n, _ in pause.named_parameters())  # nothing unused trains (DDP)


def test_sequential_latents_equal_jacobi_with_t_equal_m(tokenizer, batch):
    module = _module(tokenizer, "kava")
    model, m = module.backbone, 4
    jacobi = LatentStudent(64, m, m, init_embedding=torch.randn(64))
    seq = SequentialStudent(64, m, init_embedding=torch.randn(64))
    seq.load_state_dict(jacobi.state_dict())
    with torch.no_grad():
        args = (model, batch.s_q_ids, batch.s_q_mask, batch.s_a_ids, batch.s_a_mask)
        j, s = jacobi(*args), seq(*args)
        r_j, r_s = jacobi.rollout(*args[:3]), seq.rollout(*args[:3])
    torch.testing.assert_close(s.answer_logits, j.answer_logits, atol=1e-5, rtol=1e-5)
    for hs, hj in zip(s.answer_hidden, j.answer_hidden, strict=True):
        torch.testing.assert_close(hs, hj, atol=1e-5, rtol=1e-5)
    for a, b in zip(s.latent_kv[-1], j.latent_kv[-1], strict=True):  # the KV the answer reads
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s.latents[0], j.latents[m - 1], atol=1e-5, rtol=1e-5)  # the last pass's inputs
    assert (r_s.passes, r_j.passes) == (1 + m, 1 + m)
    # with fewer Jacobi passes the latents have not converged: the comparison can fail
    short = LatentStudent(64, m, m - 2, init_embedding=torch.randn(64))
    short.load_state_dict(jacobi.state_dict())
    with torch.no_grad():
        assert not torch.allclose(short(*args).answer_logits, j.answer_logits, atol=1e-4)


def test_method_target_must_be_a_method(tokenizer):
    s = module_sections(TINY_MODULE)
    with pytest.raises(TypeError, match="not a kava.methods.base.Method subclass"):
        build_method({"name": "x", "_target_": "torch.nn.Linear"}, s["loss"], s["teacher"], s["latent"], None, None, "")
    with pytest.raises(ValueError, match="loss.codi_position has no value: set it"):  # every key is required
        build_method(s["method"], {k: v for k, v in s["loss"].items() if k != "codi_position"}, s["teacher"],
                     s["latent"], None, None, "")  # fmt: skip


def test_checkpoints_from_before_methods_load_as_their_method():
    old = {"loss": {"objective": "cot", "alpha1": 1.0}, "model": {}}
    assert with_method(old)["method"] == {"_target_": "kava.methods.cot.CoT", "name": "cot"}
    assert "objective" not in with_method(old)["loss"]
    assert with_method({"loss": {"objective": "kava"}})["method"]["_target_"] == "kava.methods.kava.KaVa"
    assert with_method({"loss": {"objective": "cot"}, "data": {"drop_cot": True}})["method"]["name"] == "nocot"
    # written before loss.kv_slots: those runs covered every slot at every step; a newer value is kept
    assert with_method({"loss": {"kv_steps": "all"}})["loss"]["kv_slots"] == "all"
    assert with_method({"loss": {"kv_steps": "all", "kv_slots": "progressive"}})["loss"]["kv_slots"] == "progressive"


def test_the_readme_example_is_the_shipped_method():
    """The README's example method is kava/methods/answer_ce.py verbatim (and test_every_method trains it)."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    source = (root / "kava" / "methods" / "answer_ce.py").read_text()
    assert f"```python\n{source}```" in readme
    assert len(source.splitlines()) <= 30


@pytest.mark.parametrize("target", ["kava", "cot"])
def test_predict_step_decodes_with_the_method(tokenizer, batch, target):
    module = _module(tokenizer, target)
    preds = module.predict_step(batch)
    assert len(preds) == batch.size and all(p is None or isinstance(p, float) for p in preds)
    gen = module.method.generate(batch.s_q_ids, batch.s_q_mask, 12, 96, module._stops)
    assert module.method.answer_text(gen.texts[0]).startswith("" if module.method.writes_cot else module.answer_prompt)


def test_codi_on_the_last_layer_only(tokenizer, batch):
    every = _module(tokenizer, "pccot")
    last = _module(tokenizer, "pccot")
    last.method.codi_layers = "last"
    m = last.method
    t = m.teacher_pass(batch, capture=False)
    s = m.student_pass(batch, t)
    bidx = torch.arange(batch.size)
    s_h = torch.stack(s.answer_hidden[1:])[-1:, bidx, batch.s_distill]
    expect = codi_loss(s_h, t.distill_hidden[-1:], True)[0]
    torch.testing.assert_close(m.codi_term(batch, s, t)[0], expect)
    assert not torch.isclose(every.compute_losses(batch)["codi"], expect)


def test_latent_readout_has_one_step_for_sequential_latents(tokenizer, records):
    from kava.data.eval_sets import EvalItem
    from kava.evaluation import readout_items

    module = _module(tokenizer, "codi")
    items = [EvalItem(r.question, 1.0, "synthetic", i, tuple(r.steps)) for i, r in enumerate(records[:3])]
    with open(os.devnull, "w") as out:
        report = readout_items(module, items, 2, 2, "synthetic", out)
    assert report["questions_with_cot"] == 3 and len(report["share_top1_in_cot_by_step"]) == 1


def test_latent_lr_scale_gives_prj_and_the_special_embeddings_their_own_learning_rate(tokenizer):
    module = make_module(tokenizer)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10)
    lr = module.optim_cfg.lr
    assert [g["lr"] for g in module.configure_optimizers()["optimizer"].param_groups] == [lr] * 2
    module.optim_cfg = dataclasses.replace(module.optim_cfg, latent_lr_scale=5.0)
    groups = module.configure_optimizers()["optimizer"].param_groups
    latent = {
        id(p) for n, p in module.named_parameters() if n.startswith(("method.student.prj.", "method.student.special"))
    }
    scaled = {id(p) for g in groups if g["initial_lr"] == 5 * lr for p in g["params"]}
    assert len(groups) == 4 and latent and scaled == latent
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in module.parameters())


def test_latent_init_seed_fixes_prj_apart_from_the_global_seed(tokenizer):
    backbone = make_module(tokenizer).backbone
    s = module_sections(TINY_MODULE)

    def prj_weights(global_seed: int, init_seed: int | None) -> list[torch.Tensor]:
        torch.manual_seed(global_seed)
        method = build_method(s["method"], s["loss"], s["teacher"], {**s["latent"], "init_seed": init_seed}, backbone,
                              tokenizer, "The answer is:")  # fmt: skip
        after = torch.rand(1)  # what the global stream gives next
        return [p.detach().clone() for p in method.student.prj.parameters()] + [after]

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a[:-1], b[:-1], strict=True))

    assert same(prj_weights(0, 5), prj_weights(1, 5))  # the init seed alone decides prj
    assert not same(prj_weights(0, 5), prj_weights(0, 6))
    assert not same(prj_weights(0, None), prj_weights(1, None))  # unset: drawn from the global stream, as before
    fixed = prj_weights(3, 5)
    torch.manual_seed(3)
    assert torch.equal(fixed[-1], torch.rand(1))  # a fixed init seed leaves the global stream where it was
