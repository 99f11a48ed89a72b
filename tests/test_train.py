"""End-to-end training runs composed from the Hydra configs (a few steps each, tiny model, CPU)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import FAST, ROOT, compose_train, metrics_rows
from hydra import compose, initialize_config_dir

from kava.config import CONF_DIR
from kava.training import accumulation, train


@pytest.mark.parametrize(
    "extra,steps",
    [
        ([], 3),
        (["loss.kv_steps=last"], 3),
        (["teacher.mode=frozen"], 3),
        (["latent.num_iterations=1", "latent.num_tokens=4"], 1),
    ],
)
def test_train_runs_and_logs_every_term(tmp_path, extra, steps):
    cfg = compose_train(FAST + extra + [f"paths.output_dir={tmp_path}"])
    metrics = train(cfg)
    rows = metrics_rows(tmp_path)
    columns = set(rows[0])
    names = ["student_ce", "teacher_ce", "codi", "kv_total", "loss"] + [f"kv_step_{t}" for t in range(1, steps + 1)]
    for stage in ("train", "val"):
        for name in names:
            assert f"{stage}/{name}" in columns
    assert f"train/kv_step_{steps + 1}" not in columns
    assert "val/acc" in columns and 0.0 <= metrics["val/acc"] <= 1.0
    assert 0.0 <= metrics["val/teacher_acc"] <= 1.0  # the CoT teacher's accuracy beside the student's
    assert all(v == v for v in metrics.values())  # no NaN
    assert (tmp_path / "tokenizer" / "tokenizer.json").exists()


def test_wandb_logger_runs_offline_without_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train(FAST + ["logger=wandb", f"paths.output_dir={tmp_path}", "trainer.max_steps=2"])
    assert cfg.logger.wandb.offline is True
    train(cfg)
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_accumulation_keeps_the_global_batch():
    assert accumulation(32, 8, 1, 1) == 4
    assert accumulation(32, 8, 2, 1) == 2
    assert accumulation(128, 16, 4, 2) == 1
    with pytest.raises(ValueError, match="data.global_batch_size"):
        accumulation(32, 12, 1, 1)


@pytest.mark.slow
def test_train_py_entry_point(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "train.py", *FAST, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert metrics_rows(tmp_path)
    assert (tmp_path / ".hydra" / "config.yaml").exists()


def test_tiny_run_saves_its_base_model_and_tokenizer(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kava.training import build

    cfg = compose_train(FAST + [f"paths.output_dir={tmp_path}", "logger=[]"])
    _, module, _ = build(cfg)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "base_model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    ids = torch.tensor([tok("Ann has 3 pens.")["input_ids"]])
    with torch.no_grad(), module.backbone.disable_adapter():
        ours = module.backbone(input_ids=ids).logits
    torch.testing.assert_close(saved(input_ids=ids).logits, ours)


def test_norm_clipping_under_fsdp_uses_fsdp_clip_grad_norm(module):
    """Lightning refuses norm clipping with FSDP; the module clips through the FSDP root's own clip_grad_norm_."""
    from unittest import mock

    from lightning.pytorch.strategies import FSDPStrategy

    root = mock.Mock()
    strategy = FSDPStrategy()
    strategy._lightning_module, strategy._model = module, root
    module._trainer = mock.Mock(strategy=strategy)
    module.configure_gradient_clipping(mock.Mock(), 2.0, "norm")
    root.clip_grad_norm_.assert_called_once_with(2.0)
    module._trainer = mock.Mock(strategy=mock.Mock())  # any other strategy: Lightning's own clipping
    with mock.patch("lightning.pytorch.LightningModule.configure_gradient_clipping") as base:
        module.configure_gradient_clipping("opt", 2.0, "norm")
    base.assert_called_once_with("opt", 2.0, "norm")


def test_debug_fast_writes_no_checkpoint_and_no_logs(tmp_path):
    train(compose_train([*FAST, "callbacks=default", "callbacks.progress_bar=null", "debug=fast",
                         f"paths.output_dir={tmp_path}"]))  # fmt: skip
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "csv").exists()


@pytest.mark.slow
def test_debug_overfit_fits_one_batch(tmp_path):
    """debug=overfit drives the loss on one fixed batch below 5% of its start."""
    import subprocess
    import sys

    from helpers import ENV, losses_by_step

    fast = [o for o in FAST[4:] if not o.startswith("model.lora.r=")]  # debug=overfit fully fine-tunes
    cmd = [sys.executable, "train.py", "debug=overfit", *fast, f"paths.output_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = losses_by_step(tmp_path)
    assert losses[max(losses)] < 0.05 * losses[min(losses)], (losses[min(losses)], losses[max(losses)])


def test_debug_fast_and_profile_compose():
    cfg = compose_train(["debug=fast"])
    assert cfg.trainer.fast_dev_run is True
    assert cfg.logger is None and cfg.callbacks.model_checkpoint is None and cfg.callbacks.periodic_checkpoint is None
    cfg = compose_train(["debug=profile", "paths.output_dir=/tmp/x"])
    assert cfg.trainer.profiler._target_.endswith("PyTorchProfiler") and cfg.trainer.max_steps == 10


def test_wandb_group_tags_line_plot_and_offline_artifacts(tmp_path, monkeypatch):
    """W&B runs are grouped and tagged by method/model/data; the KV-by-step line plot gains a point per validation;
    log_model (checkpoint artifacts) is refused at compose time when the run would be offline."""
    from types import SimpleNamespace

    from lightning.pytorch.loggers import WandbLogger

    from kava.callbacks import KVStepFigure
    from kava.schema import ConfigValueError, validate_train

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train(FAST + ["logger=wandb", "method=pccot", f"paths.output_dir={tmp_path}"])
    assert cfg.logger.wandb.group == "pccot-tiny-synthetic"
    assert list(cfg.logger.wandb.tags) == ["pccot", "tiny", "synthetic", "kv_steps=all", "kv_slots=progressive"]
    with pytest.raises(ConfigValueError, match="log_model=true in an offline"):
        validate_train(compose_train(FAST + ["logger=wandb", "logger.wandb.log_model=true"]))

    from kava.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # eval.py has no method/model/data
        ev = compose("eval", overrides=["logger=wandb", "ckpt_path=x"])
    assert ev.logger.wandb.group is None and list(ev.logger.wandb.tags) == []

    logged = []
    logger = WandbLogger(offline=True, save_dir=str(tmp_path))
    logger._experiment = SimpleNamespace(log=lambda data, **kw: logged.append(data))
    cb = KVStepFigure(dirpath=str(tmp_path / "figures"))
    for step, losses in ((10, (0.5, 0.4)), (20, (0.3, 0.2))):
        metrics = {"val/kv_step_1": losses[0], "val/kv_step_2": losses[1]}
        trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, callback_metrics=metrics,
                                  global_step=step, default_root_dir=str(tmp_path), loggers=[logger])  # fmt: skip
        cb.on_validation_end(trainer, None)
    plots = [d for d in logged if "val/kv_by_step_over_training" in d]
    assert [d["trainer/global_step"] for d in plots] == [10, 20]
    table = plots[-1]["val/kv_by_step_over_training"].table
    rows = sorted(map(tuple, table.data))  # (step, line, value) rows of the line series
    assert [(r[0], r[2]) for r in rows if r[1] == "Jacobi step 2"] == [(10, 0.4), (20, 0.2)]


def test_every_method_has_one_name_in_wandb_and_the_model_card(tmp_path, monkeypatch):
    """The config's name (conf/method/<name>.yaml) is the method's only name: 7 methods give 7 W&B groups, tags and
    model-card titles (cot and nocot share a class, answer_ce keeps its underscore); an older checkpoint, named by
    its class, gets the same names."""
    from omegaconf import OmegaConf

    from kava.compat import with_method
    from kava.export import model_card

    monkeypatch.setenv("WANDB_MODE", "offline")
    methods = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
    assert len(methods) == 7
    groups, titles = {}, {}
    for m in methods:
        cfg = compose_train(FAST + ["logger=wandb", f"method={m}", f"paths.output_dir={tmp_path}"])
        groups[m], tags = cfg.logger.wandb.group, list(cfg.logger.wandb.tags)
        assert groups[m] == f"{m}-tiny-synthetic" and tags[0] == m
        hp = OmegaConf.to_container(cfg, resolve=False)
        titles[m] = next(line for line in model_card(hp).splitlines() if line.startswith("# "))
        assert titles[m].startswith(f"# {m} ") and f"| method | `{m}` |" in model_card(hp)
        old = {**hp, "method": {"_target_": hp["method"]["_target_"]}}  # written before method.name
        assert with_method(old)["method"]["name"] == m and f"| method | `{m}` |" in model_card(old)
    assert len(set(groups.values())) == len(set(titles.values())) == 7
