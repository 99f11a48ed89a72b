"""Train KaVa: ``python train.py [model=...] [data=...] [loss=...] [key=value ...]``."""

import json
import logging
import math
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import kava.config  # noqa: F401  (registers the config resolvers)
from kava.errors import NonFiniteError
from kava.preflight import check_train
from kava.schema import ConfigValueError, check_override_keys, validate_train
from kava.sweep import FAILED_FILE, METRICS_FILE

log = logging.getLogger("train")


def run(cfg: DictConfig) -> dict[str, float]:
    check_train(cfg)  # before the heavy imports: an unreachable data set or model stops within seconds
    from kava.training import train

    return train(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    out = Path(cfg.paths.output_dir)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        # in a sweep, one failed run is recorded (failed.json, summary table) and the sweep goes on
        try:
            metrics = run(cfg)
        except Exception as err:  # noqa: BLE001
            (out / FAILED_FILE).write_text(json.dumps({"error": repr(err), "traceback": traceback.format_exc()}))
            log.exception("run %s failed; recorded in %s", out.name, out / FAILED_FILE)
            return float("nan")
        finally:
            finish_wandb()  # each job its own W&B run: the next job in this process must not log into this one
    else:
        try:  # a bad value stops here, before the heavy imports, naming the key and what it may be
            validate_train(cfg)  # (kava.training.build checks again for every other entry point)
        except ConfigValueError as err:
            sys.exit(f"train.py: {err}")
        try:
            metrics = run(cfg)
        except NonFiniteError as err:  # one line naming the step, the term and the settings, not a traceback
            log.error("%s", err)
            sys.exit(f"train.py: {err}")
    strict = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}  # strict JSON: NaN/inf -> null
    (out / METRICS_FILE).write_text(json.dumps(strict, indent=1, allow_nan=False))
    if cfg.optimized_metric not in metrics:
        log.warning("optimized_metric=%s was not logged by this run: the sweeper gets NaN", cfg.optimized_metric)
    return metrics.get(cfg.optimized_metric, float("nan"))


def finish_wandb() -> None:
    """Close the current W&B run, if W&B was used in this process."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def resume_in_own_folder(argv: list[str]) -> list[str]:
    """``ckpt_path=<run>/checkpoints/x.ckpt`` continues in ``<run>`` (its CSV logs gain a new version there) unless
    the command line names another folder (``hydra.run.dir=`` / ``paths.output_dir=``) or sweeps."""
    ckpt = next((a.split("=", 1)[1] for a in argv if a.startswith("ckpt_path=")), None)
    elsewhere = ("hydra.run.dir=", "paths.output_dir=")
    if not ckpt or any(a in ("-m", "--multirun") or a.startswith(elsewhere) for a in argv):
        return argv
    folder = Path(ckpt).resolve().parent
    if folder.name == "checkpoints" and (folder.parent / ".hydra").is_dir():
        return [*argv, f"hydra.run.dir={folder.parent}"]
    return argv


if __name__ == "__main__":
    problem = check_override_keys("train", sys.argv[1:])  # a typo'd key: name the nearest valid ones
    if problem:
        sys.exit(f"train.py: {problem}")
    sys.argv = [sys.argv[0], *resume_in_own_folder(sys.argv[1:])]
    main()
