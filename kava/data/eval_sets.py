"""Evaluation sets (GSM8k, GSM-Hard, SVAMP, MultiArith, GSM8k-AUG validation) as ``(question, number)`` items.

Each set is an :class:`EvalSetSpec`: a Hugging Face id, its splits, and an adapter that maps one row of
that source's schema to a question and a numeric gold answer. The same adapter reads a local
JSON/JSONL/Parquet copy (``eval.paths.<name>``), so evaluation works offline with unchanged data.
Every row that cannot be adapted raises :class:`BadEvalRowError` naming the source, row and field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kava.data.answers import parse_number
from kava.data.files import LOCAL_SUFFIXES, RowProblem, check_suffix, read_rows
from kava.data.records import BadRowError
from kava.errors import MissingFileError
from kava.hub_ids import EVAL_HUB_IDS
from kava.schema import ConfigValueError

_SENTENCE_END = (".", "!", "?")


@dataclass(frozen=True)
class EvalItem:
    """One evaluation question with its numeric gold answer and where it came from (``row`` is 1-based)."""

    question: str
    answer: float
    source: str
    row: int
    steps: tuple[str, ...] = ()  # the reference CoT where the set has one (synthetic, gsm8k_aug_val)


class BadEvalRowError(BadRowError):
    """An evaluation row that cannot be turned into an :class:`EvalItem`; the message says what to fix."""

    fix = "Fix or remove this row in the evaluation data, or point eval.paths.<set> at a corrected copy."


class EvalAdapter(Protocol):
    """Maps one source row to ``(question, answer)``; ``source``/``row_no`` only label errors."""

    def __call__(self, row: Mapping, source: str = ..., row_no: int = ...) -> tuple[str, float]: ...


@dataclass(frozen=True)
class EvalSetSpec:
    """Where an evaluation set lives on the Hub and how to read its rows."""

    name: str
    hub_id: str
    hub_config: str | None
    splits: tuple[str, ...]
    adapter: EvalAdapter


# --------------------------------------------------------------------------- field helpers


def _check_row(row: Any, source: str, row_no: int) -> Mapping:
    if not isinstance(row, Mapping):
        raise BadEvalRowError(
            source, row_no, "<row>", f"expected an object with named fields, got {type(row).__name__}"
        )
    return row


def _field(row: Mapping, key: str, source: str, row_no: int) -> Any:
    if key not in row or row[key] is None:
        present = ", ".join(map(str, row.keys())) or "none"
        raise BadEvalRowError(source, row_no, key, f"is missing (fields present: {present})")
    return row[key]


def _text(row: Mapping, key: str, source: str, row_no: int) -> str:
    value = _field(row, key, source, row_no)
    if not isinstance(value, str) or not value.strip():
        raise BadEvalRowError(source, row_no, key, "must be a non-empty string")
    return value.strip()


def _number(value: Any, key: str, source: str, row_no: int) -> float:
    """A gold answer given as a JSON number or a plain numeric string, as a finite float."""
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        number = parse_number(value)
    else:
        number = None
    if number is None or not math.isfinite(number):
        raise BadEvalRowError(
            source, row_no, key, f"{value!r} is not a plain finite number (expected e.g. 18, '1,000' or '-3.5')"
        )
    return number


# --------------------------------------------------------------------------- adapters


def gsm8k_adapter(row: Mapping, source: str = "gsm8k", row_no: int = 0) -> tuple[str, float]:
    """``openai/gsm8k``: ``question``; ``answer`` is a solution ending in ``#### <number>``."""
    row = _check_row(row, source, row_no)
    question = _text(row, "question", source, row_no)
    solution = _text(row, "answer", source, row_no)
    if "####" not in solution:
        raise BadEvalRowError(source, row_no, "answer", "has no '#### <number>' final answer marker")
    return question, _number(solution.rsplit("####", 1)[1].strip(), "answer", source, row_no)


def gsm_hard_adapter(row: Mapping, source: str = "gsm_hard", row_no: int = 0) -> tuple[str, float]:
    """GSM-Hard: ``input``/``target`` (reasoning-machines) or ``instruction``/``response`` (juyoung-trl)."""
    row = _check_row(row, source, row_no)
    if "input" in row:
        q_key, a_key = "input", "target"
    elif "instruction" in row:
        q_key, a_key = "instruction", "response"
    else:
        raise BadEvalRowError(
            source, row_no, "input", "is missing; a GSM-Hard row needs 'input'/'target' or 'instruction'/'response'"
        )
    return _text(row, q_key, source, row_no), _number(_field(row, a_key, source, row_no), a_key, source, row_no)


def svamp_adapter(row: Mapping, source: str = "svamp", row_no: int = 0) -> tuple[str, float]:
    """``ChilleD/SVAMP``: ``Body`` (the context) + " " + ``Question``, else ``question_concat``; ``Answer``."""
    row = _check_row(row, source, row_no)
    if row.get("Body") is not None and row.get("Question") is not None:
        body = row["Body"]
        if not isinstance(body, str):
            raise BadEvalRowError(source, row_no, "Body", f"must be a string, got {type(body).__name__}")
        body = body.strip()
        tail = _text(row, "Question", source, row_no)
        if body and not body.endswith(_SENTENCE_END):
            body += "."
        question = f"{body} {tail}" if body else tail
    elif row.get("question_concat") is not None:
        question = _text(row, "question_concat", source, row_no)
    else:
        missing = "Body" if row.get("Body") is None else "Question"
        raise BadEvalRowError(
            source, row_no, missing, "is missing; an SVAMP row needs 'Body' and 'Question' (or 'question_concat')"
        )
    return question, _number(_field(row, "Answer", source, row_no), "Answer", source, row_no)


def multiarith_adapter(row: Mapping, source: str = "multiarith", row_no: int = 0) -> tuple[str, float]:
    """``ChilleD/MultiArith``: ``question``, ``final_ans``."""
    row = _check_row(row, source, row_no)
    question = _text(row, "question", source, row_no)
    return question, _number(_field(row, "final_ans", source, row_no), "final_ans", source, row_no)


def gsm8k_aug_adapter(row: Mapping, source: str = "gsm8k_aug_val", row_no: int = 0) -> tuple[str, float]:
    """``whynlp/gsm8k-aug``: ``question``, ``answer`` (a plain number string)."""
    row = _check_row(row, source, row_no)
    question = _text(row, "question", source, row_no)
    return question, _number(_field(row, "answer", source, row_no), "answer", source, row_no)


EVAL_SETS: dict[str, EvalSetSpec] = {
    spec.name: spec
    for spec in (
        EvalSetSpec("gsm8k", EVAL_HUB_IDS["gsm8k"], "main", ("test",), gsm8k_adapter),
        EvalSetSpec("gsm_hard", EVAL_HUB_IDS["gsm_hard"], None, ("train",), gsm_hard_adapter),
        EvalSetSpec("svamp", EVAL_HUB_IDS["svamp"], None, ("train", "test"), svamp_adapter),
        EvalSetSpec("multiarith", EVAL_HUB_IDS["multiarith"], None, ("test",), multiarith_adapter),
        EvalSetSpec("gsm8k_aug_val", EVAL_HUB_IDS["gsm8k_aug_val"], None, ("validation",), gsm8k_aug_adapter),
    )
}


# --------------------------------------------------------------------------- loading


def _read_local_rows(path: Path, setting: str) -> Iterator[tuple[int, Any]]:
    """``(row_no, row)`` pairs of one local file; a row that cannot be parsed stops the evaluation, naming it."""
    for row_no, row in read_rows(path, f"`{setting}`"):
        if isinstance(row, RowProblem):
            raise BadEvalRowError(str(path), row_no, row.field, row.reason)
        yield row_no, row


def _local_files(path: Path, setting: str) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in LOCAL_SUFFIXES)
        if not files:
            raise MissingFileError(
                f"no {'/'.join(LOCAL_SUFFIXES)} files in the directory {path}; check the setting `{setting}`"
            )
        return files
    if not path.is_file():
        raise MissingFileError(f"evaluation data not found: {path}; check the setting `{setting}`")
    check_suffix(path, f"`{setting}`")
    return [path]


def _sources(
    spec: EvalSetSpec, path: str | Path | None, setting: str
) -> Iterator[tuple[str, Iterable[tuple[int, Any]]]]:
    """``(source label, numbered rows)`` for each file or hub split of the set, in load order."""
    if path is None or str(path) == "":
        from kava.hub import load_hub_dataset

        for split in spec.splits:
            dataset = load_hub_dataset(spec.hub_id, split, setting=setting, config=spec.hub_config)
            yield f"{spec.hub_id}:{split}", enumerate(dataset, start=1)
    else:
        for file in _local_files(Path(path), setting):
            yield str(file), _read_local_rows(file, setting)


def load_eval_set(name: str, path: str | Path | None = None, limit: int | None = None) -> list[EvalItem]:
    """The items of the evaluation set ``name``, from the Hub (``path=None``) or a local file or directory.

    Hub splits are concatenated in the spec's order; a directory contributes its JSON/JSONL/Parquet files
    sorted by name. ``limit`` keeps the first ``limit`` items (later rows are then not read or checked).
    """
    spec = EVAL_SETS.get(name)
    if spec is None:
        raise ConfigValueError(f"unknown evaluation set {name!r}; available: {', '.join(sorted(EVAL_SETS))}")
    if limit is not None and limit < 0:
        raise ConfigValueError(f"limit must be >= 0 or None; got {limit}")
    setting = f"eval.paths.{name}"
    items: list[EvalItem] = []
    if limit == 0:
        return items
    for source, rows in _sources(spec, path, setting):
        for row_no, row in rows:
            question, answer = spec.adapter(row, source=source, row_no=row_no)
            items.append(EvalItem(question=question, answer=answer, source=source, row=row_no))
            if limit is not None and len(items) >= limit:
                return items
    return items


def items_from_records(records: Iterable[Any], name: str = "synthetic") -> list[EvalItem]:
    """Evaluation items from training-style records (``.question``, string ``.answer``), e.g. a run's test split."""
    items = []
    for row_no, record in enumerate(records, start=1):
        answer = parse_number(record.answer) if isinstance(record.answer, str) else None
        if answer is None:
            raise BadEvalRowError(name, row_no, "answer", f"{record.answer!r} is not a plain number string")
        items.append(
            EvalItem(
                question=record.question,
                answer=answer,
                source=name,
                row=row_no,
                steps=tuple(getattr(record, "steps", ())),
            )
        )
    return items
