"""Deterministic synthetic multi-step arithmetic word problems in the GSM8k-AUG schema.

Used for offline smoke tests and tiny training runs: every problem is a chain
``a*b=x``, ``x±c=y``, ... whose operands are all stated in the question, so it is solvable and
the steps can be checked mechanically.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kava.data.records import Record
from kava.data.tasks import generate_task_splits
from kava.schema import ConfigValueError, check_task

_NAMES: tuple[tuple[str, str], ...] = (
    ("Lena", "she"),
    ("Omar", "he"),
    ("Maya", "she"),
    ("Tom", "he"),
    ("Priya", "she"),
    ("Jonas", "he"),
    ("Aiko", "she"),
    ("Diego", "he"),
    ("Sara", "she"),
    ("Felix", "he"),
)


@dataclass(frozen=True)
class _Template:
    """Phrasing of one problem family; ``{n}``/``{p}`` are name/pronoun, ``{a}``... are numbers."""

    intro: str  # states a and b
    add: tuple[str, ...]  # present tense, "{p} ..." follows; states c
    sub: tuple[str, ...]
    add_nl: tuple[str, ...]  # gerund phrases for natural-language steps, aligned with ``add``
    sub_nl: tuple[str, ...]
    question: str
    first_nl: str  # natural-language first step
    later_nl: str  # "After {act} {p} {verb} {eq} {item}"
    item: str


_TEMPLATES: tuple[_Template, ...] = (
    _Template(
        intro="{n} has {a} boxes with {b} apples in each box.",
        add=("buys {c} more apples", "picks {c} more apples"),
        sub=("gives away {c} apples", "eats {c} apples"),
        add_nl=("buying {c} more", "picking {c} more"),
        sub_nl=("giving away {c}", "eating {c}"),
        question="How many apples does {n} have now?",
        first_nl="{n} has {eq} apples",
        later_nl="After {act} {p} has {eq} apples",
        item="apples",
    ),
    _Template(
        intro="{n} buys {a} packs of stickers with {b} stickers in each pack.",
        add=("gets {c} more stickers from a friend", "finds {c} more stickers"),
        sub=("uses {c} stickers on a poster", "gives {c} stickers to a classmate"),
        add_nl=("getting {c} more", "finding {c} more"),
        sub_nl=("using {c}", "giving away {c}"),
        question="How many stickers does {n} have now?",
        first_nl="{n} has {eq} stickers",
        later_nl="After {act} {p} has {eq} stickers",
        item="stickers",
    ),
    _Template(
        intro="{n} sets up {a} rows of chairs with {b} chairs in each row.",
        add=("adds {c} more chairs", "brings {c} more chairs"),
        sub=("takes away {c} chairs", "removes {c} chairs"),
        add_nl=("adding {c} more", "bringing {c} more"),
        sub_nl=("taking away {c}", "removing {c}"),
        question="How many chairs has {n} set up now?",
        first_nl="{n} sets up {eq} chairs",
        later_nl="After {act} there are {eq} chairs",
        item="chairs",
    ),
    _Template(
        intro="{n} has {a} bags with {b} marbles in each bag.",
        add=("wins {c} more marbles", "buys {c} more marbles"),
        sub=("loses {c} marbles", "trades away {c} marbles"),
        add_nl=("winning {c} more", "buying {c} more"),
        sub_nl=("losing {c}", "trading away {c}"),
        question="How many marbles does {n} have now?",
        first_nl="{n} has {eq} marbles",
        later_nl="After {act} {p} has {eq} marbles",
        item="marbles",
    ),
    _Template(
        intro="{n} bakes {a} trays of cookies with {b} cookies on each tray.",
        add=("bakes {c} more cookies", "gets {c} more cookies from a neighbor"),
        sub=("sells {c} cookies", "eats {c} cookies"),
        add_nl=("baking {c} more", "getting {c} more"),
        sub_nl=("selling {c}", "eating {c}"),
        question="How many cookies does {n} have now?",
        first_nl="{n} has {eq} cookies",
        later_nl="After {act} {p} has {eq} cookies",
        item="cookies",
    ),
    _Template(
        intro="{n} has {a} shelves with {b} books on each shelf.",
        add=("buys {c} more books", "receives {c} more books as a gift"),
        sub=("donates {c} books", "lends {c} books to friends"),
        add_nl=("buying {c} more", "receiving {c} more"),
        sub_nl=("donating {c}", "lending {c}"),
        question="How many books does {n} have now?",
        first_nl="{n} has {eq} books",
        later_nl="After {act} {p} has {eq} books",
        item="books",
    ),
)


def _validate(n: int, num_steps: int, operand_min: int, operand_max: int) -> None:
    """Reject settings that cannot produce valid problems, naming the offending setting."""
    if n < 0:
        raise ValueError(f"the number of synthetic records must be >= 0; got n={n}")
    if num_steps < 1:
        raise ConfigValueError(f"data.synthetic.num_steps must be >= 1; got {num_steps}")
    if operand_min < 1:
        raise ConfigValueError(f"data.synthetic.operand_min must be >= 1; got {operand_min}")
    if operand_max < operand_min:
        raise ConfigValueError(
            f"data.synthetic.operand_max ({operand_max}) must be >= data.synthetic.operand_min ({operand_min})"
        )


def _make_record(rng: random.Random, num_steps: int, lo: int, hi: int, natural_language: bool) -> Record:
    """Draw one problem; the RNG call sequence does not depend on ``natural_language``."""
    tpl = rng.choice(_TEMPLATES)
    name, pronoun = rng.choice(_NAMES)
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    x = a * b
    sentences = [tpl.intro.format(n=name, a=a, b=b)]
    eq = f"{a}*{b}={x}"
    steps = [tpl.first_nl.format(n=name, eq=eq) if natural_language else f"<<{eq}>>"]
    for k in range(1, num_steps):
        c = rng.randint(lo, hi)
        subtract = rng.random() < 0.5 and x - c >= 0
        phrases, acts = (tpl.sub, tpl.sub_nl) if subtract else (tpl.add, tpl.add_nl)
        i = rng.randrange(len(phrases))
        y = x - c if subtract else x + c
        lead = pronoun.capitalize() if k == 1 else f"Then {pronoun}"
        sentences.append(f"{lead} {phrases[i].format(c=c)}.")
        eq = f"{x}{'-' if subtract else '+'}{c}={y}"
        if natural_language:
            steps.append(tpl.later_nl.format(act=acts[i].format(c=c), p=pronoun, eq=eq))
        else:
            steps.append(f"<<{eq}>>")
        x = y
    sentences.append(tpl.question.format(n=name))
    return Record(question=" ".join(sentences), steps=tuple(steps), answer=str(x))


def generate_records(
    n: int,
    seed: int,
    num_steps: int = 3,
    operand_min: int = 2,
    operand_max: int = 19,
    natural_language: bool = False,
) -> list[Record]:
    """Generate ``n`` chained arithmetic word problems, deterministically from ``seed``.

    Step 1 is ``a*b=x``; each later step adds or subtracts a new operand (subtraction only when
    the result stays >= 0). ``natural_language`` only changes how steps are written, so both
    variants of the same seed share questions and answers.
    """
    _validate(n, num_steps, operand_min, operand_max)
    rng = random.Random(seed)
    return [_make_record(rng, num_steps, operand_min, operand_max, natural_language) for _ in range(n)]


def generate_splits(
    sizes: dict[str, int],
    seed: int,
    task: str = "arith",
    size: int | None = None,
    num_steps: int = 3,
    operand_min: int = 2,
    operand_max: int = 19,
    natural_language: bool = False,
) -> dict[str, list[Record]]:
    """Every split of ``data.synthetic``: ``sizes[split]`` records per split, in the order of ``sizes``.

    ``task=arith`` (the chained arithmetic above) draws split i from ``seed + 1000 * i``; its splits may share a
    problem. The depth-bound tasks (``kava.data.tasks``: perm, chase, modsum) take ``num_steps`` as their chain length
    and ``size`` as their number of states (the operand and wording knobs are arithmetic's alone), and their splits
    are disjoint.
    """
    check_task(task, num_steps, size)
    if task != "arith":
        return generate_task_splits(task, sizes, seed, num_steps, size)
    knobs = dict(num_steps=num_steps, operand_min=operand_min, operand_max=operand_max)
    return {
        split: generate_records(n, seed=seed + 1000 * i, natural_language=natural_language, **knobs)
        for i, (split, n) in enumerate(sizes.items())
    }


def write_jsonl(records: Sequence[Record], path: str | Path) -> None:
    """Write records as JSONL in the whynlp/gsm8k-aug schema (readable by ``load_records``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            row = {"question": r.question, "steps": list(r.steps), "answer": r.answer}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
