"""What ``train.py`` and ``eval.py`` share before and around their work: one-line errors, removing the folder of a
run that could not start, and resuming a run with its own configuration.

Only the standard library, OmegaConf and Hydra's compose API are imported here, so every check runs before torch.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig, OmegaConf

from kava.compat import incompatible, resume_message
from kava.errors import FileAccessError, ResumeError

RESUME_PREFIX = "resume-"  # <run>/.hydra/resume-<time>/: the record of each resumed invocation
INTERRUPTED_FILE = "interrupted.json"  # in the run folder: the run stopped on a signal; the same command resumes it
MIN_FREE_BYTES = 64 * 2**20  # a run folder needs room for its config, logs and first checkpoint
SETUP_FILES = {".hydra", "train.log", "eval.log", "tokenizer", "base_model", "csv", "figures", "checkpoints"}


def verbose() -> bool:
    """``HYDRA_FULL_ERROR=1``: user errors show their traceback too."""
    return os.environ.get("HYDRA_FULL_ERROR", "") == "1"


def fail(script: str, err: BaseException, folder: Path | None = None) -> NoReturn:
    """Exit with one line naming what to change; ``folder`` (a run that never started) is removed first."""
    if folder is not None:
        remove_if_fresh(folder)
    if verbose():
        raise err
    sys.exit(f"{script}: {err}")


def is_fresh(folder: Path) -> bool:
    """Whether ``folder`` holds only what a run writes before its first step: Hydra's record and log, the tiny
    model's tokenizer and base, empty logger and checkpoint folders (no metric, checkpoint or file of anyone
    else's)."""
    if not folder.is_dir():
        return False
    if not all(p.name in SETUP_FILES for p in folder.iterdir()):
        return False
    return not any((folder / "csv").glob("*/metrics.csv")) and not any((folder / "checkpoints").glob("*.ckpt"))


def remove_if_fresh(folder: Path) -> None:
    if is_fresh(folder):
        shutil.rmtree(folder, ignore_errors=True)


def override_key(arg: str) -> str:
    """The key an override sets: ``+a.b=1`` / ``~a.b`` / ``a.b=1`` -> ``a.b``; ``method=pccot`` -> ``method``."""
    return arg.lstrip("+~").split("=", 1)[0]


def arg_value(argv: Sequence[str], key: str) -> str | None:
    """The value the command line gives ``key`` (the last one wins), or None."""
    found = [a.split("=", 1)[1] for a in argv if "=" in a and override_key(a) == key]
    return found[-1] if found else None


def run_folder_of(ckpt: str | Path) -> Path | None:
    """The kava run folder a checkpoint belongs to (``<run>/checkpoints/x.ckpt`` with ``<run>/.hydra``), or None."""
    folder = Path(ckpt).resolve().parent
    if folder.name == "checkpoints" and (folder.parent / ".hydra").is_dir():
        return folder.parent
    return None


def last_record(run: Path) -> Path:
    """The newest ``.hydra`` record of a run: its last resume's, else its first."""
    resumes = sorted(p for p in (run / ".hydra").glob(f"{RESUME_PREFIX}*") if (p / "overrides.yaml").exists())
    return resumes[-1] if resumes else run / ".hydra"


def merge_overrides(original: Iterable[str], new: Sequence[str]) -> list[str]:
    """The original run's overrides with the new command line's on top (a key given again takes its new value)."""
    new_keys = {override_key(a) for a in new}
    return [a for a in original if override_key(a) not in new_keys and override_key(a) != "ckpt_path"] + list(new)


def resume_argv(argv: Sequence[str], ckpt: str) -> list[str]:
    """The command line of a resume (``ckpt_path=<run>/checkpoints/...``, not a sweep): the run's own overrides under
    the new ones, the run's folder as Hydra's, and this invocation's record in ``<run>/.hydra/resume-<time>/`` (the
    original record is kept). A checkpoint outside a run folder resumes with the command line as it is."""
    run = run_folder_of(ckpt)
    if run is None:
        return list(argv)
    original = OmegaConf.load(last_record(run) / "overrides.yaml")
    args = merge_overrides([str(a) for a in original], list(argv))
    if arg_value(argv, "hydra.run.dir") is None and arg_value(argv, "paths.output_dir") is None:
        args.append(f"hydra.run.dir={run}")
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000_000:09d}"
    return [*args, f"hydra.output_subdir=.hydra/{RESUME_PREFIX}{stamp}"]


def interrupted_run(argv: Sequence[str]) -> str | None:
    """The checkpoint a requeued command resumes: a command without ``ckpt_path`` whose explicit run folder
    (``hydra.run.dir=`` or ``paths.output_dir=``) holds a run stopped by a signal."""
    if arg_value(argv, "ckpt_path") not in (None, "null"):
        return None
    folder = arg_value(argv, "hydra.run.dir") or arg_value(argv, "paths.output_dir")
    if folder and (Path(folder) / INTERRUPTED_FILE).exists() and (Path(folder) / "checkpoints" / "last.ckpt").exists():
        return str(Path(folder) / "checkpoints" / "last.ckpt")
    return None


def check_resume(ckpt: str, cfg: DictConfig) -> None:
    """Stop when ``cfg`` would load ``ckpt`` into another model (the run's own record, ``<run>/.hydra``)."""
    run = run_folder_of(ckpt)
    if run is None or not (run / ".hydra" / "config.yaml").exists():
        return  # no record beside it: the module compares the checkpoint's own hyperparameters when it loads
    problem = incompatible(OmegaConf.load(run / ".hydra" / "config.yaml"), cfg)
    if problem:
        raise ResumeError(resume_message(ckpt, problem))


def check_writable_parent(folder: str | Path, setting: str) -> None:
    """A run folder can be made at ``folder``: the nearest existing folder above it takes a probe folder (made and
    removed at once) and its file system has room."""
    import tempfile

    p = Path(folder).absolute()
    while not p.exists():
        p = p.parent
    try:
        Path(tempfile.mkdtemp(prefix=".kava-probe-", dir=p)).rmdir()
    except OSError as err:
        raise FileAccessError(
            f"{setting}={folder}: nothing can be written in {p} ({err.strerror or err}); point {setting} at a "
            "writable folder"
        ) from err
    if shutil.disk_usage(p).free < MIN_FREE_BYTES:
        raise FileAccessError(
            f"{setting}={folder}: the file system of {p} is full ({shutil.disk_usage(p).free // 2**20} MiB free); "
            f"free some space or point {setting} elsewhere"
        )
