"""loss=table6 composes the paper's rows (reference values written out here independently), densely supervised."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from kava.config import CONF_DIR

# model, data, lr, alpha1, alpha2, kv loss, layer-wise std, projection, lambda, epochs, weight decay
ROWS = [
    ("llama1b", "gsm8k_aug", 8e-4, 10, 1, "smooth_l1", True, True, 0.1, 10, 0.1),
    ("llama1b", "gsm8k_aug_nl", 8e-4, 10, 1, "mse", True, True, 0.1, 10, 0.1),
    ("qwen05b", "gsm8k_aug", 5e-4, 10, 1, "mse", False, True, 0.1, 10, 0.01),
    ("qwen05b", "gsm8k_aug_nl", 8e-4, 10, 1, "mse", True, True, 0.1, 10, 0.1),
    ("llama3b", "gsm8k_aug", 2e-4, 20, 2, "smooth_l1", False, True, 0.1, 5, 0.1),
    ("llama3b", "gsm8k_aug_nl", 2e-4, 20, 2, "smooth_l1", False, False, 0.0, 5, 0.1),
]
HUB = {"llama1b": "meta-llama/Llama-3.2-1B-Instruct", "qwen05b": "Qwen/Qwen2.5-0.5B-Instruct",
       "llama3b": "meta-llama/Llama-3.2-3B-Instruct"}  # fmt: skip


def compose_train(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "paths.output_dir=/tmp/kava-test"])
    OmegaConf.resolve(cfg)
    return cfg


@pytest.mark.parametrize("row", ROWS, ids=[f"{r[0]}-{r[1]}" for r in ROWS])
def test_table6_rows(row):
    model, data, lr, a1, a2, kv, std, proj, lam, epochs, wd = row
    overrides = [f"model={model}", "loss=table6"] + ([] if data == "gsm8k_aug" else [f"data={data}"])
    cfg = compose_train(overrides)
    assert cfg.model.name_or_path == HUB[model] and cfg.data.name == data
    assert (cfg.optim.lr, cfg.loss.alpha1, cfg.loss.alpha2, cfg.loss.kv_loss) == (lr, a1, a2, kv)
    assert (cfg.loss.layerwise_std, cfg.latent.use_projection, cfg.loss.rkv_lambda) == (std, proj, lam)
    assert (cfg.trainer.max_epochs, cfg.trainer.max_steps, cfg.optim.weight_decay) == (epochs, -1, wd)
    # settings common to every row
    assert cfg.data.global_batch_size == 128 and cfg.trainer.gradient_clip_val == 2.0
    assert (cfg.model.lora.r, cfg.model.lora.alpha, cfg.model.lora.dropout) == (128, 32, 0.1)
    assert (cfg.latent.num_tokens, cfg.latent.num_iterations) == (24, 3)
    assert cfg.loss.kv_steps == "all"  # dense supervision; loss.kv_steps=last is the paper's exact recipe
    assert cfg.loss.kv_slots == "progressive"  # the dense schedule that keeps the Jacobi passes distinct
    assert compose_train([*overrides, "loss.kv_steps=last"]).loss.kv_steps == "last"


def test_llama3b_table6_as_typed_by_users():
    cfg = compose_train(["model=llama3b", "loss=table6"])
    assert cfg.loss.alpha1 == 20 and cfg.loss.alpha2 == 2 and cfg.loss.kv_loss == "smooth_l1"
    assert cfg.loss.layerwise_std is False and cfg.loss.rkv_lambda == 0.1 and cfg.optim.lr == 2e-4
    assert cfg.trainer.max_epochs == 5 and cfg.optim.weight_decay == 0.1 and cfg.loss.kv_steps == "all"
    assert cfg.trainer.accelerator == "gpu" and cfg.model.dtype == "bfloat16" and cfg.data.hub_id == "whynlp/gsm8k-aug"


def test_a_pair_without_a_row_lists_the_rows():
    with pytest.raises(InterpolationResolutionError, match="no row for model=tiny data=synthetic") as err:
        compose_train(["loss=table6"])
    assert "model=llama3b data=gsm8k_aug_nl" in str(err.value) and str(err.value).count("model=") == 1 + len(ROWS)


def test_loss_kava_takes_no_table6_row():
    cfg = compose_train(["model=llama3b"])
    assert cfg.loss.alpha1 == 10.0 and cfg.optim.lr == 3e-3 and cfg.latent.num_tokens == 12


def test_real_models_default_to_gsm8k_aug_unless_data_is_set():
    assert compose_train(["model=qwen05b"]).data.name == "gsm8k_aug"
    assert compose_train(["model=qwen05b", "data=synthetic", "trainer=cpu"]).data.name == "synthetic"
    assert compose_train([]).data.name == "synthetic"


def test_optuna_search_and_slurm_launcher_configs_compose():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna", "paths.output_dir=/tmp/x"], return_hydra_config=True)
        assert cfg.hydra.sweeper.direction == "maximize" and "loss.alpha1" in cfg.hydra.sweeper.params
        assert cfg.optimized_metric == "val/acc"  # what the sweeper maximises, visible with --cfg job
        cfg = compose("train", overrides=["hydra/launcher=slurm", "paths.output_dir=/tmp/x"], return_hydra_config=True)
        assert cfg.hydra.launcher.gpus_per_node == 1 and "submitit" in cfg.hydra.launcher._target_


def test_the_embedded_default_has_its_own_recipe_and_nothing_else_does():
    """`python train.py` (loss=kava, model=tiny, data=synthetic) fully fine-tunes without the CODI term on two-step
    problems (conf/recipe/kava/tiny_synthetic.yaml); a command-line value, another model or data, and the study's
    experiments keep their own."""
    cfg = compose_train([])
    assert (cfg.model.lora.r, cfg.loss.alpha1, cfg.trainer.max_steps) == (0, 0.0, 500)
    assert (cfg.data.synthetic.num_steps, cfg.data.synthetic.operand_max) == (2, 9)
    assert compose_train(["model.lora.r=16", "loss.alpha1=10"]).model.lora.r == 16
    assert compose_train(["data=local", "data.path=x"]).model.lora.r == 16  # only the synthetic data's default
    assert compose_train(["model=qwen05b"]).loss.alpha1 == 10.0
    study = compose_train(["experiment=study_kava_dense"])
    assert (study.model.lora.r, study.data.synthetic.num_steps, study.trainer.max_steps) == (32, 3, 1000)
