"""The study's variants are what their labels say (docs/design.md §2.5: PCCoT = Jacobi + CODI loss, CODI = sequential
latents + CODI loss, pause = latents fixed at the placeholder)."""

from __future__ import annotations

import importlib.util
import math
import statistics
import sys
from pathlib import Path

import pytest
from helpers import load_script
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def study():
    return load_script("kava_study", ROOT / "bench" / "study.py")


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


@pytest.fixture(scope="module")
def task_study(study):
    spec = importlib.util.spec_from_file_location("kava_task_study", ROOT / "bench" / "task_study.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kava_task_study"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_task_study_pairs_each_variant_with_kava_dense_of_the_same_backbone_and_seed(task_study):
    teachers = {0: {"accuracy": 0.98}, 1: {"accuracy": 0.95}}
    seeds = {"kava_dense": [0, 1, 2], "nocot": [0, 1, 2], "pause": [0, 1]}
    acc = {  # (variant, backbone) -> accuracy per seed
        ("kava_dense", 0): [0.9, 0.8, 0.7], ("kava_dense", 1): [0.6, 0.5, 0.4],
        ("nocot", 0): [0.1, 0.2, 0.1], ("nocot", 1): [0.1, 0.1, 0.1],
        ("pause", 0): [0.3, 0.2], ("pause", 1): [0.2, 0.2],
    }  # fmt: skip
    runs = {}
    for (v, b), xs in acc.items():
        for s, x in zip(seeds[v], xs, strict=True):
            dec = "teacher" if v == "nocot" else "student"
            runs[(v, b, s)] = {"teacher": {"accuracy": 0.9}, dec: {"accuracy": x}}  # no-CoT's answer: "teacher"
            if v == "kava_dense":
                runs[(v, b, s)]["student_placeholder"] = {"accuracy": 0.05}
    vals = {k: 50.0 for k in runs}
    text = task_study.table("modsum", runs, vals, teachers, seeds, {"x": 60.0}, None)
    d = [x - y for x, y in zip([90, 80, 70, 60, 50, 40], [10, 20, 10, 10, 10, 10], strict=True)]
    se = statistics.stdev(d) / math.sqrt(6)
    row = next(line for line in text.splitlines() if line.startswith("| no-CoT") and "±" in line and "**" in line)
    assert f"**{statistics.mean(d):+.1f} ± {se:.1f}**" in row and "6/6" in row
    pause = next(line for line in text.splitlines() if line.startswith("| pause") and "**" in line)
    # pause has seeds 0-1 only: paired with KAVA dense seeds 0-1 of each backbone
    d = [90 - 30, 80 - 20, 60 - 20, 50 - 20]
    assert f"**{statistics.mean(d):+.1f} ± {statistics.stdev(d) / 2:.1f}**" in pause and "4/4" in pause
    assert "| CoT teacher (pretrained backbone) | 98.0 |  | 95.0 |" in text
    # a variant run on backbone 0 only: a dash for backbone 1, and its pairs are backbone 0's
    seeds["pccot"] = [0, 1]
    t = {"teacher": {"accuracy": 0.9}}
    runs.update(
        {("pccot", 0, 0): {"student": {"accuracy": 0.5}, **t}, ("pccot", 0, 1): {"student": {"accuracy": 0.3}, **t}}
    )
    text = task_study.table("modsum", runs, vals, teachers, seeds, {"x": 60.0}, None)
    row = next(line for line in text.splitlines() if line.startswith("| PCCoT") and "**" in line)
    d = [90 - 50, 80 - 30]
    assert row.split(" | ")[2] == "–" and f"**{statistics.mean(d):+.1f} ± {statistics.stdev(d) / 2**0.5:.1f}**" in row
    mean, se, wins = task_study.paired([3.0, 1.0], [1.0, 2.0])
    assert (mean, wins) == (0.5, 1) and se == pytest.approx(statistics.stdev([2.0, -1.0]) / math.sqrt(2))


@pytest.mark.slow
def test_the_gpu_study_pipeline_runs_on_the_cpu_at_a_tiny_size(tmp_path):
    """bench/gpu_study.sh --plan gpu_tiny: the GPU plan's every stage (two-backbone machinery, paired
    runs, evaluation, the table) on the CPU, a few steps each."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "offline", "PYTHON": sys.executable}  # fmt: skip
    cmd = ["bash", "bench/gpu_study.sh", "--plan", "gpu_tiny", "--work", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "study_modsum_gpu_tiny.md").read_text()
    assert "--plan gpu_tiny" in text and "| KAVA dense minus |" in text and "no-CoT" in text
    assert "hidden 32" in text  # the plan's backbone, not the task's default
    # --finished-only tabulates the runs with test results and trains none: without no-CoT's results, its row goes
    (tmp_path / "backbone0" / "nocot_seed0" / "eval" / "results.json").unlink()
    cmd = [sys.executable, "bench/study.py", "--task", "modsum", "--plan", "gpu_tiny", "--work", str(tmp_path),
           "--finished-only"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "study_modsum_gpu_tiny.md").read_text()
    assert "| KAVA dense (" in text and "| no-CoT (" not in text
    assert not (tmp_path / "backbone0" / "nocot_seed0" / "eval" / "results.json").exists()
