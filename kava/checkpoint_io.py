"""Checkpoint files written atomically: a crash or a full disk mid-write never replaces a good ``last.ckpt``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from kava.errors import FileAccessError


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, flushed to disk, then renamed over it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except Exception as err:  # noqa: BLE001  (re-raised with the path; the partial file is removed)
            tmp.unlink(missing_ok=True)
            raise FileAccessError(
                f"could not write the checkpoint {path}: {err!r}. The previous checkpoint there is unchanged; make "
                "the folder writable (callbacks.*_checkpoint.dirpath, paths.output_dir) or free disk space"
            ) from err


def check_writable(folder: str | Path, setting: str) -> None:
    """Create ``folder`` and write a probe file in it, so that an unwritable checkpoint folder stops a run at its
    start rather than at its first checkpoint."""
    folder = Path(folder)
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise FileAccessError(
            f"{setting}={folder}: checkpoints cannot be written there ({err.strerror or err})"
        ) from err
