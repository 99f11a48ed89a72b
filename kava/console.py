"""What a run prints: one line per log record, no known third-party noise, a step-based progress bar, result tables."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from rich.console import Console
from rich.table import Table

# Third-party warnings that every run would print and that a user cannot act on; matched by message only.
KNOWN_NOISE = (
    r".*`is_gradient_checkpointing` is deprecated.*",  # transformers 5 on peft's call; not ours to change
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # Lightning's pytree helper on torch >= 2.10
    r".*your dataloader is not resumable.*",  # the training sampler resumes mid-epoch (kava.data.datamodule)
)
_DROPPED_INFO = (
    "💡 Tip:",  # Lightning's advertisement for an optional package, once per Trainer
    "Trainer already configured with model summary callbacks",  # callbacks.model_summary is ours, on purpose
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_DROPPED_INFO)


def quiet_known_noise() -> None:
    """Filter :data:`KNOWN_NOISE` and make each Lightning log record print once.

    Lightning gives its ``lightning`` logger a console handler when it is imported; once Hydra has configured the
    root logger, the same record would print twice (``INFO: ...`` and Hydra's format). The root's handlers
    (console and the run's log file) are kept, Lightning's own is removed.
    """
    for pattern in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    root = logging.getLogger()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        if root.handlers:
            for h in [h for h in lg.handlers if type(h) is logging.StreamHandler]:
                lg.removeHandler(h)
            lg.propagate = True
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropNoise) for f in tips.filters):
        tips.addFilter(_DropNoise())


class StepProgressBar(RichProgressBar):
    """Rich progress bar for runs budgeted in optimizer steps (``trainer.max_steps``).

    One bar for the whole run, ``Step`` done / ``max_steps`` (resumed runs start where they stopped), instead of
    Lightning's per-epoch bar (``Epoch 1/-2``); the logger version (``v_num``) is not shown. Runs budgeted in epochs
    get Lightning's bar unchanged.
    """

    def _by_step(self) -> bool:
        return self.trainer.max_steps is not None and self.trainer.max_steps > 0

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._by_step() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._by_step():
            return super()._get_train_description(current_epoch)
        return f"{'Step':{len(self.validation_description)}}"

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._by_step() and self.train_progress_bar_id is not None and self.progress is not None:
            return  # the bar spans epochs
        super().on_train_epoch_start(trainer, pl_module)
        if self._by_step():
            self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._by_step():
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"


def metrics_table(metrics: Mapping[str, float], title: str) -> Table:
    """A two-column table, one row per metric, grouped by prefix (``train/``, ``val/``, ...) in name order."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    groups: dict[str, list[str]] = {}
    for key in metrics:
        groups.setdefault(key.split("/", 1)[0] if "/" in key else "", []).append(key)
    for i, group in enumerate(sorted(groups)):
        for key in sorted(groups[group], key=_natural):
            table.add_row(key, _fmt(float(metrics[key])), end_section=False)
        if i < len(groups) - 1:
            table.add_section()
    return table


def _natural(key: str) -> tuple:
    """``kv_step_10`` after ``kv_step_9``."""
    head, _, tail = key.rpartition("_")
    return (head, int(tail), "") if tail.isdigit() else (key, -1, "")


def results_table(results: Mapping[str, Mapping[str, Mapping[str, float]]], title: str) -> Table:
    """Evaluation results: one row per (set, decoder), accuracy in %, forward passes, questions/s, n."""
    table = Table(title=title, title_justify="left")
    for col, justify in (
        ("set", "left"),
        ("decoder", "left"),
        ("accuracy %", "right"),
        ("passes", "right"),
        ("questions/s", "right"),
        ("n", "right"),
    ):
        table.add_column(col, justify=justify)
    for name, per in results.items():
        for dec, r in per.items():
            table.add_row(
                name,
                dec,
                f"{100 * r['accuracy']:.1f}",
                f"{r['mean_forward_passes']:.1f}",
                f"{r['questions_per_s']:.1f}",
                str(int(r["n"])),
            )
    return table


def show(table: Table) -> None:
    """Print a table to the terminal (stdout)."""
    Console().print(table)
