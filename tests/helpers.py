"""Helpers shared by the test modules: composing the real config with small-run overrides, reading a run's metrics."""

from __future__ import annotations

import csv
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from kava.config import compose_train, module_sections  # noqa: F401  (the tests' way to compose the config)

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
FAST = [  # a few steps of a tiny model on a few problems: every stage of a run, in seconds; with LoRA adapters and
    # the CODI term (the path of the real models), where the embedded default fully fine-tunes without CODI
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
    "model.lora.r=16",
    "loss.alpha1=10.0",
    "callbacks=none",
]


TINY_MODULE = [  # the unit tests' module: 2 layers, LoRA r4, CODI weight 10, every slot supervised, no warm-up
    "model.tiny.hidden_size=64",
    "model.tiny.intermediate_size=128",
    "model.tiny.num_layers=2",
    "model.tiny.vocab_size=300",
    "model.tiny.max_position_embeddings=512",
    "model.lora.r=4",
    "model.lora.alpha=8",
    "loss.alpha1=10.0",
    "loss.kv_slots=all",
    "optim.lr=1e-3",
    "optim.weight_decay=0.0",
    "optim.warmup_ratio=0.0",
]


def decoder_calls(module, run: Callable[[], Any]) -> tuple[list[tuple[int, int, int]], Any]:
    """(batch, new positions, columns attended: cache and new) of every decoder call ``run()`` makes on
    ``module``'s backbone, and what ``run`` returned."""
    from kava.model.student import decoder_of

    calls = []

    def record(_, args, kwargs):
        x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        mask = kwargs.get("attention_mask")
        calls.append((*x.shape[:2], x.shape[1] if mask is None else mask.shape[1]))

    handle = decoder_of(module.backbone).register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = run()
    finally:
        handle.remove()
    return calls, out


def load_script(name: str, path: Path) -> ModuleType:
    """A script that is not part of the package (bench/, examples/), imported from its file as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def data_kwargs(overrides: list[str] = (), **kw) -> dict:
    """``GSM8KDataModule``'s arguments: the composed data section (``data.*`` overrides), then ``kw`` on top."""
    data = module_sections(list(overrides))["data"]
    data.pop("_target_")
    return {**data, **kw}


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
