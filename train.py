"""Train KaVa: ``python train.py [model=...] [data=...] [loss=...] [key=value ...]``."""

import json
import logging
import math
import signal
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import kava.config  # noqa: F401  (registers the config resolvers)
from kava import cli
from kava.errors import Interrupted, UserError
from kava.preflight import check_checkpoint, check_machine, check_train
from kava.schema import check_override_keys, validate_train
from kava.sweep import FAILED_FILE, METRICS_FILE

log = logging.getLogger("train")
SCRIPT = "train.py"


def run(cfg: DictConfig) -> dict[str, float]:
    check_train(cfg)  # before the heavy imports: an unreachable data set or model stops within seconds
    from kava.training import train

    return train(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    out = Path(cfg.paths.output_dir)
    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    if sweep:
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
        default = signal.signal(signal.SIGTERM, stop_before_training)  # kava.callbacks.Preemption once it trains
        try:
            validate_train(cfg)  # checked before Hydra started too; entry points other than this one rely on it here
            metrics = run(cfg)
        except UserError as err:  # one line naming the setting, row or file; the folder of a run that never started
            log.error("%s", err)  # is removed
            cli.fail(SCRIPT, err, out)
        except (Interrupted, KeyboardInterrupt) as stop:
            interrupted(out, stop)
        finally:
            signal.signal(signal.SIGTERM, default)
        (out / cli.INTERRUPTED_FILE).unlink(missing_ok=True)  # finished: the same command starts afresh again
    write_metrics(out, metrics)
    if cfg.optimized_metric not in metrics and sweep:
        log.warning("optimized_metric=%s was not logged by this run: the sweeper gets NaN", cfg.optimized_metric)
    return metrics.get(cfg.optimized_metric, float("nan"))


def stop_before_training(signum: int, _frame) -> None:
    raise Interrupted(signum, 0, None)


def write_metrics(out: Path, metrics: dict[str, float]) -> None:
    strict = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}  # strict JSON: NaN/inf -> null
    (out / METRICS_FILE).write_text(json.dumps(strict, indent=1, allow_nan=False))


def interrupted(out: Path, stop: BaseException) -> None:
    """A signal ended the run: its metrics so far, a marker that lets the same command resume it, one line naming the
    checkpoint and the resume command, and exit status 128 + the signal's number."""
    signum = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
    ckpt = stop.checkpoint if isinstance(stop, Interrupted) else None
    name = signal.Signals(signum).name
    if ckpt is None:
        cli.remove_if_fresh(out)
        print(f"{SCRIPT}: {name} before the first optimizer step; nothing to save", file=sys.stderr)
        sys.exit(128 + signum)
    write_metrics(out, getattr(stop, "metrics", {}))
    (out / cli.INTERRUPTED_FILE).write_text(json.dumps({"signal": name, "step": stop.step, "checkpoint": ckpt}))
    print(
        f"{SCRIPT}: {name} at step {stop.step}: saved {ckpt}; resume with `python train.py ckpt_path={ckpt}` "
        f"(the run's own settings; or rerun the same command with hydra.run.dir={out})",
        file=sys.stderr,
    )
    sys.exit(128 + signum)


def finish_wandb() -> None:
    """Close the current W&B run, if W&B was used in this process."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def prepare(argv: list[str]) -> list[str]:
    """The command line Hydra runs, after every check that needs no heavy import (one line and no run folder for a
    problem): unknown keys, values, the machine's devices, the checkpoint and a resume's compatibility, the output
    folder. A resume (``ckpt_path=<run>/checkpoints/...``) or a requeued interrupted run gets the run's own overrides
    under the command line's, and its own folder."""
    problem = check_override_keys("train", argv)  # a typo'd key: name the nearest valid ones
    if problem:
        sys.exit(f"{SCRIPT}: {problem}")
    if any(a.startswith("-") for a in argv):
        return argv  # Hydra's flags: a sweep (-m), --cfg, --help, ...; each job of a sweep is checked on its own
    requeued = cli.interrupted_run(argv)
    if requeued:
        argv = [*argv, f"ckpt_path={requeued}"]
    ckpt = cli.arg_value(argv, "ckpt_path")
    try:
        if ckpt not in (None, "null"):
            check_checkpoint(ckpt)
            argv = cli.resume_argv(argv, ckpt)
        cfg = compose(argv)
        validate_train(cfg)
        check_machine(cfg)
        if ckpt not in (None, "null"):
            cli.check_resume(ckpt, cfg)
        folder = cli.arg_value(argv, "paths.output_dir") or cli.arg_value(argv, "hydra.run.dir") or "outputs"
        cli.check_writable_parent(folder, "hydra.run.dir" if folder == "outputs" else "paths.output_dir")
    except UserError as err:
        cli.fail(SCRIPT, err)
    return argv


def compose(argv: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from kava.config import CONF_DIR

    task = [a for a in argv if not a.startswith("hydra.")]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=task)
    OmegaConf.set_struct(cfg, False)
    return cfg


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *prepare(sys.argv[1:])]
    main()
