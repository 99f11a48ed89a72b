"""The one reader of local data files (training sets and evaluation sets): JSON, JSONL and Parquet rows, numbered.

A JSONL row is numbered by its line, a JSON or Parquet row by its position (1-based). A JSONL line that is not
UTF-8 or not JSON is returned as a :class:`RowProblem` in its place, so the caller can stop on it or skip and count
it; a whole-file problem (unreadable, empty, not JSON, wrong top-level shape) raises, naming the file and the
setting to change. Parquet is read with pyarrow, JSON text with the standard library, which is what gives
line-exact messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kava.errors import DataError, FileAccessError

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclass(frozen=True)
class RowProblem:
    """A row that could not be parsed at all: the field to name (``<encoding>``, ``<json>``) and why."""

    field: str
    reason: str


def check_suffix(path: Path, setting: str) -> None:
    if path.suffix.lower() not in LOCAL_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file extension {path.suffix!r}; {setting} must end in {', '.join(LOCAL_SUFFIXES)}"
        )


def read_rows(path: str | Path, setting: str) -> list[tuple[int, Any]]:
    """``(row_no, row)`` pairs of one local file; ``row`` is the parsed object or a :class:`RowProblem`."""
    path = Path(path)
    source = str(path)
    check_suffix(path, setting)
    suffix = path.suffix.lower()
    if suffix == ".parquet":  # read directly: no copy in the datasets cache, no glob semantics in the name
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except OSError as e:
            raise FileAccessError(f"{source}: cannot read the Parquet file ({e}); check {setting}") from e
        return list(enumerate(table.to_pylist(), start=1))
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FileAccessError(
            f"{source}: cannot read the data file ({e.strerror or e}); check {setting} and its access"
        ) from e
    if not raw.strip():
        raise DataError(f"{source}: the data file is empty; {setting} must hold at least one row")
    if suffix == ".jsonl":
        rows: list[tuple[int, Any]] = []
        for line_no, chunk in enumerate(raw.split(b"\n"), start=1):
            try:
                line = chunk.decode("utf-8-sig" if line_no == 1 else "utf-8")  # a leading byte-order mark is dropped
            except UnicodeDecodeError as e:
                reason = f"not UTF-8 (byte 0x{chunk[e.start]:02x} at column {e.start + 1}); save the file as UTF-8"
                rows.append((line_no, RowProblem("<encoding>", reason)))
                continue
            if not line.strip():
                continue
            try:
                rows.append((line_no, json.loads(line)))
            except json.JSONDecodeError as e:
                rows.append((line_no, RowProblem("<json>", f"not valid JSON ({e.msg})")))
        return rows
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark (Windows, spreadsheet exports) is dropped
    except UnicodeDecodeError as e:
        line_no = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{source}, line {line_no}: not UTF-8 (byte 0x{raw[e.start]:02x}); save the file as UTF-8 (a .json file "
            "is one document, so a part of it cannot be skipped)"
        ) from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{source}: not valid JSON ({e}); {setting} must point to a JSON list of objects, "
            "an object with a 'data' list, a .jsonl or a .parquet file"
        ) from e
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(
            f"{source}: expected a JSON list of objects or an object with a 'data' list, got {type(data).__name__}; "
            f"check {setting}"
        )
    return list(enumerate(data, start=1))
