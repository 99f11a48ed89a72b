"""OmegaConf resolvers used by the configs (import before composing them), and the composed config for code that
builds a module outside ``train.py`` (tests, benchmarks)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kava.paths import CONF_DIR  # noqa: F401  (re-exported: kava.config.CONF_DIR is where callers look)


def wandb_offline() -> bool:
    """Log to W&B online only when an API key (env or ~/.netrc login) exists and WANDB_MODE allows it."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path.home() / ".netrc"
    return not (netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"))


_SWEEP_FUNCS = ("range(", "choice(", "interval(", "glob(", "tag(")


def swept_keys(argv: list[str]) -> set[str]:
    """Keys that a command line sweeps (``key=a,b`` or ``key=range(...)``/``choice(...)``...)."""
    keys = set()
    for arg in argv:
        if "=" in arg and not arg.startswith("-"):
            key, value = arg.split("=", 1)
            if "," in value.replace("\\,", "") or value.startswith(_SWEEP_FUNCS):
                keys.add(key.lstrip("+~"))
    return keys


SWEPT_KEYS_ENV = "KAVA_SWEPT_KEYS"  # set by kava.sweep.SweepSummary when a multirun starts; inherited by its jobs


def run_name(override_dirname: str, job_num: int | str = 0, max_len: int = 120) -> str:
    """Directory name of one sweep job: its number and the ``override_dirname`` pairs that the sweep varies.

    A job's own config cannot tell a swept key from a fixed one, so the keys come from the multirun's overrides,
    which :class:`kava.sweep.SweepSummary` records when the sweep starts; without them the name is the number.
    """
    keys = {k for k in os.environ.get(SWEPT_KEYS_ENV, "").split(",") if k}
    pairs = [p for p in override_dirname.split(",") if p.split("=", 1)[0] in keys] if keys else []
    name = f"{job_num}_" + ",".join(pairs) if pairs else str(job_num)
    return name.replace("/", "_")[:max_len]


def if_positive(value: Any, then: Any, otherwise: Any) -> Any:
    """``then`` when ``value`` > 0, else ``otherwise`` (e.g. checkpoint on val/acc only while it is computed)."""
    return then if int(value) > 0 else otherwise


def wandb_group(method: str | None, model: str | None, data: str | None) -> str | None:
    """``<method.name>-<model>-<data>`` for a training run; None where the config has no method (eval.py)."""
    return None if method is None else f"{method}-{model}-{data}"


def wandb_tags(method: str | None, model: str | None, data: str | None, kv_steps: Any, kv_slots: Any) -> list[str]:
    """The method's name, model, data, kv_steps and kv_slots of a training run as W&B tags; none for eval.py."""
    if method is None:
        return []
    return [str(method), str(model), str(data), f"kv_steps={kv_steps}", f"kv_slots={kv_slots}"]


def register_resolvers() -> None:
    from kava.recipes import no_table6_row
    from kava.schema import register as register_schema

    if not OmegaConf.has_resolver("kava_wandb_offline"):
        OmegaConf.register_new_resolver("kava_wandb_offline", wandb_offline)
    if not OmegaConf.has_resolver("kava_wandb_group"):
        OmegaConf.register_new_resolver("kava_wandb_group", wandb_group)
        OmegaConf.register_new_resolver("kava_wandb_tags", wandb_tags)
    if not OmegaConf.has_resolver("kava_run_name"):
        OmegaConf.register_new_resolver("kava_run_name", run_name)
    register_schema()
    if not OmegaConf.has_resolver("kava_if_positive"):
        OmegaConf.register_new_resolver("kava_if_positive", if_positive)
    if not OmegaConf.has_resolver("kava_no_table6_row"):
        OmegaConf.register_new_resolver("kava_no_table6_row", no_table6_row)


MODULE_SECTIONS = ("model", "latent", "teacher", "loss", "optim", "data", "val_acc", "method")


def compose_train(overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/train.yaml`` composed as ``train.py`` would with these overrides (outside a running Hydra app)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def module_sections(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The config sections ``KAVALitModule`` takes, from the composed config, as plain containers: a module built
    from them is the one ``train.py`` builds with the same overrides."""
    cfg = compose_train(overrides)
    return {k: OmegaConf.to_container(cfg[k], resolve=True) for k in MODULE_SECTIONS}


register_resolvers()
