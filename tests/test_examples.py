"""``examples/``: the committed files are what ``examples/make_examples.py`` writes, and each loads as its schema."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from helpers import module_sections

from kava.data.eval_sets import load_eval_set
from kava.data.records import load_records
from kava.evaluation import default_sets, own_test_items
from kava.preflight import PreflightError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _maker():
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_examples_are_generated():
    mod = _maker()
    for name, rows in mod.example_rows().items():
        assert (EXAMPLES / name).read_text() == mod.render(rows), f"examples/{name} differs: run make_examples.py"


def test_both_training_schemas_load_to_the_same_records():
    steps, skipped_steps = load_records(EXAMPLES / "train_steps.jsonl")
    cot, skipped_cot = load_records(EXAMPLES / "train_cot.jsonl")
    assert len(steps) == len(cot) == 20 and skipped_steps == skipped_cot == 0
    assert [(r.question, r.steps, r.answer) for r in steps] == [(r.question, r.steps, r.answer) for r in cot]
    assert all(len(r.steps) == 3 for r in steps)


def test_gsm8k_schema_eval_file():
    items = load_eval_set("gsm8k", str(EXAMPLES / "gsm8k_test.jsonl"), None)
    rows = _maker().example_rows()["gsm8k_test.jsonl"]
    assert len(items) == 20
    assert [it.answer for it in items] == [float(r["answer"].rsplit("#### ", 1)[1]) for r in rows]
    assert all(it.question == r["question"] for it, r in zip(items, rows, strict=True))


def test_local_run_without_test_file_is_named_not_sent_to_the_hub():
    data = module_sections(["data=local", f"data.path={EXAMPLES / 'train_steps.jsonl'}", "data.val_size=4"])["data"]
    assert default_sets(data) == ["local"]
    assert default_sets({"source": "synthetic", "path": data["path"]}) == ["local"]  # a file replacing the generator
    hub_copy = {"source": "hub", "hub_id": "whynlp/gsm8k-aug", "path": data["path"]}
    assert default_sets(hub_copy) == ["gsm8k", "gsm_hard", "svamp", "multiarith"]  # a local copy of a Hub set
    with pytest.raises(PreflightError, match="without a test file.*data.test_path"):
        own_test_items(data)
    with_test = {**data, "test_path": str(EXAMPLES / "train_cot.jsonl")}
    assert len(own_test_items(with_test)) == 20
