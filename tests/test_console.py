"""The console: each log record once, known noise filtered by message only, a step-based progress bar, tables."""

from __future__ import annotations

import io
import logging
import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from kava.console import StepProgressBar, metrics_table, quiet_known_noise, results_table


@pytest.fixture
def restore_logging():
    names = ("", "lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero")
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names}
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    saved_filters, saved_level = list(rank_zero.filters), rank_zero.level
    yield
    for n, (handlers, propagate) in saved.items():
        lg = logging.getLogger(n)
        lg.handlers[:] = handlers
        lg.propagate = propagate
    rank_zero.filters[:] = saved_filters
    rank_zero.setLevel(saved_level)


def test_lightning_records_print_once(restore_logging):
    """With a root handler (as Hydra installs), a Lightning record reaches the terminal once, a tip not at all."""
    stream = io.StringIO()
    root = logging.getLogger()
    root.handlers[:] = [logging.StreamHandler(stream)]
    lit = logging.getLogger("lightning")
    lit_stream = io.StringIO()
    lit.handlers[:] = [logging.StreamHandler(lit_stream)]  # what `import lightning` does
    quiet_known_noise()
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.setLevel(logging.INFO)
    rank_zero.info("GPU available: False")
    rank_zero.info("💡 Tip: install something")
    rank_zero.info("Trainer already configured with model summary callbacks: [RichModelSummary]")
    assert stream.getvalue().count("GPU available") == 1
    assert "model summary" not in stream.getvalue()
    assert lit_stream.getvalue() == ""
    assert "Tip" not in stream.getvalue()


def test_known_noise_filtered_by_message_only():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_noise()
        warnings.warn("`is_gradient_checkpointing` is deprecated.", FutureWarning, stacklevel=1)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def training_step(self, batch, _):
        loss = self.lin(batch[0]).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_step_progress_bar_spans_epochs(tmp_path):
    """max_steps=5 over 2-batch epochs: one bar, 'Step', total 5, done 5; no v_num among the shown metrics."""
    bar = StepProgressBar()
    loader = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer = L.Trainer(
        max_steps=5,
        callbacks=[bar],
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    seen = []
    orig = bar.on_train_batch_end

    def spy(trainer, pl_module, outputs, batch, batch_idx):
        orig(trainer, pl_module, outputs, batch, batch_idx)
        task = bar.progress.tasks[bar.train_progress_bar_id]
        seen.append((task.description.strip(), task.total, task.completed))
        assert "v_num" not in bar.get_metrics(trainer, pl_module)

    bar.on_train_batch_end = spy
    trainer.fit(_Tiny(), loader)
    assert trainer.current_epoch >= 2  # the run crossed epoch boundaries
    assert seen == [("Step", 5, k) for k in range(1, 6)]


def test_metrics_table_groups_and_orders():
    table = metrics_table({"val/acc": 0.5, "train/kv_step_10": 1.0, "train/kv_step_2": 2.0, "time/fit_s": 3.0}, "t")
    rows = table.columns[0]._cells
    assert rows == ["time/fit_s", "train/kv_step_2", "train/kv_step_10", "val/acc"]
    res = {"synthetic": {"student": {"accuracy": 0.25, "mean_forward_passes": 8, "questions_per_s": 3.0, "n": 4}}}
    assert results_table(res, "r").columns[2]._cells == ["25.0"]
