"""Records -> token segments ``Q``, ``C``, ``P``, ``A`` (docs/design.md §2.1), and the length check."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kava.data.answers import parse_number
from kava.data.records import Record
from kava.schema import ConfigValueError

DEFAULT_PROMPT = "The answer is:"


@dataclass(frozen=True)
class Segments:
    """Token ids of one sample. ``answer`` ends with EOS."""

    question: tuple[int, ...]
    cot: tuple[int, ...]
    prompt: tuple[int, ...]
    answer: tuple[int, ...]
    gold: float | None = None  # numeric answer, for accuracy; not part of any sequence

    def teacher_len(self) -> int:
        return len(self.question) + len(self.cot) + len(self.prompt) + len(self.answer)

    def student_len(self, num_latents: int) -> int:
        return len(self.question) + num_latents + 2 + len(self.prompt) + len(self.answer)


def encode(record: Record, tokenizer, prompt: str = DEFAULT_PROMPT, drop_last_step: bool = True) -> Segments:
    """Tokenise a record's four segments."""
    seg = encode_parts(record.question, record.steps, record.answer, tokenizer, prompt, drop_last_step)
    return Segments(seg.question, seg.cot, seg.prompt, seg.answer, parse_number(record.answer))


def encode_parts(
    question: str,
    steps: Sequence[str],
    answer: str,
    tokenizer,
    prompt: str = DEFAULT_PROMPT,
    drop_last_step: bool = True,
) -> Segments:
    """Tokenise the four segments separately, so every boundary is exact whatever the tokenizer merges."""
    steps = list(steps[:-1] if drop_last_step else steps)
    q = tokenizer(question)["input_ids"]  # BOS if the tokenizer adds one
    c = tokenizer(" " + " ".join(steps), add_special_tokens=False)["input_ids"] if steps else []
    p = tokenizer(" " + prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if not p:
        raise ConfigValueError(f"data.answer_prompt '{prompt}' tokenises to nothing; give a non-empty prompt")
    return Segments(tuple(q), tuple(c), tuple(p), tuple(a))
