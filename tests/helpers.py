"""Helpers shared by the test modules: composing the real config with small-run overrides, reading a run's metrics."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from hydra import compose, initialize_config_dir

from kava.config import CONF_DIR

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
FAST = [  # a few steps of a tiny model on a few problems: every stage of a run, in seconds
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "data.synthetic.num_train=48",
    "data.synthetic.num_val=8",
    "data.synthetic.num_test=8",
    "data.micro_batch_size=8",
    "data.global_batch_size=8",
    "model.tiny.hidden_size=64",
    "model.tiny.intermediate_size=128",
    "model.tiny.num_layers=2",
    "model.tiny.vocab_size=300",
    "callbacks=none",
]


def compose_train(overrides: list[str]):
    """``conf/train.yaml`` composed as ``train.py`` would with these overrides."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def metrics_rows(out: Path) -> list[dict[str, str]]:
    """The rows of a run's CSV log."""
    (path,) = out.glob("csv/version_*/metrics.csv")
    with open(path) as f:
        return list(csv.DictReader(f))


def losses_by_step(out: Path) -> dict[int, float]:
    """``train/loss`` by step over every CSV log of a run folder (a resumed run writes a second one)."""
    rows = []
    for path in sorted(out.glob("csv/version_*/metrics.csv")):
        with open(path) as f:
            rows += list(csv.DictReader(f))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
