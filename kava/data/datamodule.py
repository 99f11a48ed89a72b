"""``GSM8KDataModule``: records (synthetic or local JSON/JSONL) -> segments -> padded batches."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from kava.data.collate import collate
from kava.data.records import BadRowError, Record, load_records
from kava.data.sequences import DEFAULT_PROMPT, Segments, encode
from kava.data.synthetic import generate_records

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
SOURCES = ("synthetic", "local")


class GSM8KDataModule(L.LightningDataModule):
    """Loads the three splits, validates and tokenises them once, and serves collated batches.

    ``source=synthetic`` generates the splits from ``synthetic`` settings; ``source=local`` reads
    ``path`` (train) and ``val_path``/``test_path`` (JSON/JSONL in the whynlp or zen-E schema); without
    ``val_path`` the last ``val_size`` training rows are held out. A tokenizer must be attached (see
    ``attach_tokenizer``) before ``setup``, since the tiny model's tokenizer is trained on ``corpus()``.
    """

    def __init__(
        self,
        source: str = "synthetic",
        path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        val_size: int = 200,
        synthetic: Mapping[str, Any] | None = None,
        drop_last_step: bool = True,
        answer_prompt: str = DEFAULT_PROMPT,
        max_length: int = 512,
        micro_batch_size: int = 32,
        global_batch_size: int = 32,
        eval_batch_size: int | None = None,
        on_bad_row: str = "error",
        cot_split: str = "auto",
        num_latents: int = 0,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got '{source}'")
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"data.on_bad_row must be 'error' or 'skip', got '{on_bad_row}'")
        if source == "local" and not path:
            raise ValueError("data=local needs data.path=<train .json/.jsonl file>")
        self.source, self.path, self.val_path, self.test_path = source, path, val_path, test_path
        self.val_size = val_size
        self.synthetic = dict(synthetic or {})
        self.drop_last_step, self.answer_prompt = drop_last_step, answer_prompt
        self.max_length, self.num_latents = max_length, num_latents
        self.micro_batch_size, self.global_batch_size = micro_batch_size, global_batch_size
        self.eval_batch_size = eval_batch_size or micro_batch_size
        self.on_bad_row, self.cot_split = on_bad_row, cot_split
        self.num_workers, self.seed = num_workers, seed
        self.tokenizer = None
        self.records: dict[str, list[Record]] = {}
        self.segments: dict[str, list[Segments]] = {}
        self.skipped: dict[str, int] = {s: 0 for s in SPLITS}

    # records -------------------------------------------------------------------------------------
    def load(self) -> dict[str, list[Record]]:
        """Read or generate the raw records of every split (idempotent)."""
        if self.records:
            return self.records
        if self.source == "synthetic":
            syn = dict(self.synthetic)
            seed = int(syn.pop("seed", self.seed))
            sizes = {s: int(syn.pop(f"num_{s}", 0)) for s in SPLITS}
            for i, split in enumerate(SPLITS):
                recs = generate_records(sizes[split], seed=seed + 1000 * i, **syn)
                self.records[split] = [
                    dataclasses.replace(r, source=f"synthetic:{split}", row=j + 1) for j, r in enumerate(recs)
                ]
        else:
            train, self.skipped["train"] = load_records(self.path, self.on_bad_row, self.cot_split)
            if self.val_path:
                val, self.skipped["val"] = load_records(self.val_path, self.on_bad_row, self.cot_split)
            else:
                if len(train) <= self.val_size:
                    raise ValueError(
                        f"{self.path} has {len(train)} rows, not more than data.val_size={self.val_size}: "
                        "lower data.val_size or give data.val_path"
                    )
                train, val = train[: -self.val_size], train[-self.val_size :]
            test: list[Record] = []
            if self.test_path:
                test, self.skipped["test"] = load_records(self.test_path, self.on_bad_row, self.cot_split)
            self.records = {"train": train, "val": val, "test": test}
        return self.records

    def corpus(self) -> list[str]:
        """Training text for the tiny model's tokenizer."""
        texts = []
        for r in self.load()["train"]:
            texts += [r.question, " " + " ".join(r.steps), " " + r.answer]
        return texts + [" " + self.answer_prompt]

    def attach_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    # segments ------------------------------------------------------------------------------------
    def _encode_split(self, split: str) -> list[Segments]:
        out = []
        for r in self.records[split]:
            seg = encode(r, self.tokenizer, self.answer_prompt, self.drop_last_step)
            n = max(seg.teacher_len(), seg.student_len(self.num_latents))
            if n > self.max_length:
                parts = {"question": len(seg.question), "steps": len(seg.cot), "answer": len(seg.answer)}
                field = max(parts, key=parts.get)
                err = BadRowError(
                    r.source,
                    r.row,
                    field,
                    f"the sample is {n} tokens long (question {parts['question']}, steps {parts['steps']}, "
                    f"answer {parts['answer']}), over data.max_length={self.max_length}; raise data.max_length",
                )
                if self.on_bad_row == "error":
                    raise err
                self.skipped[split] += 1
                continue
            out.append(seg)
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.segments:
            return
        if self.tokenizer is None:
            raise RuntimeError("GSM8KDataModule needs attach_tokenizer(tokenizer) before setup()")
        self.load()
        for split in SPLITS:
            self.segments[split] = self._encode_split(split)
            if self.skipped[split]:
                log.warning(
                    "data: skipped %d bad rows of the %s split (data.on_bad_row=skip)",
                    self.skipped[split],
                    split,
                )
        if not self.segments["train"]:
            raise ValueError("the training split is empty after loading: check data.path / data.synthetic")

    # loaders -------------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.segments[split],
            batch_size=batch_size,
            shuffle=shuffle,
            generator=gen if shuffle else None,
            collate_fn=partial(collate, pad_id=self.tokenizer.pad_token_id),
            num_workers=self.num_workers,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.micro_batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)
