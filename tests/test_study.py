"""The study's variants are what their labels say (DESIGN 4: PCCoT = Jacobi + CODI loss, CODI = sequential latents
+ CODI loss, pause = latents fixed at the placeholder)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("kava_study", ROOT / "bench" / "study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def settings(study, name):
    cfg = study.compose_cfg(study.VARIANTS[name][0], ["model.name_or_path=x", "paths.output_dir=/tmp/x"])
    OmegaConf.resolve(cfg)
    return cfg


def test_variants_match_their_labels(study, tmp_path):
    cfgs = {name: settings(study, name) for name in study.VARIANTS}
    m = cfgs["kava_dense"].latent.num_tokens
    for name, cfg in cfgs.items():
        assert cfg.trainer.max_steps == cfgs["kava_dense"].trainer.max_steps, f"{name}: equal steps for every variant"
        assert cfg.latent.num_tokens == m
    dense, every, last = cfgs["kava_dense"].loss, cfgs["kava_dense_all"].loss, cfgs["kava_last"].loss
    assert dense.kv_steps == "all" and last.kv_steps == "last" and dense.alpha1 == 0 and dense.alpha2 > 0
    assert dense.kv_slots == "progressive" and every.kv_slots == "all" and every.kv_steps == "all"
    assert {k: v for k, v in every.items() if k != "kv_slots"} == {k: v for k, v in dense.items() if k != "kv_slots"}
    pccot, codi = cfgs["pccot"], cfgs["codi"]
    target = {name: cfg.method._target_.rsplit(".", 1)[1] for name, cfg in cfgs.items()}
    assert target == {"kava_dense": "KaVa", "kava_dense_all": "KaVa", "kava_last": "KaVa", "pccot": "PCCoT",
                      "codi": "CODI", "nodistill": "KaVa", "pause": "Pause", "nocot": "CoT"}  # fmt: skip
    assert pccot.loss.alpha1 == codi.loss.alpha1 == 10 and 0 < pccot.latent.num_iterations < m
    assert cfgs["nodistill"].loss.alpha1 == 0 and cfgs["nodistill"].loss.alpha2 == 0
    nocot = cfgs["nocot"]
    assert nocot.method._target_ == "kava.methods.cot.CoT" and nocot.data.drop_cot
    assert "PCCoT" in study.VARIANTS["pccot"][1] and "sequential" in study.VARIANTS["codi"][1]
    three = {v for v, (_, _, n) in study.VARIANTS.items() if n >= 3}
    assert three == {"kava_dense", "kava_dense_all", "kava_last", "nocot", "pause", "nodistill"}


def test_study_keeps_the_hand_written_log(study, tmp_path):
    path = tmp_path / "study.md"
    path.write_text(f"# log\n\n{study.BEGIN}\nold table\n{study.END}\n\n## experiments\nkept\n")
    study.write_section(path, "new table\n")
    text = path.read_text()
    assert "new table" in text and "old table" not in text and "## experiments\nkept" in text
