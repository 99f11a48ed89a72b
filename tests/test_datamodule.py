"""GSM8KDataModule over local files: schemas, bad rows (error and skip) and the length limit."""

from __future__ import annotations

import json

import pytest
from helpers import compose_train, data_kwargs

from kava.data.datamodule import GSM8KDataModule
from kava.data.records import BadRowError

GOOD = {
    "question": "Ann has 2 boxes with 3 pens each. How many pens?",
    "steps": ["<<2*3=6>>", "<<6+1=7>>"],
    "answer": "7",
}
ZEN = {"question": "Bo has 4 bags with 5 pens each. How many pens?", "cot": "<<4*5=20>> <<20-2=18>>", "answer": "18"}


def write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def make(tmp_path, rows, tokenizer, **kw):
    train = write(tmp_path / "train.jsonl", rows)
    val = write(tmp_path / "val.jsonl", [GOOD])
    dm = GSM8KDataModule(**data_kwargs(source="local", path=str(train), val_path=str(val), micro_batch_size=2, **kw))
    dm.attach_tokenizer(tokenizer)
    return dm


def test_local_files_in_both_schemas(tmp_path, tokenizer):
    dm = make(tmp_path, [GOOD, ZEN, GOOD], tokenizer, num_latents=4)
    dm.setup()
    assert len(dm.segments["train"]) == 3 and len(dm.segments["val"]) == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch.t_ids.shape[0] == 2
    assert dm.records["train"][1]["steps"] == ["<<4*5=20>>", "<<20-2=18>>"]


@pytest.mark.parametrize(
    "bad,field",
    [
        ({"steps": ["<<1*2=2>>"], "answer": "2"}, "question"),
        ({**GOOD, "answer": "seven"}, "answer"),
        ({**GOOD, "steps": []}, "steps"),
    ],
)
def test_bad_rows_stop_with_file_row_and_field(tmp_path, tokenizer, bad, field):
    dm = make(tmp_path, [GOOD, GOOD, bad], tokenizer)
    with pytest.raises(BadRowError) as err:
        dm.setup()
    msg = str(err.value)
    assert "train.jsonl" in msg and "row 3" in msg and field in msg and "data.on_bad_row=skip" in msg


def test_too_long_sample_is_a_bad_row(tmp_path, tokenizer):
    long = {**GOOD, "question": "Ann has many pens. " * 40 + "How many?"}
    dm = make(tmp_path, [GOOD, long, GOOD], tokenizer, max_length=96, num_latents=4)
    with pytest.raises(BadRowError) as err:
        dm.setup()
    msg = str(err.value)
    assert "train.jsonl" in msg and "row 2" in msg and "question" in msg and "data.max_length=96" in msg


def test_skip_mode_counts_skipped_rows(tmp_path, tokenizer, caplog):
    long = {**GOOD, "question": "Ann has many pens. " * 40 + "How many?"}
    rows = [GOOD, {**GOOD, "answer": "x"}, long, {**GOOD, "steps": []}, ZEN]
    dm = make(tmp_path, rows, tokenizer, max_length=96, num_latents=4, on_bad_row="skip")
    with caplog.at_level("WARNING"):
        dm.setup()
    assert dm.skipped["train"] == 2 and dm.too_long["train"] == 1 and len(dm.segments["train"]) == 2
    assert "skipped 2 bad rows" in caplog.text and "filtered 1 samples" in caplog.text
    assert dm.counts() == {"data/skipped_train": 2.0, "data/too_long_train": 1.0}


def test_bad_settings_are_named(tmp_path):
    from kava.schema import validate_train

    with pytest.raises(ValueError, match="data.on_bad_row"):  # checked once, before anything loads
        validate_train(compose_train(["data.on_bad_row=ignore"]))
    with pytest.raises(ValueError, match="data=local needs data.path"):
        validate_train(compose_train(["data=local"]))
    with pytest.raises(ValueError, match="data.source=hub needs data.hub_id"):
        validate_train(compose_train(["data.source=hub"]))
    with pytest.raises(FileNotFoundError, match="data.path"):
        GSM8KDataModule(**data_kwargs(source="local", path=str(tmp_path / "missing.jsonl"))).load()


def test_tokenised_cache_follows_the_rows_not_the_file_stamp(tmp_path, tokenizer, monkeypatch):
    """The cache key is the records' `datasets` fingerprint: an unchanged file (even rewritten, with a new mtime) is
    served from the cache without a tokeniser call; a changed row, or held-out splits of another size, are not."""
    import kava.data.datamodule as dmod

    rows = [{**GOOD, "question": f"Ann has {i} boxes with 3 pens each. How many pens?"} for i in range(2, 10)]
    train = write(tmp_path / "train.jsonl", rows)
    kw = dict(source="local", path=str(train), val_size=2, cache_dir=str(tmp_path / "cache"))

    def setup(**extra):
        dm = GSM8KDataModule(**data_kwargs(**{**kw, **extra}))
        dm.attach_tokenizer(tokenizer)
        dm.setup()
        return dm

    calls: list[int] = []
    real = dmod._tokenise
    monkeypatch.setattr(dmod, "_tokenise", lambda batch, **k: calls.append(len(batch["question"])) or real(batch, **k))
    first = setup()
    assert sum(calls) == 8  # 6 train + 2 held out (the test split is empty)
    calls.clear()
    write(train, rows)  # same rows, new mtime
    again = setup()
    assert calls == [] and again.tables["train"]["q"] == first.tables["train"]["q"]
    setup(val_size=3)  # other head/tail cut: both splits' rows differ
    assert sum(calls) == 8
    calls.clear()
    write(train, [*rows[:-1], {**GOOD, "answer": "8"}])  # one held-out row changed
    changed = setup()
    assert sum(calls) == 8  # a cut's fingerprint follows its file's, so both cuts are tokenised again
    assert changed.records["val"]["answer"][-1] == "8"
