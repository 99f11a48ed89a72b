"""Write the example data files in ``examples/`` (deterministic: the project's synthetic generator, fixed seeds).

    python examples/make_examples.py [--out examples]

* ``train_steps.jsonl``: 20 training rows in the whynlp/gsm8k-aug schema (``steps``: a list of equations);
* ``train_cot.jsonl``: 20 training rows in the zen-E/GSM8k-Aug schema (``cot``: the steps in one string);
* ``gsm8k_test.jsonl``: 20 evaluation rows in openai/gsm8k's schema (``answer``: a worked solution ending in
  ``#### <number>``), for ``eval.paths.gsm8k=examples/gsm8k_test.jsonl``.

``tests/test_examples.py`` checks that the committed files are what this script writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kava.data.synthetic import generate_records  # noqa: E402

ROWS = 20


def example_rows() -> dict[str, list[dict]]:
    """File name -> rows; the same every time."""
    train = generate_records(ROWS, seed=7, num_steps=3, operand_max=9)
    test_nl = generate_records(ROWS, seed=8, num_steps=3, operand_max=9, natural_language=True)
    return {
        "train_steps.jsonl": [{"question": r.question, "steps": list(r.steps), "answer": r.answer} for r in train],
        "train_cot.jsonl": [{"question": r.question, "cot": " ".join(r.steps), "answer": r.answer} for r in train],
        "gsm8k_test.jsonl": [
            {"question": r.question, "answer": ". ".join(r.steps) + f".\n#### {r.answer}"} for r in test_nl
        ],
    }


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in example_rows().items():
        (args.out / name).write_text(render(rows))
        print(f"wrote {args.out / name} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
