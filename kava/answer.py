"""Ask a trained model questions: ``python -m kava.answer <checkpoint or exported folder> "question" ...``.

Prints each answer, the text the decoder wrote, the forward passes it took and, with ``--readout``, what every latent
"says" at each Jacobi step (its last-layer state read through the LM head). The same from Python::

    from kava.answer import ask, load
    module = load("outputs/train/runs/<run>/checkpoints/last.ckpt")   # or an exported folder
    for a in ask(module, ["Tom has 3 boxes of 4 apples. How many apples?"], readout=True):
        print(a.answer, a.forward_passes, a.readout)

Decoders: ``student`` (the method's own: latents then the answer, or the written CoT for ``cot``/``nocot``),
``teacher`` (the backbone writes its CoT and answer) and ``student_placeholder`` (every latent replaced by the
placeholder embedding: what the answer owes to the latents).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kava.checkpoint import is_export, load_module
from kava.cli import fail
from kava.console import quiet_known_noise
from kava.data.answers import extract_answer
from kava.errors import MissingFileError, UserError
from kava.evaluation import decode
from kava.inference import encode_questions, latent_readout, stop_token_ids
from kava.lit_module import KAVALitModule
from kava.methods.base import DECODERS
from kava.training import no_hf_progress_bars


@dataclass
class Answer:
    question: str
    decoder: str
    output: str  # the text the decoder wrote (the student's starts after the answer prompt)
    answer: float | None  # the number parsed from it, None when it holds none
    forward_passes: int
    readout: list[list[str]] | None  # per latent pass (Jacobi step), each latent's top-1 token; None if not asked


def load(path: str | Path) -> KAVALitModule:
    """The trained module of a Lightning checkpoint or an exported folder, in eval mode."""
    if not Path(path).exists():
        raise MissingFileError(f"{path}: no such checkpoint or exported folder")
    if not is_export(path) and Path(path).is_dir():
        raise MissingFileError(
            f"{path}: a folder without the exported model's config; give a checkpoint (.ckpt) or a folder written by "
            "`python -m kava.export`"
        )
    return load_module(path).eval()


@torch.no_grad()
def ask(
    module: KAVALitModule,
    questions: Sequence[str],
    decoder: str = "student",
    readout: bool = False,
    max_new_tokens: int = 16,
    max_cot_tokens: int = 128,
) -> list[Answer]:
    """Greedy answers of ``module`` to ``questions`` with ``decoder``; ``readout``: each latent's top-1 token at
    every pass."""
    if decoder not in DECODERS:
        raise UserError(f"decoder={decoder}: choose one of {', '.join(DECODERS)}")
    latents = module.student is not None
    if not latents and (decoder == "student_placeholder" or readout):
        what = "the placeholder decoder" if decoder == "student_placeholder" else "a latent read-out"
        raise UserError(f"this model's method has no latent tokens, so it has no {what}; use --decoder student|teacher")
    tok = module.tokenizer
    gen = decode(module, list(questions), decoder, max_new_tokens, max_cot_tokens, stop_token_ids(tok))
    texts = [module.method.answer_text(t, decoder) for t in gen.texts]
    steps: list[list[list[str]]] | None = None
    if readout:
        q_ids, q_mask = encode_questions(tok, list(questions), module.device)
        ids, _ = latent_readout(module.student, module.backbone, q_ids, q_mask, k=1)
        top1 = ids[..., 0].cpu()  # (passes, B, M)
        steps = [[[tok.decode([int(i)]) for i in per_pass[b]] for per_pass in top1] for b in range(len(questions))]
    return [
        Answer(q, decoder, text, extract_answer(text, module.answer_prompt), n, steps[b] if steps else None)
        for b, (q, text, n) in enumerate(zip(questions, texts, gen.forward_passes, strict=True))
    ]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m kava.answer", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a Lightning checkpoint (last.ckpt) or a folder written by `python -m kava.export`")
    ap.add_argument("questions", nargs="+", help="one or more questions, each one argument")
    ap.add_argument("--decoder", default="student", choices=DECODERS)
    ap.add_argument("--readout", action="store_true", help="each latent's top-1 token at every Jacobi step")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="answer budget after the latents")
    ap.add_argument("--max-cot-tokens", type=int, default=128, help="budget of a decoder that writes its CoT")
    args = ap.parse_args(argv)
    quiet_known_noise()
    try:
        with no_hf_progress_bars():
            module = load(args.model)
        answers = ask(module, args.questions, args.decoder, args.readout, args.max_new_tokens, args.max_cot_tokens)
    except UserError as err:
        fail("kava.answer", err)
    for a in answers:
        print(f"Q: {a.question}")
        number = a.answer if a.answer is not None else "(no number)"
        print(f"A: {number}   [{a.decoder}, {a.forward_passes} forward passes]")
        print(f"   wrote: {a.output.strip()!r}")
        for t, tokens in enumerate(a.readout or [], start=1):
            print(f"   step {t}: {' '.join(repr(x) for x in tokens)}")


if __name__ == "__main__":
    main()
