"""Answer strings and numbers: parsing gold answers, extracting a model's answer from its text, comparing them.

Used by the data layer (gold answers of training and eval rows) and by the metrics (predictions).
"""

from __future__ import annotations

import re

_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d+)?|\.\d+)")


def parse_number(text: str) -> float | None:
    """Parse a plain numeric answer string such as ``"1,234"``, ``"-3.5"`` or ``"12."``.

    Whitespace, thousands separators and one trailing period are removed; anything that is
    not then a plain signed decimal number (units, currency signs, words) gives ``None`` so
    callers can treat it as an unparsable answer instead of guessing.
    """
    if not isinstance(text, str):
        return None
    s = text.strip().replace(",", "")
    if s.endswith("."):
        s = s[:-1]
    if not _NUMBER_RE.fullmatch(s):
        return None
    return float(s)


# A number in free text: optional sign (not when it is an operator between two operands, as in
# "7-3"), digits with optional thousands separators, optional decimals. A sentence-ending period
# ("is 12.") is never part of it, because a decimal point must be followed by a digit.
_TEXT_NUMBER_RE = re.compile(
    r"(?:(?<![\w)])[+-])?"  # sign, unless it follows a word character or ")" (then it is an operator)
    r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"  # 1,234,567 / 1234 with optional .5
    r"|(?:(?<![\w)])[+-])?\.\d+"  # .5
)


def _to_float(match: str) -> float:
    return float(match.replace(",", ""))


def extract_answer(text: str, prompt: str = "The answer is:") -> float | None:
    """The model's numeric answer in ``text``, or ``None`` if it holds no number.

    The number right after the last occurrence of ``prompt`` wins, because the model is trained to
    state its answer there; without the prompt (or with no number after it), the last number in the
    text is taken, the usual fallback for free-form chain-of-thought output.
    """
    if not isinstance(text, str):
        return None
    if prompt:
        at = text.rfind(prompt)
        if at >= 0:
            after = _TEXT_NUMBER_RE.search(text, at + len(prompt))
            if after is not None:
                return _to_float(after.group())
    numbers = _TEXT_NUMBER_RE.findall(text)
    return _to_float(numbers[-1]) if numbers else None


def answers_match(pred: float | None, gold: float) -> bool:
    """Whether a predicted answer equals the gold one: exactly for integers, within 1e-6 relative otherwise.

    Floats need a tolerance because answers such as ``0.1 + 0.2`` are not exact in binary.
    """
    if pred is None:
        return False
    pred, gold = float(pred), float(gold)
    if pred.is_integer() and gold.is_integer():
        return pred == gold
    return abs(pred - gold) <= 1e-6 * max(1.0, abs(gold))
