"""kava.preflight: the one test of offline mode, shared by Hub access, model loading and export."""

from __future__ import annotations

import pytest

from kava.export import offline_refusal
from kava.hub import hub_offline
from kava.model.backbone import _offline_hint
from kava.preflight import hub_reachable, offline_mode_set


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_every_user_of_offline_mode_reads_the_same_values(monkeypatch, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert offline_mode_set() and hub_offline() and not hub_reachable()
    assert offline_refusal("me/x") is not None
    assert "HF_HUB_OFFLINE is set" in str(_offline_hint("model.name_or_path", "me/m", OSError("x")))


@pytest.mark.parametrize("value", ["", "0", "false", "no"])
def test_offline_mode_unset(monkeypatch, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    assert not offline_mode_set() and not offline_mode_set(datasets=True)
    assert offline_refusal("me/x") is None
    assert "HF_HUB_OFFLINE is set" not in str(_offline_hint("model.name_or_path", "me/m", OSError("x")))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # data sets only: the Hub is still allowed for models
    assert offline_mode_set(datasets=True) and not offline_mode_set() and not hub_reachable()
