"""Training sources -> ``datasets.Dataset`` of validated records (question, steps, answer, source, row).

Sources: the synthetic generator, local ``.json``/``.jsonl``/``.parquet`` files (read by
:mod:`kava.data.files`, validated row by row with row numbers) and Hugging Face Hub data sets (validated with a
batched ``map``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

from kava.data.files import LOCAL_SUFFIXES
from kava.data.records import BadRowError, Record, load_records, record_from_row
from kava.errors import MissingFileError
from kava.hub import load_hub_dataset

COLUMNS = ("question", "steps", "answer", "source", "row")
SPLIT_FILE_STEMS = {"train": ("train",), "val": ("validation", "val", "dev"), "test": ("test",)}


def records_to_dataset(records: list[Record]) -> datasets.Dataset:
    rows = {c: [getattr(r, c) for r in records] for c in COLUMNS}
    rows["steps"] = [list(s) for s in rows["steps"]]
    features = datasets.Features(
        {
            "question": datasets.Value("string"),
            "steps": datasets.Sequence(datasets.Value("string")),
            "answer": datasets.Value("string"),
            "source": datasets.Value("string"),
            "row": datasets.Value("int64"),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


def _validate_batch(batch: dict[str, list], indices: list[int], source: str, cot_split: str) -> dict[str, list]:
    names = (*COLUMNS, "bad_field", "bad_reason")
    out: dict[str, list[Any]] = {c: [] for c in names}
    keys = list(batch)
    for j, idx in enumerate(indices):
        row = {k: batch[k][j] for k in keys}
        try:
            rec = record_from_row(row, source, idx + 1, cot_split)
            values = (rec.question, list(rec.steps), rec.answer, source, idx + 1, "", "")
        except BadRowError as err:
            values = ("", [], "", source, idx + 1, err.field, err.reason)
        for c, v in zip(names, values, strict=True):
            out[c].append(v)
    return out


def validate_arrow(ds: datasets.Dataset, source: str, on_bad_row: str, cot_split: str) -> tuple[datasets.Dataset, int]:
    """Validate every row of an Arrow data set; raise on the first bad row or drop and count them."""
    checked = ds.map(
        _validate_batch,
        batched=True,
        with_indices=True,
        remove_columns=ds.column_names,
        fn_kwargs={"source": source, "cot_split": cot_split},
        desc=f"validating {source}",
    )
    fields = checked["bad_field"]
    bad = [i for i, f in enumerate(fields) if f]
    if bad and on_bad_row == "error":
        raise BadRowError(source, bad[0] + 1, fields[bad[0]], checked["bad_reason"][bad[0]])
    if bad:
        keep = sorted(set(range(len(checked))) - set(bad))
        checked = checked.select(keep)
    return checked.remove_columns(["bad_field", "bad_reason"]), len(bad)


def load_local(path: str | Path, on_bad_row: str, cot_split: str) -> tuple[datasets.Dataset, int]:
    """One local file in either training schema (JSON, JSONL or Parquet)."""
    recs, skipped = load_records(path, on_bad_row, cot_split)
    return records_to_dataset(recs), skipped


def split_files(directory: str | Path) -> dict[str, Path]:
    """``train``/``validation``/``test`` files of a directory (any of the local suffixes)."""
    d = Path(directory)
    found: dict[str, Path] = {}
    for split, stems in SPLIT_FILE_STEMS.items():
        for stem in stems:
            hits = [d / f"{stem}{s}" for s in LOCAL_SUFFIXES if (d / f"{stem}{s}").is_file()]
            if hits:
                found[split] = hits[0]
                break
    if "train" not in found:
        raise MissingFileError(
            f"{d} holds no train.json/.jsonl/.parquet; data.path must be a training file or a directory "
            "with train/validation/test files"
        )
    return found


def load_hub(hub_id: str, split: str, on_bad_row: str, cot_split: str) -> tuple[datasets.Dataset, int]:
    """A Hub data set split (or its cached copy); fails fast offline, naming ``data.path``."""
    raw = load_hub_dataset(hub_id, split, setting="data.path")
    return validate_arrow(raw, f"{hub_id}:{split}", on_bad_row, cot_split)
