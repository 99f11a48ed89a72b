"""Strategies, the global batch held across device counts, DDP on the CPU, sweeps, resume and export."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ENV, FAST, ROOT, compose_train, losses_by_step

from kava.training import build, train


@pytest.mark.parametrize("devices", [1, 2])
def test_effective_batch_is_the_global_batch(tmp_path, devices):
    cfg = compose_train(
        FAST
        + [f"paths.output_dir={tmp_path}", "strategy=ddp_cpu", f"trainer.devices={devices}", "logger=[]"]
        + ["data.global_batch_size=32", "data.micro_batch_size=8"]
    )
    _, _, trainer = build(cfg)
    assert trainer.num_devices == devices
    assert trainer.accumulate_grad_batches * 8 * trainer.num_devices * trainer.num_nodes == 32
    assert trainer.accumulate_grad_batches == 4 // devices


def test_strategy_configs_instantiate(tmp_path):
    import hydra

    fsdp = compose_train(FAST + ["strategy=fsdp", f"paths.output_dir={tmp_path}"]).strategy
    strategy = hydra.utils.instantiate(fsdp)
    assert type(strategy).__name__ == "FSDPStrategy"
    assert compose_train(["strategy=deepspeed"]).strategy.stage == 2
    assert compose_train(["strategy=single"]).strategy.name == "auto"


def test_activation_checkpointing_recomputes_the_mlps_with_the_same_gradients(tmp_path, tokenizer, batch):
    """``strategy.activation_checkpointing=true`` wraps each decoder layer's MLP in FSDP's checkpoint wrapper (the
    policy Lightning applies): the step's losses and gradients are unchanged. Wrapping the whole layer instead fails in
    the backward: the recomputed attention appends to the KV cache a second time."""
    from functools import partial

    import hydra
    from conftest import make_module
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    from kava.strategies import checkpointed_classes, decoder_layer_classes

    overrides = FAST + ["strategy=fsdp", "strategy.activation_checkpointing=true", f"paths.output_dir={tmp_path}"]
    strategy = hydra.utils.instantiate(compose_train(overrides).strategy)
    policy = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]  # Lightning's wrapper of the classes
    assert policy._module_classes == checkpointed_classes()

    def step(wrap: set[type] | None):
        module = make_module(tokenizer, extra=["model.lora.dropout=0.1"]).train()
        if wrap:
            wrapper = partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
            apply_activation_checkpointing(module, wrapper, check_fn=lambda m: isinstance(m, tuple(wrap)))
        torch.manual_seed(1)  # the same LoRA dropout draws (the wrapper replays them in the recomputation)
        terms = module.compute_losses(batch)
        terms["loss"].backward()
        grads = {n.replace("._checkpoint_wrapped_module", ""): p.grad for n, p in module.named_parameters()}
        return terms["loss"].detach(), {n: g for n, g in grads.items() if g is not None}, module

    loss, grads, _ = step(None)
    c_loss, c_grads, wrapped = step(checkpointed_classes())
    assert any("_checkpoint_wrapped_module" in n for n, _ in wrapped.named_modules())
    torch.testing.assert_close(c_loss, loss)
    assert c_grads.keys() == grads.keys() and grads
    for n in grads:
        torch.testing.assert_close(c_grads[n], grads[n], rtol=1e-5, atol=1e-7, msg=n)
    with pytest.raises(RuntimeError):  # mismatched key lengths (transformers' message varies)
        step(decoder_layer_classes())


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes(tmp_path):
    cmd = [sys.executable, "train.py", *FAST, "strategy=ddp_cpu", "trainer.max_steps=2",
           "data.global_batch_size=16", f"hydra.run.dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    assert "All distributed processes registered. Starting with 2 processes" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_sweep_runs_every_job_records_failures_and_writes_a_summary(tmp_path):
    cmd = [sys.executable, "train.py", "-m", *FAST, "trainer.max_steps=1", "loss.alpha1=5,10,20",
           "loss.alpha2=0.5,1,2", f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert len(rows) == 9 and all(r["status"] == "ok" for r in rows)
    assert {r["overrides"] for r in rows} == {
        f"loss.alpha1={a} loss.alpha2={b}" for a in (5, 10, 20) for b in (0.5, 1, 2)
    }
    assert "loss.alpha1=20,loss.alpha2=2" in " ".join(p.name for p in tmp_path.iterdir())
    table = (tmp_path / "summary.md").read_text()
    assert table.count("| ok |") == 9 and "train/loss" in table


@pytest.mark.slow
def test_a_failed_sweep_run_is_recorded_the_sweep_goes_on_and_exits_non_zero(tmp_path):
    cmd = [sys.executable, "train.py", "-m", *FAST, "trainer.max_steps=1", "loss.kv_loss=bogus,mse",
           f"hydra.sweep.dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "1 sweep run(s) failed" in proc.stderr, proc.stderr[-3000:]
    rows = {r["overrides"]: r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    assert rows["loss.kv_loss=bogus"]["status"] == "failed" and "loss.kv_loss" in rows["loss.kv_loss=bogus"]["error"]
    assert rows["loss.kv_loss=mse"]["status"] == "ok"


def test_resume_continues_exactly(tmp_path):
    # 48 training samples, batches of 8: 6 batches per epoch; stop after 3 (mid-epoch), run to 9 (next epoch)
    common = FAST + ["trainer.max_steps=9", "trainer.val_check_interval=100", "trainer.log_every_n_steps=1",
                     "callbacks=default", "callbacks.progress_bar=null", "callbacks.kv_step_figure=null",
                     "+callbacks.model_checkpoint.every_n_train_steps=3", "callbacks.model_checkpoint.save_top_k=-1",
                     "callbacks.model_checkpoint.monitor=null", "model.lora.dropout=0.1"]  # fmt: skip
    full = tmp_path / "full"
    train(compose_train(common + [f"paths.output_dir={full}"]))
    ckpt = next((full / "checkpoints").glob("step3*.ckpt"))
    resumed = tmp_path / "resumed"
    train(compose_train(common + [f"paths.output_dir={resumed}", f"ckpt_path={ckpt}"]))
    a, b = losses_by_step(full), losses_by_step(resumed)
    assert sorted(b) == list(range(3, 9))  # steps 4..9 (logged at 0-based steps 3..8)
    for step in b:
        assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-7), step


def test_export_folder_reloads_and_evaluates(tmp_path):
    from peft import PeftModel

    from kava.checkpoint import export_pretrained, load_module
    from kava.evaluation import run_evaluation

    out = tmp_path / "run"
    train(compose_train(FAST + [f"paths.output_dir={out}", "callbacks=default", "callbacks.progress_bar=null"]))
    module = load_module(out / "checkpoints" / "last.ckpt").eval()
    folder = export_pretrained(module, tmp_path / "export")
    for name in ("adapter_config.json", "adapter_model.safetensors", "student.safetensors", "kava_config.json"):
        assert (folder / name).exists()
    again = load_module(folder).eval()
    dm, _, _ = build(compose_train(FAST + [f"paths.output_dir={tmp_path / 'x'}", "logger=[]"]))
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        a, b = module.compute_losses(batch), again.compute_losses(batch)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the adapter is a plain PEFT adapter: it loads onto the base model with peft alone
    base = type(module.backbone.get_base_model())(module.backbone.get_base_model().config)
    assert isinstance(PeftModel.from_pretrained(base, folder), PeftModel)
    results = run_evaluation(str(folder), tmp_path / "eval", max_new_tokens=2)
    assert results["synthetic"]["student"]["n"] == 8
    # the kv-by-step figure reached the CSV run as an image file
    assert list((out / "figures").glob("kv_steps_step*.png"))


@pytest.mark.slow
def test_two_process_ddp_resumes_exactly(tmp_path):
    """strategy=ddp_cpu, 2 processes: resuming from a mid-epoch checkpoint logs the same losses as the run that
    was not interrupted (48 samples, 2 x 8 per step: 3 steps per epoch; checkpoint at step 4, mid-epoch 2)."""
    common = FAST + ["strategy=ddp_cpu", "trainer.devices=2", "data.global_batch_size=16", "trainer.max_steps=8",
                     "trainer.val_check_interval=100", "callbacks=default", "callbacks.progress_bar=null",
                     "callbacks.kv_step_figure=null", "callbacks.kv_cosine_figure=null",
                     "callbacks.periodic_checkpoint.every_n_steps=0", "callbacks.periodic_checkpoint.every_minutes=0",
                     "+callbacks.model_checkpoint.every_n_train_steps=4", "callbacks.model_checkpoint.save_top_k=-1",
                     "callbacks.model_checkpoint.monitor=null", "model.lora.dropout=0.1"]  # fmt: skip

    def run(out: Path, *extra: str) -> None:
        cmd = [sys.executable, "train.py", *common, f"paths.output_dir={out}", *extra]
        proc = subprocess.run(cmd, cwd=ROOT, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]

    full = tmp_path / "full"
    run(full)
    ckpt = next((full / "checkpoints").glob("step4*.ckpt"))
    resumed = tmp_path / "resumed"
    run(resumed, f"ckpt_path={ckpt}")
    a, b = losses_by_step(full), losses_by_step(resumed)
    assert sorted(b) == list(range(4, 8))  # steps 5..8 (logged at 0-based steps 4..7)
    for step in b:
        assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-7), step
