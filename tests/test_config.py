"""The configs compose with the key names of docs/design.md §4 and defaults of the issue."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from kava.config import CONF_DIR


def compose_train(overrides=()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_defaults():
    cfg = compose_train(["paths.output_dir=/tmp/x"])
    assert cfg.model.name == "tiny" and cfg.model.name_or_path is None
    assert cfg.data.source == "synthetic" and cfg.loss.kv_steps == "all"
    assert cfg.trainer.accelerator == "cpu" and "csv" in cfg.logger
    assert cfg.teacher.mode == "shared"
    assert cfg.data.num_latents == cfg.latent.num_tokens
    for key in ("alpha1", "alpha2", "kv_steps", "kv_loss", "layerwise_std", "rkv_lambda", "teacher_ce_weight"):
        assert key in cfg.loss
    for key in ("path", "drop_last_step", "max_length", "global_batch_size", "micro_batch_size", "on_bad_row"):
        assert key in cfg.data
    for key in ("num_tokens", "num_iterations", "use_projection", "proj_dim"):
        assert key in cfg.latent
    for key in ("r", "alpha", "dropout", "target_modules"):
        assert key in cfg.model.lora


def test_overrides_and_lists():
    cfg = compose_train(["loss.kv_steps=[0.2,0.3,0.5]", "latent.num_tokens=24", "data=local", "data.path=x.jsonl"])
    assert list(cfg.loss.kv_steps) == [0.2, 0.3, 0.5]
    assert cfg.data.num_latents == 24 and cfg.data.source == "local"


def test_unknown_group_option_lists_choices():
    with pytest.raises(ConfigCompositionException, match="tiny"):
        compose_train(["model=nope"])


def test_run_folders_are_unique_per_run():
    """Two runs started in the same second (e.g. two seeds) get different folders: microseconds and the seed."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["seed=7"], return_hydra_config=True)
    run_dir = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    assert "%f}" in run_dir and run_dir.endswith("_seed${seed}")
    assert "%f}" in OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["dir"]


def test_sweep_job_folders_name_only_the_swept_overrides(monkeypatch):
    """The keys come from the multirun's overrides (recorded at its start), not from the job's own config."""
    from kava.config import SWEPT_KEYS_ENV, run_name, swept_keys

    assert swept_keys(["loss.alpha1=5,10", "seed=1", "+x=choice(1,2)", "p=a\\,b"]) == {"loss.alpha1", "x"}
    dirname = "loss.alpha1=5,model.name_or_path=/m/b,seed=1"
    monkeypatch.delenv(SWEPT_KEYS_ENV, raising=False)
    assert run_name(dirname, 3) == "3"
    monkeypatch.setenv(SWEPT_KEYS_ENV, "loss.alpha1,model.name_or_path")
    assert run_name(dirname, 3) == "3_loss.alpha1=5,model.name_or_path=_m_b"  # one folder: no "/" in the name
    assert len(run_name("loss.alpha1=" + "9" * 300, 3)) == 120
