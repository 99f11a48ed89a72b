"""Evaluation metrics and answer parsing helpers."""

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
