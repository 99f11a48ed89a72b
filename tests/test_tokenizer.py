"""Tests for the offline tiny BPE tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from kava.data.synthetic import generate_records
from kava.data.tokenizer import train_tiny_tokenizer


def _texts() -> list[str]:
    recs = generate_records(200, seed=0)
    return [f"{r.question} {' '.join(r.steps)} The answer is: {r.answer}" for r in recs]


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer(_texts(), vocab_size=400)


def test_special_token_ids(tok) -> None:
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "<s>", "</s>"]
    assert tok.padding_side == "left"
    assert len(tok) <= 400


def test_bos_added_only_with_special_tokens(tok) -> None:
    with_bos = tok("hello 12")["input_ids"]
    without = tok("hello 12", add_special_tokens=False)["input_ids"]
    assert with_bos[0] == 1 and with_bos[1:] == without
    assert 1 not in without and 2 not in with_bos


def test_left_padding(tok) -> None:
    batch = tok(["a", "apples and chairs"], padding=True)
    assert batch["input_ids"][0][0] == 0 and batch["attention_mask"][0][0] == 0
    assert batch["input_ids"][0][-1] != 0


def test_digits_are_single_tokens_and_round_trip(tok) -> None:
    text = " The answer is: 42"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    for number in ("42", "12345", "1000"):
        pieces = tok.convert_ids_to_tokens(tok(f"x {number}", add_special_tokens=False)["input_ids"])
        digit_pieces = [p for p in pieces if any(ch.isdigit() for ch in p)]
        assert digit_pieces == list(number)
    assert all(not (any(c.isdigit() for c in t) and len(t) > 1) for t in tok.get_vocab())


def test_deterministic(tok) -> None:
    again = train_tiny_tokenizer(_texts(), vocab_size=400)
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


def test_save_load_identical(tok, tmp_path: Path) -> None:
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = ["Lena has 7 boxes with 12 apples in each box.", " <<7*12=84>> The answer is: 84", "über ☃"]
    for text in texts:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
        assert loaded(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    assert loaded.padding_side == "left"
    assert loaded.decode(loaded("über ☃", add_special_tokens=False)["input_ids"]) == "über ☃"


def test_rejects_too_small_vocab() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tiny_tokenizer(["abc"], vocab_size=100)
