"""Build the data module, the Lightning module and the trainer from a composed config, and fit."""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from kava.callbacks import PeriodicCheckpoint
from kava.checkpoint_io import AtomicCheckpointIO, check_writable
from kava.lit_module import KAVALitModule
from kava.model.backbone import load_base_model, load_tokenizer
from kava.schema import validate_train

log = logging.getLogger(__name__)


def accumulation(global_batch: int, micro_batch: int, devices: int, nodes: int) -> int:
    """Gradient-accumulation steps that keep ``data.global_batch_size`` whatever the device count."""
    per_step = micro_batch * devices * nodes
    if global_batch % per_step:
        raise ValueError(
            f"data.global_batch_size={global_batch} is not a multiple of data.micro_batch_size={micro_batch} x "
            f"trainer.devices={devices} x trainer.num_nodes={nodes} = {per_step}: change one of them"
        )
    return global_batch // per_step


# the training sampler resumes mid-epoch from Lightning's restored progress (kava.data.datamodule), so
# Lightning's generic warning about non-resumable loaders does not apply
warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")


def trainer_config(trainer: DictConfig) -> dict[str, Any]:
    """``trainer.*`` for the installed Lightning: arguments it does not know (conf/trainer/base.yaml lists those of the
    version CI tests) are dropped while at their default (null/false) and name the setting otherwise."""
    known = set(inspect.signature(L.Trainer.__init__).parameters)
    out = {}
    for key, value in OmegaConf.to_container(trainer, resolve=True).items():
        if key == "_target_" or key in known:
            out[key] = value
        elif value not in (None, False):
            raise ValueError(f"trainer.{key}={value}: this Lightning version's Trainer has no argument '{key}'")
    return out


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, KAVALitModule, L.Trainer]:
    """Instantiate everything a run needs (after the value checks of kava.schema); nothing is trained here."""
    validate_train(cfg)
    L.seed_everything(cfg.seed, workers=True)
    dm = hydra.utils.instantiate(cfg.data)
    tokenizer = load_tokenizer(cfg.model, corpus=dm.corpus() if not cfg.model.get("name_or_path") else None)
    dm.attach_tokenizer(tokenizer)
    module = KAVALitModule(
        model=cfg.model,
        latent=cfg.latent,
        teacher=cfg.teacher,
        loss=cfg.loss,
        optim=cfg.optim,
        data=cfg.data,
        val_acc=cfg.get("val_acc"),
        method=cfg.get("method"),
        tokenizer=tokenizer,
    )
    out = Path(cfg.paths.output_dir)
    if not cfg.model.get("name_or_path"):  # the tiny model: keep its tokenizer and random-init base with the run
        tokenizer.save_pretrained(out / "tokenizer")
        load_base_model(cfg.model, tokenizer).save_pretrained(out / "base_model")  # same seed, same weights
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks = []
    for name, c in (cfg.get("callbacks") or {}).items():
        if c is None:
            continue
        callbacks.append(hydra.utils.instantiate(c))
        if isinstance(callbacks[-1], ModelCheckpoint | PeriodicCheckpoint) and callbacks[-1].dirpath:
            check_writable(callbacks[-1].dirpath, f"callbacks.{name}.dirpath")
    strategy_cfg = cfg.get("strategy") or {}
    strategy = hydra.utils.instantiate(strategy_cfg) if "_target_" in strategy_cfg else strategy_cfg.get("name", "auto")
    targs = trainer_config(cfg.trainer)
    plugins = list(targs.pop("plugins", None) or [])
    if "deepspeed" not in str(strategy_cfg.get("_target_", "")).lower():  # DeepSpeed writes its own folders
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
    """Fit, then return the last logged metrics (floats)."""
    dm, module, trainer = build(cfg)
    log.info("run folder: %s", Path(cfg.paths.output_dir).resolve())
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    skipped = dm.counts()
    if skipped:
        for lg in trainer.loggers:
            lg.log_metrics(skipped, step=trainer.global_step)
            lg.save()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics.update(skipped)
    log.info("final metrics: %s", metrics)
    log.info("run folder: %s", Path(cfg.paths.output_dir).resolve())
    return metrics
