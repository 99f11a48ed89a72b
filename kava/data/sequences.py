"""Records -> token segments ``Q``, ``C``, ``P``, ``A`` (DESIGN 2.1), and the length check."""

from __future__ import annotations

from dataclasses import dataclass

from kava.data.records import Record

DEFAULT_PROMPT = "The answer is:"


@dataclass(frozen=True)
class Segments:
    """Token ids of one sample. ``answer`` ends with EOS."""

    question: tuple[int, ...]
    cot: tuple[int, ...]
    prompt: tuple[int, ...]
    answer: tuple[int, ...]

    def teacher_len(self) -> int:
        return len(self.question) + len(self.cot) + len(self.prompt) + len(self.answer)

    def student_len(self, num_latents: int) -> int:
        return len(self.question) + num_latents + 2 + len(self.prompt) + len(self.answer)


def encode(record: Record, tokenizer, prompt: str = DEFAULT_PROMPT, drop_last_step: bool = True) -> Segments:
    """Tokenise the four segments separately, so every boundary is exact whatever the tokenizer merges."""
    steps = record.steps[:-1] if drop_last_step else record.steps
    q = tokenizer(record.question)["input_ids"]  # BOS if the tokenizer adds one
    c = tokenizer(" " + " ".join(steps), add_special_tokens=False)["input_ids"] if steps else []
    p = tokenizer(" " + prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(" " + record.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if not p:
        raise ValueError(f"data.answer_prompt '{prompt}' tokenises to nothing; give a non-empty prompt")
    return Segments(tuple(q), tuple(c), tuple(p), tuple(a))
