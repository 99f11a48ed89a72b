"""Tests for answer parsing and the GSM8k-AUG record loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kava.data.answers import parse_number
from kava.data.records import BadRowError, Record, load_records, record_from_row


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18", 18.0),
        ("  42 ", 42.0),
        ("1,234", 1234.0),
        ("1,234,567.5", 1234567.5),
        ("-3.5", -3.5),
        ("+7", 7.0),
        ("12.", 12.0),
        (".5", 0.5),
        ("0", 0.0),
        ("", None),
        ("   ", None),
        ("abc", None),
        ("$5", None),
        ("5 apples", None),
        ("1.2.3", None),
        ("12..", None),
        ("-", None),
        (".", None),
        ("nan", None),
        ("inf", None),
        ("1e5", None),
    ],
)
def test_parse_number(text: str, expected: float | None) -> None:
    assert parse_number(text) == expected


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_whynlp_schema_maps_fields() -> None:
    row = {"question": " Q? ", "steps": [" <<3*4=12>>", "<<12+1=13>> "], "answer": "13"}
    assert record_from_row(row, "f.jsonl", 1) == Record("Q?", ("<<3*4=12>>", "<<12+1=13>>"), "13")


def test_numeric_answers_are_converted_to_strings() -> None:
    assert record_from_row({"question": "Q", "steps": ["s"], "answer": 18}, "f", 1).answer == "18"
    assert record_from_row({"question": "Q", "steps": ["s"], "answer": 18.0}, "f", 1).answer == "18"
    assert record_from_row({"question": "Q", "steps": ["s"], "answer": 2.5}, "f", 1).answer == "2.5"


def test_zen_e_equation_cot_is_split_on_spaces() -> None:
    row = {"question": "Q", "cot": "<<600*30/100=180>> <<600*10/100=60>>", "answer": "#### 240"}
    rec = record_from_row(row, "zen.jsonl", 3)
    assert rec.steps == ("<<600*30/100=180>>", "<<600*10/100=60>>")
    assert rec.answer == "240"


def test_zen_e_natural_language_cot_is_split_on_sentences() -> None:
    cot = "Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether."
    rec = record_from_row({"question": "Q", "cot": cot, "answer": "The answer is: 72"}, "zen.jsonl", 1)
    assert rec.steps == ("Natalia sold 48/2 = 24 clips in May", "Natalia sold 48+24 = 72 clips altogether")
    assert rec.answer == "72"


def test_explicit_cot_split_overrides_auto() -> None:
    row = {"question": "Q", "cot": "<<1+1=2>> <<2+2=4>>", "answer": "4"}
    assert record_from_row(row, "f", 1, cot_split="sentence").steps == ("<<1+1=2>> <<2+2=4>>",)
    row = {"question": "Q", "cot": "a b. c", "answer": "4"}
    assert record_from_row(row, "f", 1, cot_split="space").steps == ("a", "b.", "c")
    with pytest.raises(ValueError, match="data.cot_split"):
        record_from_row(row, "f", 1, cot_split="comma")


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"steps": ["s"], "answer": "1"}, "question"),
        ({"question": "", "steps": ["s"], "answer": "1"}, "question"),
        ({"question": 3, "steps": ["s"], "answer": "1"}, "question"),
        ({"question": "Q", "answer": "1"}, "steps"),
        ({"question": "Q", "steps": "s", "answer": "1"}, "steps"),
        ({"question": "Q", "steps": [1, 2], "answer": "1"}, "steps"),
        ({"question": "Q", "steps": [], "answer": "1"}, "steps"),
        ({"question": "Q", "steps": ["a", "  "], "answer": "1"}, "steps"),
        ({"question": "Q", "cot": "", "answer": "1"}, "cot"),
        ({"question": "Q", "steps": ["s"]}, "answer"),
        ({"question": "Q", "steps": ["s"], "answer": "eighteen"}, "answer"),
        ({"question": "Q", "steps": ["s"], "answer": True}, "answer"),
    ],
)
def test_record_from_row_rejects_bad_rows(row: dict, field: str) -> None:
    with pytest.raises(BadRowError) as info:
        record_from_row(row, "bad.jsonl", 7)
    err = info.value
    assert (err.source, err.row, err.field) == ("bad.jsonl", 7, field)
    assert "bad.jsonl" in str(err) and "row 7" in str(err) and f"'{field}'" in str(err)
    assert "data.on_bad_row=skip" in str(err)


GOOD = json.dumps({"question": "Q1", "steps": ["<<2*3=6>>"], "answer": "6"})
GOOD2 = json.dumps({"question": "Q2", "cot": "<<1+1=2>>", "answer": "#### 2"})


@pytest.mark.parametrize(
    ("bad_line", "field"),
    [
        (json.dumps({"steps": ["s"], "answer": "1"}), "question"),
        (json.dumps({"question": "Q", "steps": ["s"], "answer": "n/a"}), "answer"),
        (json.dumps({"question": "Q", "steps": [], "answer": "1"}), "steps"),
        ('{"question": "Q", "steps": [', "<json>"),
    ],
)
def test_load_records_error_names_file_row_and_field(tmp_path: Path, bad_line: str, field: str) -> None:
    path = _write_jsonl(tmp_path / "train_data.jsonl", [GOOD, "", bad_line, GOOD2])
    with pytest.raises(BadRowError) as info:
        load_records(path)
    msg = str(info.value)
    assert "train_data.jsonl" in msg
    assert "row 3" in msg  # 1-based line number, blank line 2 counted
    assert f"'{field}'" in msg
    assert info.value.row == 3 and info.value.field == field


def test_load_records_skip_mode_counts_and_keeps_order(tmp_path: Path) -> None:
    bad_answer = json.dumps({"question": "Q", "steps": ["s"], "answer": "?"})
    path = _write_jsonl(tmp_path / "d.jsonl", [GOOD, "not json", "", bad_answer, GOOD2, "[1, 2]"])
    records, skipped = load_records(path, on_bad_row="skip")
    assert skipped == 3
    assert [r.question for r in records] == ["Q1", "Q2"]
    assert records[1] == Record("Q2", ("<<1+1=2>>",), "2")


def test_load_records_json_list_and_data_object(tmp_path: Path) -> None:
    rows = [json.loads(GOOD), {"question": "Q", "steps": ["s"]}, json.loads(GOOD2)]
    (tmp_path / "a.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps({"data": rows}), encoding="utf-8")
    for name in ("a.json", "b.json"):
        with pytest.raises(BadRowError) as info:
            load_records(tmp_path / name)
        assert info.value.row == 2 and name in str(info.value)
        records, skipped = load_records(tmp_path / name, on_bad_row="skip")
        assert skipped == 1 and [r.question for r in records] == ["Q1", "Q2"]


def test_load_records_setting_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.path") as info:
        load_records(tmp_path / "missing.jsonl")
    assert "missing.jsonl" in str(info.value)
    path = _write_jsonl(tmp_path / "d.jsonl", [GOOD])
    with pytest.raises(ValueError, match="data.on_bad_row") as info:
        load_records(path, on_bad_row="ignore")
    assert "error" in str(info.value) and "skip" in str(info.value)
    csv = tmp_path / "d.csv"
    csv.write_text("question,answer\n", encoding="utf-8")
    with pytest.raises(ValueError, match="extension"):
        load_records(csv)
