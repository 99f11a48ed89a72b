"""Build the data module, the Lightning module and the trainer from a composed config, and fit."""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import LambdaCallback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from kava.callbacks import PeriodicCheckpoint, Preemption
from kava.checkpoint_io import AtomicCheckpointIO, check_writable
from kava.console import metrics_table, quiet_known_noise, show
from kava.errors import Interrupted
from kava.lit_module import KAVALitModule
from kava.model.backbone import load_base_model, load_tokenizer
from kava.schema import ConfigValueError, ModelSchema, typed, validate_train

log = logging.getLogger(__name__)


def accumulation(global_batch: int, micro_batch: int, devices: int, nodes: int) -> int:
    """Gradient-accumulation steps that keep ``data.global_batch_size`` whatever the device count."""
    per_step = micro_batch * devices * nodes
    if global_batch % per_step:
        raise ConfigValueError(
            f"data.global_batch_size={global_batch} is not a multiple of data.micro_batch_size={micro_batch} x "
            f"trainer.devices={devices} x trainer.num_nodes={nodes} = {per_step}: change one of them"
        )
    return global_batch // per_step


def trainer_config(trainer: DictConfig) -> dict[str, Any]:
    """``trainer.*`` for the installed Lightning: arguments it does not know (conf/trainer/base.yaml lists those of the
    version CI tests) are dropped while at their default (null/false) and name the setting otherwise."""
    known = set(inspect.signature(L.Trainer.__init__).parameters)
    out = {}
    for key, value in OmegaConf.to_container(trainer, resolve=True).items():
        if key == "_target_" or key in known:
            out[key] = value
        elif value not in (None, False):
            raise ConfigValueError(f"trainer.{key}={value}: this Lightning version's Trainer has no argument '{key}'")
    return out


@contextlib.contextmanager
def no_hf_progress_bars() -> Iterator[None]:
    """Silence transformers' progress bars for the block, restoring the user's setting after it."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, KAVALitModule, L.Trainer]:
    """Instantiate everything a run needs (after the value checks of kava.schema); nothing is trained here."""
    validate_train(cfg)
    L.seed_everything(cfg.seed, workers=True)
    dm = hydra.utils.instantiate(cfg.data)
    model_cfg = typed(ModelSchema, cfg.model, "model")
    tokenizer = load_tokenizer(model_cfg, corpus=dm.corpus() if not model_cfg.name_or_path else None)
    dm.attach_tokenizer(tokenizer)
    module = KAVALitModule(
        model=cfg.model,
        latent=cfg.latent,
        teacher=cfg.teacher,
        loss=cfg.loss,
        optim=cfg.optim,
        data=cfg.data,
        val_acc=cfg.val_acc,
        method=cfg.method,
        tokenizer=tokenizer,
    )
    out = Path(cfg.paths.output_dir)
    if not model_cfg.name_or_path:  # the tiny model: keep its tokenizer and random-init base with the run
        tokenizer.save_pretrained(out / "tokenizer")
        with no_hf_progress_bars():  # a tqdm bar for writing one small file
            load_base_model(model_cfg, tokenizer).save_pretrained(out / "base_model")  # same seed, same weights
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks = []
    for name, c in (cfg.get("callbacks") or {}).items():
        if c is None:
            continue
        callbacks.append(hydra.utils.instantiate(c))
        if isinstance(callbacks[-1], ModelCheckpoint | PeriodicCheckpoint) and callbacks[-1].dirpath:
            check_writable(callbacks[-1].dirpath, f"callbacks.{name}.dirpath")
    strategy_cfg = cfg.strategy  # conf/strategy/: a Lightning strategy to instantiate, or single's name (auto)
    strategy = hydra.utils.instantiate(strategy_cfg) if "_target_" in strategy_cfg else strategy_cfg.name
    targs = trainer_config(cfg.trainer)
    plugins = list(targs.pop("plugins", None) or [])
    if "deepspeed" not in str(strategy_cfg.get("_target_")).lower():  # DeepSpeed writes its own folders
        plugins.append(AtomicCheckpointIO())
    trainer = hydra.utils.instantiate(
        targs, logger=loggers or False, callbacks=callbacks, strategy=strategy, plugins=plugins or None
    )
    # the global batch is fixed; the accumulation follows from the devices Lightning resolved
    trainer.accumulate_grad_batches = accumulation(
        cfg.data.global_batch_size, cfg.data.micro_batch_size, trainer.num_devices, trainer.num_nodes
    )
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return dm, module, trainer


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then return the last logged metrics (floats) with the fit's wall time and optimizer steps per second."""
    quiet_known_noise()
    dm, module, trainer = build(cfg)
    folder = Path(cfg.paths.output_dir).resolve()
    log.info("run folder: %s", folder)
    first_step: list[int] = []  # a resumed run starts at its checkpoint's step
    trainer.callbacks.append(LambdaCallback(on_train_start=lambda t, _: first_step.append(t.global_step)))
    if not trainer.fast_dev_run:  # a signal ends the run at an optimizer step, with last.ckpt written there
        trainer.callbacks.append(Preemption(folder / "checkpoints"))
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    except Interrupted as stop:  # only a signal: the run's metrics so far go with it to the entry point
        stop.metrics = final_metrics(trainer, dm, first_step, time.perf_counter() - start)
        raise
    metrics = final_metrics(trainer, dm, first_step, time.perf_counter() - start)
    if trainer.is_global_zero:
        show(metrics_table(metrics, f"{cfg.task_name}: {trainer.global_step} steps"))
    log.info("run folder: %s", folder)
    return metrics


def final_metrics(trainer: L.Trainer, dm: Any, first_step: list[int], elapsed: float) -> dict[str, float]:
    """The last logged metrics (floats), the data module's skip counts, the fit's wall time and steps per second."""
    skipped = dm.counts()
    if skipped:
        for lg in trainer.loggers:
            lg.log_metrics(skipped, step=trainer.global_step)
            lg.save()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics.update(skipped)
    steps = trainer.global_step - (first_step[0] if first_step else trainer.global_step)
    metrics.update({"time/fit_s": elapsed, "time/steps_per_s": steps / elapsed if elapsed > 0 else 0.0})
    log.debug("final metrics: %s", metrics)
    return metrics
