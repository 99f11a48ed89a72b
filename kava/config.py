"""OmegaConf resolvers used by the configs; import before composing them."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def wandb_offline() -> bool:
    """Log to W&B online only when an API key (env or ~/.netrc login) exists and WANDB_MODE allows it."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path.home() / ".netrc"
    return not (netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"))


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("kava_wandb_offline"):
        OmegaConf.register_new_resolver("kava_wandb_offline", wandb_offline)


register_resolvers()
