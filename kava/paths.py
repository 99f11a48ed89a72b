"""Where the package's own files are."""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the Hydra config tree (conf/train.yaml, groups)
