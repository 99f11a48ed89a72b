"""Evaluate a checkpoint: latent (student) and CoT (teacher) decoding on named evaluation sets."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from kava.checkpoint import load_module
from kava.data.answers import answers_match, extract_answer, parse_number
from kava.data.datamodule import GSM8KDataModule
from kava.data.eval_sets import EVAL_SETS, EvalItem, load_eval_set
from kava.inference import (
    Generation,
    encode_questions,
    latent_readout,
    stop_token_ids,
)
from kava.lit_module import KAVALitModule
from kava.metrics import AnswerAccuracy
from kava.preflight import PreflightError
from kava.schema import ConfigValueError

log = logging.getLogger(__name__)
DEFAULT_SETS = ("gsm8k", "gsm_hard", "svamp", "multiarith")


@dataclass
class DecoderResult:
    accuracy: float
    mean_forward_passes: float
    questions_per_s: float
    n: int
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy,
            "mean_forward_passes": self.mean_forward_passes,
            "questions_per_s": self.questions_per_s,
            "n": self.n,
        }


OWN_SETS = ("synthetic", "local")  # the split the run itself held out


def own_test_items(data_cfg: Mapping[str, Any], split: str = "test") -> list[EvalItem]:
    """The held-out split of the run's own data: regenerated synthetic problems, or the local test file alone."""
    if data_cfg.get("path"):
        from kava.data.sources import load_local, split_files

        path = Path(str(data_cfg["path"]))
        test = data_cfg.get("test_path") or (split_files(path).get("test") if path.is_dir() else None)
        if not test:
            raise PreflightError(
                f"the checkpoint was trained on data.path={path} without a test file: train with "
                "data.test_path=<file>, or name the sets, e.g. eval_sets=[gsm8k] eval.paths.gsm8k=<local copy> "
                f"(sets: {', '.join(EVAL_SETS)})"
            )
        table, _ = load_local(test, data_cfg["on_bad_row"], data_cfg["cot_split"])
    elif data_cfg.get("source") == "synthetic":
        table = GSM8KDataModule(**{k: v for k, v in data_cfg.items() if k != "_target_"}).load()[split]
    else:
        raise PreflightError(
            f"eval set 'synthetic'/'local' is the run's own test split, and this checkpoint trained on the Hub set "
            f"{data_cfg.get('hub_id') or data_cfg.get('name')}: name its sets instead ({', '.join(EVAL_SETS)})"
        )
    if not len(table):
        raise PreflightError(f"the run's {split} split is empty (data.synthetic.num_{split}=0?): name eval_sets")
    cols = (table["question"], table["answer"], table["source"], table["row"], table["steps"])
    return [EvalItem(q, float(parse_number(a)), s, r, tuple(st)) for q, a, s, r, st in zip(*cols, strict=True)]


def default_sets(data_cfg: Mapping[str, Any]) -> list[str]:
    """The run's own test split (``synthetic``, or ``local`` for ``data=local``) unless it trained on a Hub data set
    (also from a local copy of it, ``data=gsm8k_aug data.path=...``): then the four standard sets."""
    if data_cfg.get("source") == "local" or (data_cfg.get("source") == "synthetic" and data_cfg.get("path")):
        return ["local"]
    return ["synthetic"] if data_cfg.get("source") == "synthetic" else list(DEFAULT_SETS)


def load_items(name: str, paths: Mapping[str, Any], data_cfg: Mapping[str, Any], limit: int | None) -> list[EvalItem]:
    if name in OWN_SETS:
        items = own_test_items(data_cfg)
        return items[:limit] if limit is not None else items
    if name not in EVAL_SETS:
        raise ConfigValueError(f"unknown eval set '{name}'; choose from {', '.join(OWN_SETS + tuple(EVAL_SETS))}")
    return load_eval_set(name, paths.get(name), limit)


def decode(
    module: KAVALitModule, questions: Sequence[str], decoder: str, max_new_tokens: int, max_cot_tokens: int, stops
) -> Generation:
    """Greedy generations for ``questions`` with one decoder: ``student`` (the method's), ``student_placeholder``
    (latents replaced by the placeholder) or ``teacher`` (the backbone writes its CoT)."""
    q_ids, q_mask = encode_questions(module.tokenizer, questions, module.device)
    return module.method.generate(q_ids, q_mask, max_new_tokens, max_cot_tokens, stops, decoder=decoder)


def evaluate_items(
    module: KAVALitModule,
    items: Sequence[EvalItem],
    decoder: str,
    batch_size: int,
    max_new_tokens: int,
    max_cot_tokens: int,
    progress: Progress | None = None,
    label: str = "",
) -> DecoderResult:
    """Greedy-decode every item in batches; accuracy, mean forward passes and questions per second."""
    metric = AnswerAccuracy()
    stops = stop_token_ids(module.tokenizer)
    prompt = module.answer_prompt
    passes, preds_out, elapsed = [], [], 0.0
    task = progress.add_task(f"{label} {decoder}", total=len(items)) if progress else None
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        t0 = time.perf_counter()
        gen = decode(module, [it.question for it in chunk], decoder, max_new_tokens, max_cot_tokens, stops)
        elapsed += time.perf_counter() - t0
        # the student's text starts after P; the teacher writes C P A itself
        preds = [extract_answer(module.method.answer_text(t, decoder), prompt) for t in gen.texts]
        metric.update(preds, [it.answer for it in chunk])
        passes += gen.forward_passes
        for it, text, pred, n in zip(chunk, gen.texts, preds, gen.forward_passes, strict=True):
            preds_out.append(
                {
                    "source": it.source,
                    "row": it.row,
                    "question": it.question,
                    "gold": it.answer,
                    "decoder": decoder,
                    "output": text,
                    "prediction": pred,
                    "forward_passes": n,
                }
            )
        if progress is not None:
            progress.advance(task, len(chunk))
    n = len(items)
    for p in preds_out:
        p["correct"] = answers_match(p["prediction"], p["gold"])
    return DecoderResult(
        accuracy=float(metric.compute()),
        mean_forward_passes=sum(passes) / max(n, 1),
        questions_per_s=n / elapsed if elapsed > 0 else 0.0,
        n=n,
        predictions=preds_out,
    )


def readout_items(
    module: KAVALitModule, items: Sequence[EvalItem], batch_size: int, k: int, set_name: str, out
) -> dict[str, Any]:
    """Write each latent's top-k read-out per Jacobi step to ``out`` (one JSON line per question) and return the
    share of latents whose top-1 token occurs in the question's reference CoT (items without one are skipped)."""
    tok = module.tokenizer
    hits: torch.Tensor | None = None  # per latent pass: Jacobi steps, or one for sequential latents
    counted = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        q_ids, q_mask = encode_questions(tok, [it.question for it in chunk], module.device)
        ids, probs = latent_readout(module.student, module.backbone, q_ids, q_mask, k)
        ids, probs = ids.cpu(), probs.cpu()
        hits = torch.zeros(ids.shape[0]) if hits is None else hits
        for b, it in enumerate(chunk):
            cot_ids = set(tok(" " + " ".join(it.steps), add_special_tokens=False)["input_ids"]) if it.steps else None
            steps = []
            for t in range(ids.shape[0]):
                slots = []
                for m in range(ids.shape[2]):
                    top = [
                        [tok.decode([i]), round(float(p), 4)] for i, p in zip(ids[t, b, m], probs[t, b, m], strict=True)
                    ]
                    slots.append(
                        {
                            "slot": m,
                            "top": top,
                            "top1_in_cot": None if cot_ids is None else int(ids[t, b, m, 0]) in cot_ids,
                        }
                    )
                steps.append(slots)
                if cot_ids is not None:
                    hits[t] += sum(slot["top1_in_cot"] for slot in slots)
            counted += cot_ids is not None
            out.write(
                json.dumps(
                    {"set": set_name, "row": it.row, "question": it.question, "cot": list(it.steps), "steps": steps}
                )
                + "\n"
            )
    n_latents = counted * module.student.num_tokens
    per_step = (hits / max(n_latents, 1)).tolist() if hits is not None else []
    return {
        "questions_with_cot": counted,
        "share_top1_in_cot": sum(per_step) / len(per_step) if n_latents and per_step else None,
        "share_top1_in_cot_by_step": per_step if n_latents else None,
    }


def markdown_table(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    present = {d for r in results.values() for d in r}
    decoders = [d for d in ("student", "student_placeholder", "teacher") if d in present]
    head = ["set", "n"] + [f"{d} {c}" for d in decoders for c in ("acc %", "fwd passes", "q/s")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, per in results.items():
        n = next(iter(per.values()))["n"]
        row = [name, str(n)]
        for d in decoders:
            r = per.get(d)
            row += (
                [f"{100 * r['accuracy']:.1f}", f"{r['mean_forward_passes']:.1f}", f"{r['questions_per_s']:.1f}"]
                if r
                else ["", "", ""]
            )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def run_evaluation(
    ckpt_path: str,
    out_dir: str | Path,
    eval_sets: Sequence[str] | None = None,
    teacher: bool = False,
    student: bool | None = None,
    batch_size: int = 64,
    max_new_tokens: int = 16,
    max_cot_tokens: int = 256,
    limit: int | None = None,
    paths: Mapping[str, Any] | None = None,
    device: str = "auto",
    loggers: Sequence[Any] = (),
    ablate_latents: bool = True,
    inspect_latents: bool = False,
    inspect_top_k: int = 5,
) -> dict[str, dict[str, dict[str, float]]]:
    """Evaluate a checkpoint; write ``results.json``, ``results.md`` and ``predictions.jsonl`` to ``out_dir``.

    With the student decoded, ``ablate_latents`` adds the decoder ``student_placeholder`` (latents replaced by the
    placeholder embedding); ``inspect_latents`` writes ``latents.jsonl`` (each latent's top-k tokens per Jacobi step)
    and the share of latents whose top-1 token is in the reference CoT to ``results.json``.
    """
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    module = load_module(ckpt_path, map_location="cpu").to(dev).eval()
    data_cfg = dict(module.hparams.get("data") or {})
    names = list(eval_sets) if eval_sets else default_sets(data_cfg)
    sets = {name: load_items(name, paths or {}, data_cfg, limit) for name in names}  # fail before decoding
    latents = module.student is not None
    if student is None:  # a method without latents (cot, nocot) is decoded as the teacher
        student = latents or not teacher
    decoders = (["student"] if student else []) + (
        ["student_placeholder"] if student and latents and ablate_latents else []
    )
    decoders += ["teacher"] if teacher else []
    if not decoders:
        raise ConfigValueError("nothing to evaluate: set eval.student=true or eval.teacher=true")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, float]]] = {}
    with open(out / "predictions.jsonl", "w") as pred_file, Progress() as progress:
        for name, items in sets.items():
            results[name] = {}
            for dec in decoders:
                res = evaluate_items(module, items, dec, batch_size, max_new_tokens, max_cot_tokens, progress, name)
                results[name][dec] = res.summary()
                for p in res.predictions:
                    pred_file.write(json.dumps({"set": name, **p}) + "\n")
                log.info("%s %s: %s", name, dec, res.summary())
    report: dict[str, Any] = {"checkpoint": str(ckpt_path), "results": results}
    if inspect_latents and latents:
        with open(out / "latents.jsonl", "w") as f:
            report["latent_readout"] = {
                name: readout_items(module, items, batch_size, inspect_top_k, name, f) for name, items in sets.items()
            }
        log.info("latent read-out: %s", report["latent_readout"])
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown_table(results))
    flat = {f"eval/{s}/{d}_{k}": float(v) for s, per in results.items() for d, r in per.items() for k, v in r.items()}
    for lg in loggers:
        lg.log_metrics(flat)
        lg.save()
    return results
