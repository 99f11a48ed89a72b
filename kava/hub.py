"""Hugging Face Hub access that fails fast, and names the setting to change, when the Hub is unreachable."""

from __future__ import annotations

from kava.errors import MissingFileError, UserError
from kava.preflight import cached_dataset_snapshot, hub_reachable


def hub_offline() -> bool:
    """True when offline mode is set, or the Hub endpoint cannot be reached within two seconds."""
    return not hub_reachable()  # which is False at once when offline mode is set (offline_mode_set)


class HubUnavailableError(UserError, OSError):
    """A hub resource is neither reachable nor cached; the message names the setting to point at local files."""


def load_hub_dataset(name: str, split: str, setting: str, config: str | None = None):
    """``datasets.load_dataset(name, config, split=split)`` from the Hub or its cache, failing fast offline."""
    import datasets

    offline = hub_offline()
    try:
        if offline:  # the cached snapshot, read as a local folder: no 20-50 s of retries, no global switch
            from huggingface_hub import constants

            local = cached_dataset_snapshot(name, constants.HF_HUB_CACHE)
            if local is None:
                raise MissingFileError(f"no snapshot of {name} in the Hub cache {constants.HF_HUB_CACHE}")
            return datasets.load_dataset(str(local), config, split=split)
        return datasets.load_dataset(name, config, split=split)
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as err:
        where = "the Hub is unreachable (or HF_HUB_OFFLINE=1) and it is not cached" if offline else str(err)
        raise HubUnavailableError(
            f"could not load the data set '{name}'"
            + (f" ({config})" if config else "")
            + f", split '{split}': {where}. Point `{setting}` at a local JSON/JSONL/Parquet copy instead."
        ) from err
