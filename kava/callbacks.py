"""Lightning callbacks: the KV loss by Jacobi step at each validation, as a table and a figure."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger


def kv_by_step(metrics: dict, stage: str = "val") -> list[tuple[int, float]]:
    """``[(t, kv_step_t), ...]`` from logged metrics, in step order."""
    prefix = f"{stage}/kv_step_"
    steps = [(int(k[len(prefix) :]), float(v)) for k, v in metrics.items() if k.startswith(prefix)]
    return sorted(steps)


class KVStepFigure(L.Callback):
    """At each validation: a W&B table + image of ``val/kv_step_t`` against t, a TensorBoard figure, and a PNG
    under ``<dirpath>/kv_steps_step<N>.png`` for every logger (so CSV runs get it too)."""

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

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
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                rows = [[t, v] for t, v in points]
                logger.log_table(key="val/kv_by_step_table", columns=["jacobi_step", "kv_loss"], data=rows)
                logger.log_image(key="val/kv_by_step", images=[str(path)], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("val/kv_by_step", fig, global_step=trainer.global_step)
            elif isinstance(logger, CSVLogger):
                with open(Path(logger.log_dir) / "kv_by_step.csv", "a") as f:
                    f.writelines(f"{trainer.global_step},{t},{v}\n" for t, v in points)
        plt.close(fig)
