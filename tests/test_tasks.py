"""The depth-bound synthetic tasks (kava/data/tasks.py): every CoT step and answer recomputed from the question's
text alone, disjoint splits, and a tokenizer that covers every symbol."""

from __future__ import annotations

import re

import pytest

from kava.data.answers import parse_number
from kava.data.synthetic import generate_splits
from kava.data.tasks import TASKS, split_of
from kava.data.tokenizer import train_tiny_tokenizer

SIZES = {"train": 300, "val": 60, "test": 60}


def solve_perm(question: str) -> list[int]:
    n = int(re.search(r"There are (\d+) cups", question).group(1))
    ball = int(re.search(r"under cup (\d+)\.", question).group(1))
    swaps = re.search(r"Swaps: ([\d ,]+)\.", question).group(1).split(", ")
    cups = list(range(1, n + 1))  # cups[k] = the label at place k; the ball follows its place's label
    place = cups.index(ball)
    out = []
    for swap in swaps:
        i, j = (int(x) for x in swap.split())
        # a swap exchanges what is under cups i and j: move the ball as a permutation applied to a one-hot vector
        vec = [int(c == place + 1) for c in cups]
        vec[i - 1], vec[j - 1] = vec[j - 1], vec[i - 1]
        place = vec.index(1)
        out.append(place + 1)
    return out


def solve_chase(question: str) -> list[int]:
    links = dict((int(a), int(b)) for a, b in re.findall(r"(\d+)>(\d+)", question))
    start, hops = (int(x) for x in re.search(r"Start at (\d+) and follow (\d+) links", question).groups())
    assert sorted(links) == sorted(links.values()) == list(range(len(links)))  # a permutation of the nodes
    path = [start]
    for _ in range(hops):
        path.append(links[path[-1]])
    return path[1:]


def solve_modsum(question: str) -> list[int]:
    m = int(re.search(r"modulo (\d+):", question).group(1))
    digits = [int(d) for d in re.search(r":([\d ]+)\.", question).group(1).split()]
    return [sum(digits[: k + 1]) % m for k in range(len(digits))]


SOLVERS = {"perm": solve_perm, "chase": solve_chase, "modsum": solve_modsum}


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize(("length", "size"), [(3, 4), (6, 5), (9, 9)])
def test_every_step_and_answer_is_right(task: str, length: int, size: int) -> None:
    splits = generate_splits(SIZES, seed=3, task=task, size=size, num_steps=length)
    assert {s: len(r) for s, r in splits.items()} == SIZES
    for recs in splits.values():
        for rec in recs:
            states = SOLVERS[task](rec.question)
            assert len(states) == length
            assert [int(s) for s in rec.steps] == states, rec
            assert parse_number(rec.answer) == states[-1]
            assert all(0 <= s <= size for s in states)


def test_chase_is_one_cycle_so_short_walks_never_revisit() -> None:
    for rec in generate_splits({"train": 200}, seed=0, task="chase", size=10, num_steps=9)["train"]:
        start = int(re.search(r"Start at (\d+)", rec.question).group(1))
        assert len({start, *map(int, rec.steps)}) == 10


@pytest.mark.parametrize("task", sorted(TASKS))
def test_splits_are_disjoint_deterministic_and_do_not_depend_on_the_other_sizes(task: str) -> None:
    splits = generate_splits(SIZES, seed=0, task=task, size=5, num_steps=6)
    questions = {s: {r.question for r in recs} for s, recs in splits.items()}
    assert not questions["train"] & questions["val"]
    assert not questions["train"] & questions["test"]
    assert not questions["val"] & questions["test"]
    assert all(split_of(q) == s for s, qs in questions.items() for q in qs)
    assert generate_splits(SIZES, seed=0, task=task, size=5, num_steps=6) == splits
    assert generate_splits(SIZES, seed=1, task=task, size=5, num_steps=6) != splits
    bigger = generate_splits({**SIZES, "train": 900}, seed=0, task=task, size=5, num_steps=6)
    assert bigger["test"] == splits["test"] and bigger["train"][:300] == splits["train"]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_tiny_tokenizer_covers_every_symbol_with_single_digit_states(task: str) -> None:
    recs = generate_splits(SIZES, seed=0, task=task, size=9, num_steps=8)
    texts = [r.question for r in recs["train"]] + [" " + " ".join(r.steps) for r in recs["train"]]
    tok = train_tiny_tokenizer(texts, vocab_size=300)
    for rec in recs["test"]:  # held-out text: every character round-trips, every state is its own token
        cot = " " + " ".join(rec.steps)
        for text in (rec.question, cot):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id is None or tok.unk_token_id not in ids
            assert tok.decode(ids) == text
        pieces = tok.convert_ids_to_tokens(tok(cot, add_special_tokens=False)["input_ids"])
        assert [p for p in pieces if p.isdigit()] == list(rec.steps)


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match="data.synthetic.task=sort"):
        generate_splits(SIZES, seed=0, task="sort", size=5)
    with pytest.raises(ValueError, match=r"data.synthetic.size=11: the chase task takes sizes 2..10"):
        generate_splits(SIZES, seed=0, task="chase", size=11)
    with pytest.raises(ValueError, match="data.synthetic.size=None: the perm task takes sizes 2..9"):
        generate_splits(SIZES, seed=0, task="perm")
    with pytest.raises(ValueError, match="task=arith has none"):
        generate_splits(SIZES, seed=0, task="arith", size=5)
    with pytest.raises(ValueError, match="too few distinct problems"):
        generate_splits({"test": 50}, seed=0, task="modsum", size=2, num_steps=1)


def test_arith_splits_are_the_generator_s_own_streams() -> None:
    from kava.data.synthetic import generate_records

    splits = generate_splits({"train": 5, "val": 3, "test": 4}, seed=7, num_steps=2, operand_max=9)
    assert splits["val"] == generate_records(3, seed=1007, num_steps=2, operand_max=9)
    assert splits["test"] == generate_records(4, seed=2007, num_steps=2, operand_max=9)
