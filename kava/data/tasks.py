"""Depth-bound synthetic tasks: problems a fixed-depth model cannot answer directly, but a written trace of
intermediate states makes easy (``data.synthetic.task``; docs/study.md).

Each task is a chain of ``length`` state updates; the CoT steps are the states after each update and the answer is
the last state, a small number, so answer parsing and evaluation stay as for arithmetic. ``size`` is the number of
states (cups, nodes, the modulus): chance accuracy is about ``1 / size``.

* ``perm``: a ball under one of ``size`` cups and ``length`` swaps of two cups; where is the ball? The swaps act by
  the symmetric group S_size on the cups, whose word problem is not solvable in constant depth for size >= 5.
* ``chase``: ``size`` nodes linked in one hidden random cycle, the links listed in random order; from a start node,
  follow ``length`` links. Pointer chasing (graph reachability with out-degree one, every other link a distractor).
* ``modsum``: ``length`` digits below ``size``; the running sum modulo ``size`` (parity for ``size=2``).

Splits are disjoint by construction: a question belongs to the split its hash falls in (``SPLIT_SHARES``), so each
split's draw rejects the others' questions and no question is in two splits, whatever the split sizes.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping

from kava.data.records import Record
from kava.schema import SYNTHETIC_TASKS, ConfigValueError, check_task

SPLIT_SHARES = {"train": (0, 900), "val": (900, 950), "test": (950, 1000)}  # hash buckets out of 1000
MAX_DRAWS_PER_ROW = 2000  # a split that needs more draws than this per row has run out of distinct problems


def _perm(rng: random.Random, length: int, size: int) -> Record:
    ball = start = rng.randint(1, size)
    swaps, states = [], []
    for _ in range(length):
        i, j = rng.sample(range(1, size + 1), 2)
        swaps.append(f"{i} {j}")
        ball = j if ball == i else i if ball == j else ball
        states.append(ball)
    return _record(
        f"There are {size} cups. The ball is under cup {start}. Swaps: {', '.join(swaps)}. Where is the ball?", states
    )


def _chase(rng: random.Random, length: int, size: int) -> Record:
    order = list(range(size))
    rng.shuffle(order)
    nxt = {order[k]: order[(k + 1) % size] for k in range(size)}
    links = list(nxt.items())
    rng.shuffle(links)
    node = rng.randrange(size)
    start, states = node, []
    for _ in range(length):
        node = nxt[node]
        states.append(node)
    return _record(
        "Links: "
        + ", ".join(f"{a}>{b}" for a, b in links)
        + f". Start at {start} and follow {length} links. Where do you end?",
        states,
    )


def _modsum(rng: random.Random, length: int, size: int) -> Record:
    digits = [rng.randrange(size) for _ in range(length)]
    total, states = 0, []
    for d in digits:
        total = (total + d) % size
        states.append(total)
    return _record(f"Add modulo {size}: " + " ".join(map(str, digits)) + ". What is the sum?", states)


def _record(question: str, states: list[int]) -> Record:
    return Record(question=question, steps=tuple(str(s) for s in states), answer=str(states[-1]))


TASKS: dict[str, Callable[[random.Random, int, int], Record]] = {"perm": _perm, "chase": _chase, "modsum": _modsum}


assert set(TASKS) == set(SYNTHETIC_TASKS) - {"arith"}, "kava.schema.SYNTHETIC_TASKS names every task"


def split_of(question: str) -> str:
    """The split a question belongs to: its hash bucket (stable across Python runs and platforms)."""
    bucket = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=8).digest(), "big") % 1000
    return next(s for s, (lo, hi) in SPLIT_SHARES.items() if lo <= bucket < hi)


def generate_task_splits(task: str, sizes: Mapping[str, int], seed: int, length: int, size: int) -> dict[str, list]:
    """``sizes[split]`` problems of ``task`` per split, each split from its own RNG stream, disjoint by question."""
    check_task(task, length, size)
    make = TASKS[task]
    out: dict[str, list[Record]] = {}
    for i, (split, n) in enumerate(sizes.items()):
        rng = random.Random(f"{task}|{seed}|{split}|{i}")
        recs: list[Record] = []
        draws = 0
        while len(recs) < n:
            rec = make(rng, length, size)
            draws += 1
            if split_of(rec.question) == split:
                recs.append(rec)
            elif draws > MAX_DRAWS_PER_ROW * (len(recs) + 1):
                raise ConfigValueError(
                    f"data.synthetic: the {task} task with num_steps={length} and size={size} has too few distinct "
                    f"problems for {n} {split} rows; raise num_steps or size"
                )
        out[split] = recs
    return out
