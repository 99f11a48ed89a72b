"""Hugging Face Hub access that fails fast, and names the setting to change, when the Hub is unreachable."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

_PROBE_TIMEOUT_S = 2.0


def hub_offline() -> bool:
    """True when offline mode is set, or the Hub endpoint cannot be reached within two seconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=_PROBE_TIMEOUT_S):
            return False
    except OSError:
        return True


@contextlib.contextmanager
def local_files_only_if_offline() -> Iterator[bool]:
    """Within the block, hub libraries use only their local caches when the Hub is unreachable.

    Without this, ``load_dataset`` and ``from_pretrained`` retry for 20-50 s before failing.
    """
    offline = hub_offline()
    if not offline:
        yield False
        return
    import datasets.config
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


class HubUnavailableError(OSError):
    """A hub resource is neither reachable nor cached; the message names the setting to point at local files."""


def load_hub_dataset(name: str, split: str, setting: str, config: str | None = None):
    """``datasets.load_dataset(name, config, split=split)`` from the Hub or its cache, failing fast offline."""
    import datasets

    with local_files_only_if_offline() as offline:
        try:
            return datasets.load_dataset(name, config, split=split)
        except (ConnectionError, FileNotFoundError, OSError, ValueError) as err:
            where = "the Hub is unreachable (or HF_HUB_OFFLINE=1) and it is not cached" if offline else str(err)
            raise HubUnavailableError(
                f"could not load the data set '{name}'"
                + (f" ({config})" if config else "")
                + f", split '{split}': {where}. Point `{setting}` at a local JSON/JSONL/Parquet copy instead."
            ) from err
