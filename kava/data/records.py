"""Training records in the GSM8k-AUG schema and a validating loader for local JSON/JSONL/Parquet files.

Two on-disk schemas are accepted so both public releases of GSM8k-AUG load without conversion:

* whynlp/gsm8k-aug: ``{"question": str, "steps": [str, ...], "answer": str}``
* zen-E/GSM8k-Aug: ``{"question": str, "cot": str, "answer": str}``, where ``cot`` holds all steps
  in one string and ``answer`` may read ``"#### 18"`` or ``"The answer is: 18"``.

Every invalid row raises :class:`BadRowError` with enough context to fix the data (or skip it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kava.data.answers import parse_number
from kava.data.files import RowProblem, read_rows
from kava.errors import MissingFileError, UserError
from kava.schema import ON_BAD_ROW, ConfigValueError

COT_SPLITS = ("auto", "space", "sentence")

_EQUATION_STEP_RE = re.compile(r"<<[^<>]*>>")


@dataclass(frozen=True)
class Record:
    """One training example: a question, its reasoning steps and the final answer string."""

    question: str
    steps: tuple[str, ...]
    answer: str
    source: str = field(default="", compare=False)  # file (or source name) the row came from, for errors
    row: int = field(default=0, compare=False)  # 1-based row number in that source


class BadRowError(UserError, ValueError):
    """An input row that cannot be turned into a :class:`Record`.

    The message names the source, the 1-based row, the field, the problem and the fix, so a user
    can repair a large data file without a debugger.
    """

    fix = "Fix or remove this row in the data file, or set data.on_bad_row=skip to skip such rows."

    def __init__(self, source: str, row: int, field: str, reason: str) -> None:
        self.source = source
        self.row = row
        self.field = field
        self.reason = reason
        super().__init__(f"{source}: row {row}: field '{field}': {reason}. {self.fix}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.source, self.row, self.field, self.reason))


def _split_cot(cot: str, cot_split: str) -> list[str]:
    """Split a zen-E ``cot`` string into steps (on spaces for equations, on ". " for sentences)."""
    pieces = cot.split()
    if cot_split == "auto":
        cot_split = "space" if all(_EQUATION_STEP_RE.fullmatch(p) for p in pieces) else "sentence"
    if cot_split == "space":
        return pieces
    steps = [s.strip() for s in cot.strip().split(". ")]
    if steps and steps[-1].endswith("."):
        steps[-1] = steps[-1][:-1].rstrip()
    return steps


def _answer_to_str(value: Any, source: str, row_no: int) -> str:
    """Normalise a JSON answer (string or number) to its final answer string."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadRowError(source, row_no, "answer", f"expected a string or a number, got {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRowError(source, row_no, "answer", f"{value!r} is not a finite number")
        return str(int(value)) if value.is_integer() else repr(value)
    tokens = value.split()
    if not tokens:
        raise BadRowError(source, row_no, "answer", "is empty; expected a number such as '18'")
    # zen-E style "#### 18" / "The answer is: 18": the number is the last token.
    answer = tokens[-1].lstrip("#")
    if answer.endswith("."):
        answer = answer[:-1]
    return answer


def record_from_row(row: Mapping, source: str, row_no: int, cot_split: str = "auto") -> Record:
    """Validate one parsed row (either schema) and convert it to a :class:`Record`.

    ``cot_split`` only matters for the zen-E schema: ``"space"``, ``"sentence"`` or ``"auto"``
    (space when every space-separated piece is a ``<<...>>`` equation, else sentence).
    """
    if cot_split not in COT_SPLITS:
        raise ConfigValueError(f"data.cot_split must be one of {', '.join(COT_SPLITS)}; got {cot_split!r}")
    if not isinstance(row, Mapping):
        raise BadRowError(source, row_no, "<row>", f"expected a JSON object, got {type(row).__name__}")

    question = row.get("question")
    if question is None:
        raise BadRowError(source, row_no, "question", "is missing")
    if not isinstance(question, str) or not question.strip():
        raise BadRowError(source, row_no, "question", "must be a non-empty string")

    if "steps" in row:
        raw_steps = row["steps"]
        if not isinstance(raw_steps, list | tuple) or not all(isinstance(s, str) for s in raw_steps):
            raise BadRowError(source, row_no, "steps", "must be a list of strings")
        field = "steps"
        steps = [s.strip() for s in raw_steps]
    elif "cot" in row:
        cot = row["cot"]
        if not isinstance(cot, str):
            raise BadRowError(source, row_no, "cot", f"must be a string, got {type(cot).__name__}")
        field = "cot"
        steps = _split_cot(cot, cot_split) if cot.strip() else []
    else:
        raise BadRowError(source, row_no, "steps", "is missing (neither 'steps' nor 'cot' is present); add one of them")
    if not steps:
        raise BadRowError(source, row_no, field, "is empty; at least one reasoning step is required")
    for i, step in enumerate(steps, start=1):
        if not step:
            raise BadRowError(source, row_no, field, f"step {i} is an empty string")

    if "answer" not in row or row["answer"] is None:
        raise BadRowError(source, row_no, "answer", "is missing")
    answer = _answer_to_str(row["answer"], source, row_no)
    if parse_number(answer) is None:
        raise BadRowError(
            source,
            row_no,
            "answer",
            f"{row['answer']!r} is not a plain number (expected e.g. '18' or '-3.5')",
        )
    return Record(question=question.strip(), steps=tuple(steps), answer=answer, source=source, row=row_no)


def load_records(path: str | Path, on_bad_row: str = "error", cot_split: str = "auto") -> tuple[list[Record], int]:
    """Load records from a ``.jsonl``, ``.json`` or ``.parquet`` file; return ``(records, number_of_skipped_rows)``.

    ``on_bad_row="error"`` raises the first row's :class:`BadRowError`; ``"skip"`` drops bad rows
    and counts them, keeping the good rows in file order.
    """
    if on_bad_row not in ON_BAD_ROW:
        raise ConfigValueError(f"data.on_bad_row must be one of {', '.join(ON_BAD_ROW)}; got {on_bad_row!r}")
    if cot_split not in COT_SPLITS:
        raise ConfigValueError(f"data.cot_split must be one of {', '.join(COT_SPLITS)}; got {cot_split!r}")
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise MissingFileError(f"data file not found: {source}; check the setting data.path")
    records: list[Record] = []
    skipped = 0
    for row_no, row in read_rows(path, "data.path"):
        try:
            if isinstance(row, RowProblem):
                raise BadRowError(source, row_no, row.field, row.reason)
            records.append(record_from_row(row, source, row_no, cot_split))
        except BadRowError:
            if on_bad_row == "error":
                raise
            skipped += 1
    return records, skipped
