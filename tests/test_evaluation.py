"""eval.py end to end, preflight failures, and the real-data sources through local copies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import FAST, compose_train, data_kwargs

from kava.data.datamodule import GSM8KDataModule
from kava.evaluation import markdown_table, run_evaluation
from kava.training import train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(compose_train(FAST + [f"paths.output_dir={out}", "callbacks=default", "callbacks.progress_bar=null"]))
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    return ckpt


def test_eval_defaults_to_the_runs_synthetic_test_split(trained, tmp_path):
    results = run_evaluation(str(trained), tmp_path, teacher=True, batch_size=4, max_new_tokens=4, max_cot_tokens=8)
    assert set(results) == {"synthetic"}
    assert set(results["synthetic"]) == {"student", "student_placeholder", "teacher"}
    student = results["synthetic"]["student"]
    assert student["n"] == 8 and 0.0 <= student["accuracy"] <= 1.0
    assert student["mean_forward_passes"] <= 1 + 3 + 3  # prefill, T passes (<eot> P in the last), 4 tokens
    for name in ("results.json", "results.md", "predictions.jsonl"):
        assert (tmp_path / name).exists()
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and {r["decoder"] for r in rows} == {"student", "student_placeholder", "teacher"}
    assert all({"question", "gold", "output", "prediction", "correct", "forward_passes"} <= set(r) for r in rows)
    assert "| synthetic | 8 |" in (tmp_path / "results.md").read_text()


def test_eval_on_a_local_copy_of_a_named_set(trained, tmp_path):
    svamp = tmp_path / "svamp.jsonl"
    rows = [{"Body": "Ann has 3 pens.", "Question": "How many pens does she have?", "Answer": 3.0}] * 3
    svamp.write_text("\n".join(json.dumps(r) for r in rows))
    results = run_evaluation(
        str(trained), tmp_path / "out", eval_sets=["svamp"], paths={"svamp": str(svamp)}, max_new_tokens=2
    )
    assert results["svamp"]["student"]["n"] == 3
    first = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])
    assert first["question"].startswith("Ann has 3 pens.")


def test_markdown_table_has_one_row_per_set():
    table = markdown_table(
        {
            "a": {"student": {"accuracy": 0.5, "mean_forward_passes": 6.0, "questions_per_s": 10.0, "n": 2}},
            "b": {"student": {"accuracy": 1.0, "mean_forward_passes": 7.0, "questions_per_s": 11.0, "n": 4}},
        }
    )
    assert "| a | 2 | 50.0 | 6.0 | 10.0 |" in table and "| b | 4 | 100.0 | 7.0 | 11.0 |" in table


@pytest.mark.parametrize(
    "cmd,setting",
    [
        (["train.py", "data=gsm8k_aug"], "data.path"),
        (["eval.py", "ckpt_path=<zip>", "eval_sets=[svamp]"], "eval.paths.svamp"),
    ],
)
@pytest.mark.slow
def test_unreachable_hub_data_stops_fast_naming_the_setting(cmd, setting, tmp_path):
    import torch

    torch.save({"x": 1}, tmp_path / "any.ckpt")  # a checkpoint file that passes the early check
    cmd = [a.replace("<zip>", str(tmp_path / "any.ckpt")) for a in cmd]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")  # nothing cached, nothing listening
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *cmd, f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert time.perf_counter() - start < 5
    assert proc.returncode != 0 and setting in proc.stderr + proc.stdout


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_hub_source_reads_a_local_directory_and_caches_tokenisation(tmp_path, tokenizer, monkeypatch):
    rows = [
        {
            "question": f"Ann has {i} boxes with 3 pens each. How many pens?",
            "steps": [f"<<{i}*3={3 * i}>>"],
            "answer": str(3 * i),
        }
        for i in range(2, 12)
    ]
    write_jsonl(tmp_path / "train.jsonl", rows[:6])
    write_jsonl(tmp_path / "validation.jsonl", rows[6:8])
    write_jsonl(tmp_path / "test.jsonl", rows[8:])
    kw = dict(source="hub", hub_id="whynlp/gsm8k-aug", path=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    dm = GSM8KDataModule(**data_kwargs(**kw))
    dm.attach_tokenizer(tokenizer)
    dm.setup()
    assert [len(dm.tables[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    cached = sorted((tmp_path / "cache" / "tokenised").glob("*.arrow"))
    assert len(cached) == 3

    import kava.data.datamodule as dmod

    def boom(*args, **kwargs):
        raise AssertionError("tokenised again although cached")

    monkeypatch.setattr(dmod, "_tokenise", boom)
    again = GSM8KDataModule(**data_kwargs(**kw))
    again.attach_tokenizer(tokenizer)
    again.setup()  # served from the cache files
    assert again.tables["train"]["q"] == dm.tables["train"]["q"]
