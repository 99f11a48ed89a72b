"""Answer extraction, answer comparison and the accuracy metric."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

from kava.data.answers import answers_match, extract_answer, parse_number
from kava.metrics import AnswerAccuracy


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She has 1,234,567 apples", 1234567.0),
        ("The total is 1,000.", 1000.0),
        ("so the result is -3", -3.0),
        ("x = -3.5.", -3.5),
        ("It costs 3.5 dollars", 3.5),
        ("add .5 cup", 0.5),
        ("The answer is 12.", 12.0),
        ("7-3=4", 4.0),  # "-" between operands is an operator, not a sign
        ("10 - 3 = 7 then 2", 2.0),  # absent prompt: the last number
        ("The answer is: 12 and then 13", 12.0),  # the number after the prompt wins over a later one
        ("3+4=7 The answer is: 7", 7.0),
        ("3+4=8 The answer is: 7", 7.0),  # ... and over an earlier one
        ("The answer is: 1 The answer is: 2 then 3", 2.0),  # the LAST prompt occurrence
        ("The answer is: -1,250.75.", -1250.75),
        ("The answer is:42", 42.0),
        ("We get 5. The answer is: unknown", 5.0),  # no number after the prompt: last number in the text
        ("no digits here", None),
        ("The answer is:", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: float | None) -> None:
    assert extract_answer(text) == expected


def test_extract_answer_custom_prompt() -> None:
    assert extract_answer("#### 18 and 20", prompt="####") == 18.0
    assert extract_answer("The answer is: 5 #### 18 and 20") == 5.0
    assert extract_answer("1 then 2", prompt="") == 2.0


def test_parse_number_unchanged() -> None:
    assert parse_number("1,234") == 1234.0
    assert parse_number(" -3.5 ") == -3.5
    assert parse_number("12.") == 12.0
    assert parse_number("12 apples") is None
    assert parse_number("$5") is None


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        (None, 3.0, False),
        (3.0, 3.0, True),
        (3, 3.0, True),
        (4.0, 3.0, False),
        (-3.0, 3.0, False),
        (1234567.0, 1234567.0, True),
        (1234568.0, 1234567.0, False),  # integers: exact, no relative tolerance
        (0.1 + 0.2, 0.3, True),
        (0.3000001, 0.3, True),  # 1e-7 absolute within 1e-6 * max(1, |gold|)
        (0.30001, 0.3, False),
        (2.5, 2.0, False),
        (2.0000000001, 2.0, True),  # float vs integral gold: tolerance applies
        (1e7 + 5, 1e7 + 0.5, True),  # relative 1e-6 of a large gold
        (1e7 + 20, 1e7 + 0.5, False),
        (math.nan, 1.0, False),
    ],
)
def test_answers_match(pred: float | None, gold: float, expected: bool) -> None:
    assert answers_match(pred, gold) is expected


def test_answer_accuracy_accumulates_updates() -> None:
    metric = AnswerAccuracy()
    metric.update([1.0, None, 3.0], [1.0, 2.0, 4.0])  # 1 of 3
    metric.update([0.1 + 0.2], [0.3])  # 2 of 4
    value = metric.compute()
    assert isinstance(value, torch.Tensor)
    assert value.item() == pytest.approx(0.5)
    assert metric.correct.item() == 2 and metric.total.item() == 4
    metric.update([5.0, 6.0, 7.0, 8.0], [5.0, 6.0, 7.0, 8.0])  # 6 of 8
    assert metric.compute().item() == pytest.approx(0.75)
    metric.reset()
    metric.update([1.0], [1.0])
    assert metric.compute().item() == 1.0


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
def test_answer_accuracy_empty_is_zero() -> None:
    metric = AnswerAccuracy()
    value = metric.compute()
    assert value.item() == 0.0 and not torch.isnan(value)
    metric.update([], [])
    assert metric.compute().item() == 0.0


def test_answer_accuracy_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 gold"):
        AnswerAccuracy().update([1.0, 2.0], [1.0])


def test_answer_accuracy_states_sum_on_sync() -> None:
    metric = AnswerAccuracy()
    assert metric._reductions["correct"] is dim_zero_sum and metric._reductions["total"] is dim_zero_sum
    # Merging two metrics' states the way a distributed sync does (sum) gives the pooled accuracy.
    a, b = AnswerAccuracy(), AnswerAccuracy()
    a.update([1.0, 2.0], [1.0, 0.0])
    b.update([3.0, 4.0, 5.0], [3.0, 4.0, 5.0])
    a.merge_state(b)
    assert a.compute().item() == pytest.approx(4 / 5)
