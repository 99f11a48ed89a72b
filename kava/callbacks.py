"""Lightning callbacks: the KV loss by Jacobi step at each validation (table and figure), and periodic checkpoints."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, WandbLogger


def kv_by_step(metrics: dict, stage: str = "val") -> list[tuple[int, float]]:
    """``[(t, kv_step_t), ...]`` from logged metrics, in step order."""
    prefix = f"{stage}/kv_step_"
    steps = [(int(k[len(prefix) :]), float(v)) for k, v in metrics.items() if k.startswith(prefix)]
    return sorted(steps)


class KVStepFigure(L.Callback):
    """At each validation: a PNG of ``val/kv_step_t`` against t under ``<dirpath>/kv_steps_step<N>.png`` for every
    logger (so CSV runs get it too, and ``kv_by_step.csv``); with W&B also a table, the image, and a line plot of each
    Jacobi step's KV loss over training (``val/kv_by_step_over_training``, one line per t, x = training step; from
    the start of this process, so a resumed run's plot starts at its checkpoint)."""

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.steps: list[int] = []  # training steps of the validations so far
        self.history: dict[int, list[float]] = {}  # Jacobi step t -> its KV loss at each of them

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        points = kv_by_step(trainer.callback_metrics)
        if not points:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.plot([t for t, _ in points], [v for _, v in points], marker="o")
        ax.set_xlabel("Jacobi step t")
        ax.set_ylabel("val KV loss")
        ax.set_xticks([t for t, _ in points])
        ax.set_title(f"KV loss by Jacobi step (step {trainer.global_step})")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = Path(self.dirpath or Path(trainer.default_root_dir) / "figures")
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"kv_steps_step{trainer.global_step}.png"
        fig.savefig(path, dpi=100)
        self.steps.append(trainer.global_step)
        for t, v in points:
            self.history.setdefault(t, []).append(v)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                rows = [[t, v] for t, v in points]
                logger.log_table(key="val/kv_by_step_table", columns=["jacobi_step", "kv_loss"], data=rows)
                logger.log_image(key="val/kv_by_step", images=[str(path)], step=trainer.global_step)
                plot = {"val/kv_by_step_over_training": self.line_plot(), "trainer/global_step": trainer.global_step}
                logger.experiment.log(plot)
            elif isinstance(logger, CSVLogger):
                with open(Path(logger.log_dir) / "kv_by_step.csv", "a") as f:
                    f.writelines(f"{trainer.global_step},{t},{v}\n" for t, v in points)
        plt.close(fig)

    def line_plot(self):
        """The W&B line plot of every Jacobi step's KV loss against the training step, so far."""
        import wandb

        ts = sorted(self.history)
        return wandb.plot.line_series(
            xs=self.steps, ys=[self.history[t] for t in ts], keys=[f"Jacobi step {t}" for t in ts],
            title="val KV loss by Jacobi step", xname="training step",
        )  # fmt: skip


def write_kv_cosine_csv(path: Path, global_step: int, cos) -> None:
    """Append rows ``global_step,jacobi_step,kind,layer,slot,cosine`` for a (T, 2, L, M) cosine tensor."""
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write("global_step,jacobi_step,kind,layer,slot,cosine\n")
        n_t, _, n_l, n_m = cos.shape
        for t in range(n_t):
            for j, kind in enumerate(("k", "v")):
                for layer in range(n_l):
                    f.writelines(
                        f"{global_step},{t + 1},{kind},{layer},{m},{float(cos[t, j, layer, m]):.6f}\n"
                        for m in range(n_m)
                    )


class KVCosineFigure(L.Callback):
    """At each validation: a heatmap of the cosine between each latent's K (top row) / V (bottom row) and its R-KV
    target, per layer (y) and latent slot (x), one column per Jacobi step; written to
    ``<dirpath>/kv_cosine_step<N>.png``, appended to ``<dirpath>/kv_cosine.csv``, and logged to W&B as
    ``val/kv_cosine`` when W&B is on. The means per step are logged as ``val/kv_cos_{k,v}_step_t``."""

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        cos = pl_module.val_tensors.get("kv_cosine")  # methods with KV distillation
        if trainer.sanity_checking or not trainer.is_global_zero or cos is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(self.dirpath or Path(trainer.default_root_dir) / "figures")
        out.mkdir(parents=True, exist_ok=True)
        write_kv_cosine_csv(out / "kv_cosine.csv", trainer.global_step, cos)
        n_t, _, n_l, n_m = cos.shape
        fig, axes = plt.subplots(
            2, n_t, figsize=(2.2 + 0.25 * n_m * n_t, 1.6 + 0.5 * n_l * 2), squeeze=False, layout="constrained"
        )
        for t in range(n_t):
            for j, kind in enumerate(("K", "V")):
                ax = axes[j, t]
                im = ax.imshow(cos[t, j].numpy(), vmin=-1, vmax=1, cmap="RdBu_r", aspect="auto")
                ax.set_title(f"{kind}, Jacobi step {t + 1}", fontsize=8)
                ax.set_xlabel("latent slot", fontsize=7)
                ax.set_ylabel("layer", fontsize=7)
                ax.set_yticks(range(n_l))
                ax.set_xticks(range(0, n_m, max(1, n_m // 8)))
                ax.tick_params(labelsize=6)
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="cosine with R-KV target")
        fig.suptitle(f"student-teacher KV cosine (step {trainer.global_step})", fontsize=9)
        path = out / f"kv_cosine_step{trainer.global_step}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="val/kv_cosine", images=[str(path)], step=trainer.global_step)


class PeriodicCheckpoint(L.Callback):
    """``last.ckpt`` every ``every_n_steps`` optimizer steps and every ``every_minutes`` of training, whatever the
    validation interval, so that a crash loses at most that much work. Written through the trainer (atomically, by
    :class:`kava.checkpoint_io.AtomicCheckpointIO`); every rank takes the same decision (rank 0's clock)."""

    CLOCK_EVERY = 10  # steps between clock checks (a broadcast under DDP), not every step

    def __init__(self, dirpath: str, every_n_steps: int = 500, every_minutes: float = 10.0) -> None:
        self.dirpath, self.every_n_steps, self.every_minutes = Path(dirpath), every_n_steps, every_minutes
        self._last_time: float | None = None
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_time, self._last_step = time.monotonic(), trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == self._last_step or self._last_time is None:  # mid-accumulation, or already saved at this step
            return
        due = self.every_n_steps > 0 and step % self.every_n_steps == 0  # the same on every rank
        if not due and self.every_minutes > 0 and step % self.CLOCK_EVERY == 0:  # rank 0's clock decides, for all
            due = trainer.strategy.broadcast(time.monotonic() - self._last_time >= 60 * self.every_minutes)
        if due:
            trainer.save_checkpoint(self.dirpath / "last.ckpt")
            self._last_time, self._last_step = time.monotonic(), step


class Preemption(L.Callback):
    """SIGTERM (a scheduler's preemption notice), SIGINT (Ctrl-C) and SIGUSR1 (SLURM's warning signal) end the run at
    the next optimizer-step boundary: ``<dirpath>/last.ckpt`` is written there (atomically, through the trainer),
    then :class:`kava.errors.Interrupted` stops the fit, so no end-of-epoch hook moves the loops past the saved
    state. A second SIGINT stops at once. Under DDP every rank stops at the same step (any rank's signal counts).

    Handlers are installed when training starts, replacing Lightning's SIGTERM handler (which ends the fit with
    exit status 0 and no checkpoint), and put back when the fit ends.
    """

    SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self.signum: int | None = None
        self._last_step = -1
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        import signal

        if signum == signal.SIGINT and self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import signal
        import threading

        self._last_step = trainer.global_step
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            return
        for name in self.SIGNALS:
            if hasattr(signal, name):
                num = getattr(signal, name)
                self._previous[num] = signal.signal(num, self._handle)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.restore()

    def restore(self) -> None:
        import signal

        for num, handler in self._previous.items():
            signal.signal(num, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        from kava.errors import Interrupted

        step = trainer.global_step
        if step == self._last_step:  # mid-accumulation: the optimizer step is not done yet
            return
        self._last_step = step
        stop = self.signum is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        raise Interrupted(self.signum or 15, step, str(path))
