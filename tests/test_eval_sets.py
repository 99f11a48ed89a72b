"""Evaluation-set adapters and loading from local JSON/JSONL/Parquet files (and the offline Hub path)."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import datasets
import pytest

from kava.data.eval_sets import (
    EVAL_SETS,
    BadEvalRowError,
    EvalItem,
    items_from_records,
    load_eval_set,
)
from kava.hub import HubUnavailableError

GSM8K_ROWS = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. "
        "How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
    },
    {"question": "A farm has 400 cows and buys 600 more. How many cows?", "answer": "400+600=1000\n#### 1,000"},
    {"question": "It is 5 degrees and drops 8. What is it now?", "answer": "5-8=-3\n#### -3"},
]
GSM_HARD_ROWS = [
    {"input": "Janet has 2212799 ducks ...", "code": "def solution(): ...", "target": 18880408.0},
    {"input": "A robe takes 2 bolts of blue fiber and half that much white.", "target": "-2.5"},
    {"input": "Josh buys a house for $80000.", "target": 70000},
]
GSM_HARD_TRL_ROWS = [
    {"instruction": "Janet has 2212799 ducks ...", "response": "18880408"},
    {"instruction": "How much is half of 7?", "response": 3.5},
]
SVAMP_ROWS = [  # the ChilleD/SVAMP schema, every field present (as in the Hub's Parquet files)
    {
        "ID": "chal-1",
        "Body": "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack",
        "Question": "How much do you have to pay to buy each pack?",
        "Equation": "( 76.0 - 25.0 )",
        "Answer": 51.0,
        "Type": "Subtraction",
        "question_concat": "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
        "How much do you have to pay to buy each pack?",
    },
    {
        "ID": "chal-2",
        "Body": "Dan had 97 baseball cards and 5 were torn. Sam bought 15 of Dan's cards.",
        "Question": "How many cards does Dan have now?",
        "Equation": "( 97.0 - 15.0 )",
        "Answer": 82.0,
        "Type": "Subtraction",
        "question_concat": "Dan had 97 baseball cards and 5 were torn. Sam bought 15 of Dan's cards. "
        "How many cards does Dan have now?",
    },
]
SVAMP_VARIANT_ROWS = [  # string answers, and rows with only question_concat
    {"Body": "Tom has 3 red and 5 blue marbles!", "Question": "How many marbles?", "Answer": "8.0"},
    {"question_concat": "Paco had 9 cookies. He ate 3. How many are left?", "Answer": 6},
]
MULTIARITH_ROWS = [
    {"question": "Paige had 11 songs. She deleted 9 and added 8. How many songs?", "final_ans": "10"},
    {"question": "A pet store had 56 puppies and sold 24. How many are left?", "final_ans": 32},
]
GSM8K_AUG_ROWS = [
    {"question": "Out of 600 employees, 30% got a raise. How many?", "steps": ["<<600*30/100=180>>"], "answer": "180"},
    {"question": "What is 1.5 times 3?", "steps": ["<<1.5*3=4.5>>"], "answer": "4.5"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def write_json(path: Path, rows: list[dict], wrap: bool = False) -> Path:
    path.write_text(json.dumps({"data": rows} if wrap else rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def answers(items: list[EvalItem]) -> list[float]:
    return [item.answer for item in items]


def test_registry_matches_the_design() -> None:
    assert set(EVAL_SETS) == {"gsm8k", "gsm_hard", "svamp", "multiarith", "gsm8k_aug_val"}
    assert (EVAL_SETS["gsm8k"].hub_id, EVAL_SETS["gsm8k"].hub_config, EVAL_SETS["gsm8k"].splits) == (
        "openai/gsm8k",
        "main",
        ("test",),
    )
    assert EVAL_SETS["svamp"].splits == ("train", "test")
    assert EVAL_SETS["gsm_hard"].hub_id == "reasoning-machines/gsm-hard"
    assert EVAL_SETS["multiarith"].hub_id == "ChilleD/MultiArith"
    assert (EVAL_SETS["gsm8k_aug_val"].hub_id, EVAL_SETS["gsm8k_aug_val"].splits) == (
        "whynlp/gsm8k-aug",
        ("validation",),
    )
    assert all(name == spec.name for name, spec in EVAL_SETS.items())


def test_gsm8k_answer_after_hashes_with_commas(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    items = load_eval_set("gsm8k", str(path))
    assert answers(items) == [72.0, 1000.0, -3.0]
    assert items[0].question.startswith("Natalia sold clips") and items[0].question.endswith("April and May?")
    assert [(i.source, i.row) for i in items] == [(str(path), 1), (str(path), 2), (str(path), 3)]


def test_gsm_hard_both_schemas(tmp_path: Path) -> None:
    hard = load_eval_set("gsm_hard", write_json(tmp_path / "hard.json", GSM_HARD_ROWS))
    assert answers(hard) == [18880408.0, -2.5, 70000.0]
    assert hard[1].question == "A robe takes 2 bolts of blue fiber and half that much white."
    trl = load_eval_set("gsm_hard", write_jsonl(tmp_path / "trl.jsonl", GSM_HARD_TRL_ROWS))
    assert answers(trl) == [18880408.0, 3.5]
    assert [i.question for i in trl] == ["Janet has 2212799 ducks ...", "How much is half of 7?"]


def test_svamp_keeps_the_body(tmp_path: Path) -> None:
    items = load_eval_set("svamp", write_parquet(tmp_path / "svamp.parquet", SVAMP_ROWS))
    assert answers(items) == [51.0, 82.0]
    # Body without final punctuation gets ". ", one with it a single space; the Question follows.
    assert items[0].question == (
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack. "
        "How much do you have to pay to buy each pack?"
    )
    assert items[1].question == (
        "Dan had 97 baseball cards and 5 were torn. Sam bought 15 of Dan's cards. How many cards does Dan have now?"
    )
    assert [i.row for i in items] == [1, 2]


def test_svamp_string_answers_and_question_concat(tmp_path: Path) -> None:
    items = load_eval_set("svamp", write_jsonl(tmp_path / "svamp.jsonl", SVAMP_VARIANT_ROWS))
    assert answers(items) == [8.0, 6.0]
    assert items[0].question == "Tom has 3 red and 5 blue marbles! How many marbles?"
    assert items[1].question == "Paco had 9 cookies. He ate 3. How many are left?"


def test_multiarith_and_gsm8k_aug(tmp_path: Path) -> None:
    multi = load_eval_set("multiarith", write_json(tmp_path / "m.json", MULTIARITH_ROWS, wrap=True))
    assert answers(multi) == [10.0, 32.0]
    assert multi[1].question == MULTIARITH_ROWS[1]["question"]
    aug = load_eval_set("gsm8k_aug_val", write_jsonl(tmp_path / "aug.jsonl", GSM8K_AUG_ROWS))
    assert answers(aug) == [180.0, 4.5]
    assert aug[0].question == GSM8K_AUG_ROWS[0]["question"]


def test_adapters_accept_any_mapping() -> None:
    row = MappingProxyType(OrderedDict(question="What is 2+2?", final_ans="4"))
    assert EVAL_SETS["multiarith"].adapter(row) == ("What is 2+2?", 4.0)
    assert EVAL_SETS["gsm8k"].adapter(MappingProxyType(GSM8K_ROWS[1]))[1] == 1000.0


def test_directory_reads_files_sorted_with_per_file_rows(tmp_path: Path) -> None:
    folder = tmp_path / "svamp"
    folder.mkdir()
    write_jsonl(folder / "b_test.jsonl", SVAMP_VARIANT_ROWS[1:])
    write_json(folder / "a_train.json", SVAMP_ROWS)
    (folder / "README.md").write_text("not data")
    items = load_eval_set("svamp", str(folder))
    assert answers(items) == [51.0, 82.0, 6.0]
    assert [(Path(i.source).name, i.row) for i in items] == [
        ("a_train.json", 1),
        ("a_train.json", 2),
        ("b_test.jsonl", 1),
    ]


def test_limit_keeps_the_first_items(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    assert answers(load_eval_set("gsm8k", path, limit=2)) == [72.0, 1000.0]
    assert load_eval_set("gsm8k", path, limit=0) == []
    assert len(load_eval_set("gsm8k", path, limit=10)) == 3
    with pytest.raises(ValueError, match="limit"):
        load_eval_set("gsm8k", path, limit=-1)


@pytest.mark.parametrize(
    ("name", "rows", "bad_row", "field"),
    [
        ("gsm8k", [GSM8K_ROWS[0], {"question": "q?", "answer": "no marker 5"}], 2, "answer"),
        ("gsm8k", [{"question": "q?", "answer": "#### five"}], 1, "answer"),
        ("gsm8k", [GSM8K_ROWS[0], GSM8K_ROWS[1], {"answer": "#### 1"}], 3, "question"),
        ("gsm_hard", [{"input": "q?"}], 1, "target"),
        ("gsm_hard", [{"input": "q?", "target": "12 ducks"}], 1, "target"),
        ("gsm_hard", [{"instruction": "q?", "response": True}], 1, "response"),
        ("gsm_hard", [{"prompt": "q?", "target": 1}], 1, "input"),
        ("svamp", [SVAMP_ROWS[1], {"Body": "Dan had 9.", "Answer": 1}], 2, "Question"),
        ("svamp", [{"Body": "b.", "Question": "q?", "Answer": "eight"}], 1, "Answer"),
        ("svamp", [{"Body": "b.", "Question": "q?"}], 1, "Answer"),
        ("multiarith", [MULTIARITH_ROWS[0], {"question": "q?", "final_ans": None}], 2, "final_ans"),
        ("multiarith", [{"question": "", "final_ans": "1"}], 1, "question"),
        ("gsm8k_aug_val", [{"question": "q?", "answer": "inf"}], 1, "answer"),
        ("gsm8k_aug_val", [[1, 2]], 1, "<row>"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path: Path, name: str, rows: list, bad_row: int, field: str) -> None:
    path = write_json(tmp_path / f"{name}.json", rows)
    with pytest.raises(BadEvalRowError) as info:
        load_eval_set(name, str(path))
    err = info.value
    assert (err.source, err.row, err.field) == (str(path), bad_row, field)
    message = str(err)
    assert str(path) in message and f"row {bad_row}" in message and f"'{field}'" in message
    assert "Fix or remove this row" in message
    assert isinstance(err, ValueError)


def test_bad_jsonl_line_reports_line_number(tmp_path: Path) -> None:
    path = tmp_path / "multi.jsonl"
    path.write_text(json.dumps(MULTIARITH_ROWS[0]) + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(BadEvalRowError, match=r"row 3: field '<json>'"):
        load_eval_set("multiarith", path)


def test_bad_parquet_row(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "hard.parquet", [{"input": "q1", "target": "1"}, {"input": "q2", "target": "x"}])
    with pytest.raises(BadEvalRowError, match=r"hard\.parquet: row 2: field 'target'"):
        load_eval_set("gsm_hard", path)


def test_unknown_set_lists_available_names() -> None:
    with pytest.raises(ValueError, match="unknown evaluation set 'gsm9k'") as info:
        load_eval_set("gsm9k")
    for name in EVAL_SETS:
        assert name in str(info.value)


def test_missing_local_path_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"eval\.paths\.multiarith"):
        load_eval_set("multiarith", str(tmp_path / "nope.jsonl"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"eval\.paths\.svamp"):
        load_eval_set("svamp", empty)
    csv = tmp_path / "data.csv"
    csv.write_text("question,final_ans\n")
    with pytest.raises(ValueError, match=r"eval\.paths\.multiarith"):
        load_eval_set("multiarith", csv)


def test_offline_hub_load_fails_fast_naming_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # An empty cache, so a copy cached on this machine cannot make the load succeed.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match=r"eval\.paths\.svamp") as info:
        load_eval_set("svamp")
    assert time.monotonic() - start < 5.0
    assert "ChilleD/SVAMP" in str(info.value)


def test_items_from_records() -> None:
    records = [
        SimpleNamespace(question="What is 2+3?", answer="5"),
        SimpleNamespace(question="What is 1,000+1?", answer="1,001"),
        SimpleNamespace(question="What is 1-4?", answer="-3"),
    ]
    items = items_from_records(records)
    assert items == [
        EvalItem("What is 2+3?", 5.0, "synthetic", 1),
        EvalItem("What is 1,000+1?", 1001.0, "synthetic", 2),
        EvalItem("What is 1-4?", -3.0, "synthetic", 3),
    ]
    assert items_from_records(records[:1], name="test")[0].source == "test"
    with pytest.raises(BadEvalRowError, match=r"synthetic: row 2: field 'answer'"):
        items_from_records([records[0], SimpleNamespace(question="q", answer="five")])


def test_items_from_real_records() -> None:
    from kava.data.synthetic import generate_records

    records = generate_records(4, seed=1, num_steps=2)
    items = items_from_records(records)
    assert [i.question for i in items] == [r.question for r in records]
    assert [i.answer for i in items] == [float(r.answer) for r in records]


def test_local_eval_file_with_a_bad_byte_names_the_row(tmp_path):
    """Training and eval files share one reader: a non-UTF-8 line is named by file and line, not a codec traceback."""
    from kava.data.eval_sets import BadEvalRowError

    f = tmp_path / "gsm8k.jsonl"
    good = b'{"question": "q?", "answer": "x #### 3"}\n'
    f.write_bytes(good + b'{"question": "caf\xe9?", "answer": "x #### 4"}\n')
    with pytest.raises(BadEvalRowError, match=r"gsm8k\.jsonl: row 2: field '<encoding>': not UTF-8 \(byte 0xe9"):
        load_eval_set("gsm8k", str(f))


def test_offline_hub_load_reads_the_cached_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, a data set whose snapshot is in the Hub cache loads from it (huggingface_hub's local_files_only),
    without touching any global offline switch."""
    import huggingface_hub.constants

    from kava.hub import load_hub_dataset

    snap = tmp_path / "hub" / "datasets--me--tiny" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / "test.jsonl").write_text('{"question": "q", "answer": "1"}\n{"question": "r", "answer": "2"}\n')
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    flags = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    ds = load_hub_dataset("me/tiny", "test", setting="eval.paths.x")
    assert ds["answer"] == ["1", "2"]
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == flags
    (snap.parent.parent / "refs" / "main").unlink()  # datasets downloads by commit hash: no refs/main
    assert load_hub_dataset("me/tiny", "test", setting="eval.paths.x")["answer"] == ["1", "2"]
