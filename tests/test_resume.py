"""Preemption and resume: a signal ends a run at an optimizer step with a checkpoint; resuming restores the run's own
configuration (every method), records its own overrides beside the original record, and refuses another model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from kava import cli
from kava.config import CONF_DIR
from kava.errors import ResumeError

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
TINY = ["data.synthetic.num_train=600", "data.synthetic.num_val=8", "data.synthetic.num_test=8",
        "data.micro_batch_size=8", "data.global_batch_size=8", "model.tiny.hidden_size=64",
        "model.tiny.intermediate_size=128", "model.tiny.num_layers=2", "model.tiny.vocab_size=300",
        "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "val_acc.num_batches=0",
        "callbacks.progress_bar=null", "callbacks.model_summary=null"]  # fmt: skip


def compose_args(args: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[a for a in args if not a.startswith("hydra.")])


def fake_run(tmp_path: Path, overrides: list[str]) -> str:
    """A run folder as Hydra leaves it (its record) with a checkpoint path inside; nothing is trained."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    OmegaConf.save(OmegaConf.create(overrides), run / ".hydra" / "overrides.yaml")
    OmegaConf.save(compose_args(overrides), run / ".hydra" / "config.yaml")
    return str(run / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("method", METHODS)
def test_a_resume_with_ckpt_path_only_keeps_the_runs_method_and_limits(tmp_path, method):
    ckpt = fake_run(tmp_path, [f"method={method}", "trainer.max_steps=400", "latent.num_tokens=5", "seed=3"])
    argv = cli.resume_argv([f"ckpt_path={ckpt}"], ckpt)
    cfg = compose_args(argv)
    want = compose_args([f"method={method}"])
    assert cfg.method._target_ == want.method._target_ and cfg.data.drop_cot == want.data.drop_cot
    assert (cfg.trainer.max_steps, cfg.latent.num_tokens, cfg.seed) == (400, 5, 3)
    assert cfg.ckpt_path == ckpt
    assert f"hydra.run.dir={Path(ckpt).parent.parent}" in argv
    assert any(a.startswith("hydra.output_subdir=.hydra/resume-") for a in argv)  # the original record is kept
    cli.check_resume(ckpt, cfg)  # compatible
    # an override on top applies (a longer schedule), and is compatible
    longer = compose_args(cli.resume_argv([f"ckpt_path={ckpt}", "trainer.max_steps=800"], ckpt))
    assert longer.trainer.max_steps == 800 and longer.method._target_ == want.method._target_
    cli.check_resume(ckpt, longer)
    other = "pccot" if method != "pccot" else "kava"
    for change, key in ((f"method={other}", "method._target_"), ("latent.num_tokens=7", "latent.num_tokens"),
                        ("model.lora.r=8", "model.lora.r")):  # fmt: skip
        bad = compose_args(cli.resume_argv([f"ckpt_path={ckpt}", change], ckpt))
        with pytest.raises(ResumeError, match=f"the run was trained with {key}="):
            cli.check_resume(ckpt, bad)


def test_a_second_resume_starts_from_the_first_resumes_record(tmp_path):
    ckpt = fake_run(tmp_path, ["method=pccot", "trainer.max_steps=400"])
    run = Path(ckpt).parent.parent
    first = cli.resume_argv([f"ckpt_path={ckpt}", "trainer.max_steps=800"], ckpt)
    record = (
        run / ".hydra" / next(a.split("=", 1)[1] for a in first if a.startswith("hydra.output_subdir")).split("/", 1)[1]
    )
    record.mkdir()
    OmegaConf.save(OmegaConf.create([a for a in first if not a.startswith("hydra.")]), record / "overrides.yaml")
    cfg = compose_args(cli.resume_argv([f"ckpt_path={ckpt}"], ckpt))
    assert cfg.trainer.max_steps == 800 and cfg.method._target_.endswith("PCCoT")


def test_merge_overrides_by_key():
    merged = cli.merge_overrides(["method=pccot", "+foo.bar=1", "trainer.max_steps=4", "ckpt_path=a"],
                                 ["trainer.max_steps=8", "ckpt_path=b", "foo.bar=2"])  # fmt: skip
    assert merged == ["method=pccot", "trainer.max_steps=8", "ckpt_path=b", "foo.bar=2"]


def test_the_module_refuses_a_checkpoint_of_another_model_without_a_run_record():
    old = {"method": {"_target_": "kava.methods.kava.KaVa"}, "latent": {"num_tokens": 4}, "model": {"lora": {"r": 8}}}
    new = {"method": {"_target_": "kava.methods.kava.KaVa"}, "latent": {"num_tokens": 6}, "model": {"lora": {"r": 8}}}
    assert cli.incompatible(old, old) is None
    assert "latent.num_tokens=4 and this command has latent.num_tokens=6" in cli.incompatible(old, new)


def _steps(run: Path) -> int:
    rows = list(run.glob("csv/version_*/metrics.csv"))
    return sum(1 for line in rows[0].read_text().splitlines() if line) - 1 if rows else 0


def _metrics(run: Path) -> dict[str, float]:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    args = ["method=pccot", "trainer.max_steps=24", "trainer.val_check_interval=12", *TINY, f"hydra.run.dir={out}"]
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return args, out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_exits_non_zero_and_the_resume_equals_an_uninterrupted_run(
    tmp_path, uninterrupted, sig
):
    from kava.checkpoint import load_module

    args, full = uninterrupted
    out = tmp_path / "run"
    args = [a if not a.startswith("hydra.run.dir=") else f"hydra.run.dir={out}" for a in args]
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while _steps(out) < 6 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err[-3000:]
    line = err.strip().splitlines()[-1]
    ckpt = out / "checkpoints" / "last.ckpt"
    assert line.startswith(f"train.py: {signal.Signals(sig).name} at step ") and f"ckpt_path={ckpt}" in line, err
    step = int(line.split(" at step ")[1].split(":")[0])
    assert 1 <= step < 24  # mid-run
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == step
    load_module(ckpt)  # loadable
    assert json.loads((out / cli.INTERRUPTED_FILE).read_text())["step"] == step
    assert "train/loss" in _metrics(out)  # the metrics so far are written
    # resume with the checkpoint alone: the run's own method and limits, in its own folder
    proc = subprocess.run([sys.executable, "train.py", f"ckpt_path={ckpt}"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / cli.INTERRUPTED_FILE).exists()
    a, b = _metrics(full), _metrics(out)
    keys = [k for k in a if k.startswith(("train/", "val/")) and "time" not in k]
    assert "train/codi" in keys  # PCCoT's own term: the resumed run is PCCoT
    for k in keys:
        assert b[k] == pytest.approx(a[k], abs=1e-6, rel=1e-6), k
    assert (out / ".hydra" / "overrides.yaml").exists() and list((out / ".hydra").glob("resume-*/overrides.yaml"))


@pytest.mark.slow
def test_the_same_command_resumes_an_interrupted_run(tmp_path, uninterrupted):
    """Requeue: a run stopped by a signal in an explicit folder is resumed by rerunning the very same command."""
    args, full = uninterrupted
    out = tmp_path / "run"
    args = [a if not a.startswith("hydra.run.dir=") else f"hydra.run.dir={out}" for a in args]
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    while _steps(out) < 4 and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _metrics(out)["train/loss"] == pytest.approx(_metrics(full)["train/loss"], abs=1e-6)
