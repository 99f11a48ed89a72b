"""``python -m kava.export``: a Hub-ready folder with a model card; push mocked only at the network boundary."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import FAST, compose_train

from kava.export import add_results, model_card, push_to_hub

HP = {
    "model": {"name_or_path": "meta-llama/Llama-3.2-1B-Instruct", "lora": {"r": 128, "alpha": 32, "dropout": 0.1}},
    "latent": {"num_tokens": 24, "num_iterations": 3},
    "loss": {"alpha1": 10.0, "alpha2": 1.0, "kv_loss": "smooth_l1", "kv_steps": "all", "rkv_lambda": 0.1},
    "data": {"source": "hub", "hub_id": "whynlp/gsm8k-aug", "name": "gsm8k_aug"},
    "method": {"_target_": "kava.methods.kava.KaVa"},
}
RESULTS = {"gsm8k": {"student": {"accuracy": 0.5, "mean_forward_passes": 12.0, "questions_per_s": 3.0, "n": 10}}}


def test_model_card_names_base_method_latents_row_data_and_results():
    card = model_card(HP, RESULTS)
    meta = card.split("---")[1]
    assert "base_model: meta-llama/Llama-3.2-1B-Instruct" in meta and "datasets: [whynlp/gsm8k-aug]" in meta
    assert "| method | `kava` |" in card
    assert "| latent tokens M / Jacobi passes T | 24 / 3 |" in card
    assert "alpha1=10.0, alpha2=1.0, kv_loss=smooth_l1, kv_steps=all" in card
    assert "| gsm8k | student | 50.0 | 12.0 | 10 |" in card
    assert "Not evaluated yet" in model_card(HP, None)


class _FakeApi:
    def __init__(self) -> None:
        self.calls = []

    def create_repo(self, repo_id, private, exist_ok):
        self.calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, folder_path, repo_id, commit_message):
        self.calls.append(("upload_folder", folder_path, repo_id))
        return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()


def test_push_uploads_the_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    api = _FakeApi()
    assert push_to_hub(tmp_path, "me/kava-tiny", private=True, api=api).endswith("/commit/abc")
    assert api.calls == [("create_repo", "me/kava-tiny", True, True), ("upload_folder", str(tmp_path), "me/kava-tiny")]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        push_to_hub(tmp_path, "me/kava-tiny", api=api)


@pytest.mark.slow
def test_export_cli_writes_card_and_eval_adds_results(tmp_path):
    from kava.training import train

    out = tmp_path / "run"
    train(compose_train(FAST + [f"paths.output_dir={out}", "callbacks=default", "callbacks.progress_bar=null"]))
    res = tmp_path / "results.json"
    res.write_text(json.dumps({"results": RESULTS}))
    folder = tmp_path / "export"
    cmd = [
        sys.executable,
        "-m",
        "kava.export",
        str(out / "checkpoints" / "last.ckpt"),
        str(folder),
        "--results",
        str(res),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = (folder / "README.md").read_text()
    assert "tiny random-init Llama" in card and "| gsm8k | student | 50.0 |" in card and "base_model" not in card
    add_results(folder, {"synthetic": {"student": {**RESULTS["gsm8k"]["student"], "accuracy": 0.25}}})
    card = (folder / "README.md").read_text()
    assert "| gsm8k | student | 50.0 |" in card and "| synthetic | student | 25.0 |" in card
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    offline = subprocess.run([*cmd[:5], "--push-to-hub", "me/x"], capture_output=True, text=True, env=env)
    assert offline.returncode != 0 and "HF_HUB_OFFLINE is set" in offline.stderr
