"""Hugging Face Hub access that fails fast, and names the setting to change, when the Hub is unreachable."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kava.preflight import hub_reachable


def hub_offline() -> bool:
    """True when offline mode is set, or the Hub endpoint cannot be reached within two seconds."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or not hub_reachable()


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
