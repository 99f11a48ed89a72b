"""Checks that run before the heavy imports, so a run that cannot reach its data stops within seconds.

Only the standard library is used here: importing torch, Lightning and transformers alone takes ~10 s.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kava.errors import UserError

_TRUE = {"1", "true", "yes", "on"}
EXPORT_CONFIG = "kava_config.json"  # marks a folder written by kava.checkpoint.export_pretrained


def offline_mode_set(datasets: bool = False) -> bool:
    """Whether the user asked for offline mode: ``HF_HUB_OFFLINE`` (and, for data sets, ``HF_DATASETS_OFFLINE``) set
    to 1/true/yes/on, read when called. The one test of it: hub access, model loading and export all use this."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if datasets else ("HF_HUB_OFFLINE",)
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in names)


def hub_reachable(timeout: float = 2.0) -> bool:
    """False when an offline variable is set or the Hub endpoint does not answer within ``timeout`` s."""
    if offline_mode_set(datasets=True):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hf_home() -> Path:
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))


def _hub_cache() -> Path:
    return Path(os.environ.get("HF_HUB_CACHE", _hf_home() / "hub"))


def cached_dataset_snapshot(hub_id: str, hub_cache: str | Path | None = None) -> Path | None:
    """The folder of the cached Hub snapshot of data set ``hub_id`` (the revision ``main`` points to, else the
    newest one: ``datasets`` downloads by commit hash and may leave no ``refs/main``), or None."""
    repo = Path(hub_cache or _hub_cache()) / f"datasets--{hub_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    if ref.is_file() and (repo / "snapshots" / ref.read_text().strip()).is_dir():
        return repo / "snapshots" / ref.read_text().strip()
    snaps = sorted((d for d in (repo / "snapshots").glob("*") if d.is_dir()), key=lambda d: d.stat().st_mtime)
    return snaps[-1] if snaps else None


def dataset_cached(hub_id: str) -> bool:
    """Whether the Hub cache holds a snapshot of ``hub_id`` (what an offline run loads, see kava.hub)."""
    return cached_dataset_snapshot(hub_id) is not None


def model_cached(hub_id: str) -> bool:
    return (_hub_cache() / f"models--{hub_id.replace('/', '--')}").exists()


class PreflightError(UserError, RuntimeError):
    """A run cannot start; the message names the setting to change."""


def _is_local(name: str) -> bool:
    return Path(name).expanduser().exists()


def check_hub_dataset(hub_id: str, setting: str) -> None:
    if not dataset_cached(hub_id) and not hub_reachable():
        raise PreflightError(
            f"the data set '{hub_id}' is not cached and the Hugging Face Hub cannot be reached (offline, or "
            f"HF_HUB_OFFLINE=1). Point `{setting}` at a local JSON/JSONL/Parquet copy (a file or a directory "
            "with train/validation/test files), or run once with network access to cache it."
        )


def check_hub_model(name: str, setting: str) -> None:
    if not _is_local(name) and not model_cached(name) and not hub_reachable():
        raise PreflightError(
            f"the model '{name}' is neither a local directory nor cached, and the Hugging Face Hub cannot be "
            f"reached. Download it once and pass `{setting}=<local directory>`."
        )


def check_train(cfg: Mapping[str, Any]) -> None:
    """Fail fast on hub data or models that cannot be had offline."""
    data = cfg["data"]
    if data.get("source") == "hub" and not data.get("path"):
        check_hub_dataset(str(data["hub_id"]), "data.path")
    model = cfg["model"]
    if model.get("name_or_path"):
        check_hub_model(str(model["name_or_path"]), "model.name_or_path")


def check_checkpoint(path: Any, setting: str = "ckpt_path") -> None:
    """A checkpoint that is missing, empty or not a ``torch.save`` archive stops here, naming the setting."""
    import zipfile

    if not path:
        raise PreflightError(f"{setting} is not set: give a Lightning checkpoint (.ckpt) or an export folder")
    p = Path(str(path))
    if p.is_dir():
        if not (p / EXPORT_CONFIG).exists():
            raise PreflightError(f"{setting}={p}: a folder, but not one written by kava's export (no {EXPORT_CONFIG})")
        return
    if not p.exists():
        raise PreflightError(f"{setting}={p}: no such file")
    if p.stat().st_size == 0:
        raise PreflightError(f"{setting}={p}: the file is empty (0 bytes); a write was probably interrupted")
    if not zipfile.is_zipfile(p):
        raise PreflightError(f"{setting}={p}: not a checkpoint written by torch.save (not a zip archive)")


def check_eval_sets(names: list[str], paths: Mapping[str, Any], hub_ids: Mapping[str, str]) -> None:
    own = ("synthetic", "local")  # the run's own held-out split
    unknown = [n for n in names if n not in own and n not in hub_ids]
    if unknown:
        raise PreflightError(f"eval_sets: unknown set(s) {unknown}; choose from {', '.join([*own, *hub_ids])}")
    for name in names:
        if name in hub_ids and not (paths or {}).get(name):
            check_hub_dataset(hub_ids[name], f"eval.paths.{name}")


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use, without importing torch: the driver's device files, narrowed by
    ``CUDA_VISIBLE_DEVICES`` when it is set."""
    import re

    found = [p for p in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name)]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return len(found)
    return min(len(found), len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"]))


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_machine(cfg: Mapping[str, Any]) -> None:
    """The trainer's devices and strategy against this machine: a GPU setting without a GPU, more CPU processes than
    cores, more GPUs than visible, or a global batch that the device count does not divide."""
    trainer, data = cfg["trainer"], cfg["data"]
    accelerator, devices = str(trainer.get("accelerator") or "auto"), trainer.get("devices")
    nodes = int(trainer.get("num_nodes") or 1)
    gpus = visible_gpus()
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus > 0)
    target = str((cfg.get("strategy") or {}).get("_target_") or "")
    sharded = next((name for name in ("fsdp", "deepspeed") if name in target.lower()), None)
    if sharded and not on_gpu:
        raise PreflightError(
            f"strategy={sharded} needs a GPU and this machine has none visible (trainer.accelerator={accelerator}): "
            "drop strategy= (or use strategy=ddp_cpu for several CPU processes)"
        )
    if accelerator in ("gpu", "cuda") and gpus == 0:
        raise PreflightError(
            f"trainer.accelerator={accelerator} but no NVIDIA GPU is visible here: use trainer=cpu (the default)"
        )
    if isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()):
        n = int(devices)
        per_step = int(data["micro_batch_size"]) * n * nodes
        if int(data["global_batch_size"]) % per_step:
            raise PreflightError(
                f"data.global_batch_size={data['global_batch_size']} is not a multiple of data.micro_batch_size="
                f"{data['micro_batch_size']} x trainer.devices={n} x trainer.num_nodes={nodes} = {per_step}: "
                "change one of them"
            )
        if on_gpu and n > gpus:
            raise PreflightError(f"trainer.devices={n}: this machine has {gpus} visible GPU(s); lower trainer.devices")
        if not on_gpu and n > cpu_cores():
            raise PreflightError(
                f"trainer.devices={n} CPU processes on a {cpu_cores()}-core machine: each process needs a core; "
                f"lower trainer.devices to at most {cpu_cores()}"
            )
