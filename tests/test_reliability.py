"""Every bad input and fault of docs/reliability.md (bench/reliability.py's ROWS): one line naming what to change,
no traceback, a non-zero exit, and no run folder left behind; config errors stop before anything loads."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("kava_reliability", ROOT / "bench" / "reliability.py")
reliability = importlib.util.module_from_spec(spec)
sys.modules["kava_reliability"] = reliability
spec.loader.exec_module(reliability)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return reliability.train_tiny(tmp_path_factory.mktemp("trained"))


@pytest.mark.slow
@pytest.mark.parametrize("row", reliability.ROWS, ids=[r.name for r in reliability.ROWS])
def test_each_fault_prints_one_line_and_leaves_nothing(tmp_path, row, request):
    run = request.getfixturevalue("trained") if row.needs_run else None
    o = reliability.run_row(row, tmp_path / "work", run)
    assert o.code == row.exit_code, o.stderr[-3000:]
    assert o.line.startswith(f"{row.script}: ") and row.expect in o.line, o.stderr[-3000:]
    assert not o.traceback, o.stderr[-3000:]
    if row.keeps:  # a run that trained keeps its work
        assert set(row.keeps) <= set(o.left), o.left
    else:
        assert o.left == [], f"the run folder was left with {o.left}"
    if row.early:
        assert o.seconds < 5, f"{o.seconds:.1f} s: an early check should not load torch (~0.5-1 s when idle)"
    if run is not None:  # the run a row resumes or evaluates is untouched
        assert not list((run / ".hydra").glob("resume-*"))


def test_the_doc_lists_every_row():
    text = (ROOT / "docs" / "reliability.md").read_text()
    for row in reliability.ROWS:
        assert f"| {row.name} |" in text, row.name


def test_a_byte_order_mark_is_not_a_bad_row(tmp_path):
    from kava.data.records import load_records

    good = {"question": "Tom has 3 boxes of 4 apples. How many apples?", "steps": ["<<3*4=12>>"], "answer": "12"}
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(good) + "\n" for _ in range(3)).encode())
    records, skipped = load_records(path, on_bad_row="skip")
    assert len(records) == 3 and skipped == 0 and records[0].question == good["question"]
    as_json = tmp_path / "train.json"
    as_json.write_bytes(b"\xef\xbb\xbf" + json.dumps([good, good]).encode())
    assert len(load_records(as_json, on_bad_row="error")[0]) == 2


def test_a_full_file_system_stops_before_a_folder_is_made(tmp_path, monkeypatch):
    """No real disk can be filled here: the free space is injected."""
    import shutil

    from kava import cli
    from kava.errors import FileAccessError

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=cli.MIN_FREE_BYTES - 1))
    with pytest.raises(FileAccessError, match=r"paths.output_dir=.*the file system of .* is full \(63 MiB free\)"):
        cli.check_writable_parent(tmp_path / "a" / "run", "paths.output_dir")
    assert not (tmp_path / "a").exists() and not list(tmp_path.iterdir())  # the probe folder is gone too
    monkeypatch.undo()
    cli.check_writable_parent(tmp_path / "a" / "run", "paths.output_dir")  # room: passes
