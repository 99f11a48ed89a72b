"""``GSM8KDataModule``: records -> tokenised segments (cached ``datasets.map``) -> padded batches."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from kava.data.answers import parse_number
from kava.data.collate import collate
from kava.data.records import BadRowError
from kava.data.sequences import Segments, encode_parts
from kava.data.sources import load_hub, load_local, records_to_dataset, split_files
from kava.data.synthetic import generate_splits
from kava.errors import DataError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
CACHE_VERSION = "2"  # 2: keyed by the records' datasets fingerprint


def default_cache_dir() -> str:
    return os.environ.get("KAVA_CACHE", str(Path.home() / ".cache" / "kava"))


class ResumableRandomSampler(Sampler[int]):
    """A seeded permutation per epoch, sharded over processes, that after a mid-epoch resume starts at this
    process's first unseen batch.

    The order depends only on (seed, epoch); with ``world`` processes it is padded to a multiple of ``world`` (from
    its start) and process ``rank`` takes every ``world``-th index from ``rank``. A resumed run therefore sees exactly
    the batches an uninterrupted run would, in every process; ``skip_batches`` (this process's batches already
    trained on in the epoch) is asked once per ``__iter__``, after Lightning has restored its progress.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, skip_batches: Callable[[], int] = lambda: 0, rank: int = 0,
        world: int = 1,
    ) -> None:  # fmt: skip
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.skip_batches = skip_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.world)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(self.n, generator=gen).tolist()
        if self.world > 1:
            order = (order + order[: len(self) * self.world - self.n])[self.rank :: self.world]
        yield from order[self.skip_batches() * self.batch_size :]


class SegmentDataset(Dataset):
    """Map-style view of a tokenised Arrow table, yielding ``Segments`` without materialising them all."""

    def __init__(self, table: datasets.Dataset) -> None:
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> Segments:
        r = self.table[int(i)]
        return Segments(tuple(r["q"]), tuple(r["c"]), tuple(r["p"]), tuple(r["a"]), parse_number(r["answer"]))


def _tokenise(
    batch: dict[str, list], tokenizer, prompt: str, drop_last_step: bool, num_latents: int, drop_cot: bool = False
) -> dict:
    out: dict[str, list] = {"q": [], "c": [], "p": [], "a": [], "n_tokens": []}
    for question, steps, answer in zip(batch["question"], batch["steps"], batch["answer"], strict=True):
        seg = encode_parts(question, [] if drop_cot else steps, answer, tokenizer, prompt, drop_last_step)
        out["q"].append(list(seg.question))
        out["c"].append(list(seg.cot))
        out["p"].append(list(seg.prompt))
        out["a"].append(list(seg.answer))
        out["n_tokens"].append(max(seg.teacher_len(), seg.student_len(num_latents)))
    return out


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else str(getattr(tokenizer, "name_or_path", ""))
    text += f"|{tokenizer.bos_token_id}|{tokenizer.eos_token_id}|{tokenizer.pad_token_id}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class GSM8KDataModule(L.LightningDataModule):
    """Loads the three splits, validates and tokenises them once (cached), and serves collated batches.

    ``source=synthetic`` generates the splits from ``synthetic``; ``source=hub`` reads ``hub_id`` (the
    ``splits`` mapping names its train/val/test splits); ``source=local`` or any ``path`` reads a local
    file (train; ``val_path``/``test_path`` optional, else ``val_size`` training rows are held out) or a
    directory with ``train``/``validation``/``test`` files. A tokenizer must be attached before ``setup``.
    """

    def __init__(
        self,
        *,
        source: str,
        name: str,
        path: str | None,
        val_path: str | None,
        test_path: str | None,
        hub_id: str | None,
        splits: Mapping[str, str] | None,
        val_size: int,
        synthetic: Mapping[str, Any],
        drop_last_step: bool,
        drop_cot: bool,
        answer_prompt: str,
        max_length: int,
        micro_batch_size: int,
        global_batch_size: int,
        eval_batch_size: int,
        on_bad_row: str,
        on_too_long: str | None,
        cot_split: str,
        num_latents: int,
        num_workers: int,
        num_proc: int | None,
        cache_dir: str | None,
        seed: int,
    ) -> None:
        """Every argument is a key of ``conf/data/*.yaml`` (their values are the defaults; ``kava.schema`` checks them
        before a run)."""
        super().__init__()
        self.name = name
        self.source, self.path, self.val_path, self.test_path = source, path, val_path, test_path
        self.hub_id = hub_id
        self.split_names = {"train": "train", "val": "validation", "test": "test", **dict(splits or {})}
        self.val_size = val_size
        self.synthetic = dict(synthetic)
        self.drop_last_step, self.answer_prompt = drop_last_step, answer_prompt
        self.drop_cot = drop_cot
        self.max_length, self.num_latents = max_length, num_latents
        self.micro_batch_size, self.global_batch_size = micro_batch_size, global_batch_size
        self.eval_batch_size = eval_batch_size
        self.on_bad_row, self.on_too_long = on_bad_row, on_too_long or on_bad_row
        self.cot_split = cot_split
        self.num_workers, self.num_proc, self.seed = num_workers, num_proc, seed
        self.cache_dir = Path(cache_dir or default_cache_dir())
        self.tokenizer = None
        self.records: dict[str, datasets.Dataset] = {}
        self.tables: dict[str, datasets.Dataset] = {}
        self.skipped: dict[str, int] = {s: 0 for s in SPLITS}
        self.too_long: dict[str, int] = {s: 0 for s in SPLITS}

    # records -------------------------------------------------------------------------------------
    def _local_paths(self) -> dict[str, str | Path]:
        p = Path(self.path)
        paths: dict[str, str | Path] = dict(split_files(p)) if p.is_dir() else {"train": p}
        if self.val_path:
            paths["val"] = self.val_path
        if self.test_path:
            paths["test"] = self.test_path
        return paths

    def load(self) -> dict[str, datasets.Dataset]:
        """Read or generate the validated records of every split (idempotent)."""
        if self.records:
            return self.records
        if self.source == "synthetic" and not self.path:
            syn = dict(self.synthetic)
            seed = int(syn.pop("seed"))  # the generator's own seed (data.synthetic.seed), apart from the data order's
            sizes = {s: int(syn.pop(f"num_{s}")) for s in SPLITS}
            for split, recs in generate_splits(sizes, seed=seed, **syn).items():
                recs = [
                    r.__class__(r.question, r.steps, r.answer, f"synthetic:{split}", j + 1) for j, r in enumerate(recs)
                ]
                self.records[split] = records_to_dataset(recs)
        elif self.path:
            paths = self._local_paths()
            for split in SPLITS:
                if split in paths:
                    self.records[split], self.skipped[split] = load_local(paths[split], self.on_bad_row, self.cot_split)
            if "val" not in paths:
                train = self.records["train"]
                if len(train) <= self.val_size:
                    raise DataError(
                        f"{self.path} has {len(train)} rows, not more than data.val_size={self.val_size}: "
                        "lower data.val_size or give data.val_path"
                    )
                cut = len(train) - self.val_size
                self.records["val"] = train.select(range(cut, len(train)))
                self.records["train"] = train.select(range(cut))
            self.records.setdefault("test", records_to_dataset([]))
        else:
            for split in SPLITS:
                name = self.split_names[split]
                self.records[split], self.skipped[split] = load_hub(self.hub_id, name, self.on_bad_row, self.cot_split)
        return self.records

    def corpus(self) -> list[str]:
        """Training text for the tiny model's tokenizer."""
        train = self.load()["train"]
        texts = (
            list(train["question"]) + [" " + " ".join(s) for s in train["steps"]] + [" " + a for a in train["answer"]]
        )
        return texts + [" " + self.answer_prompt]

    def attach_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    # tokenised tables ----------------------------------------------------------------------------
    def _cache_file(self, split: str) -> Path:
        key = "|".join(
            [
                CACHE_VERSION,
                self.records[split]._fingerprint,  # the library's hash of the validated rows (source and row included)
                tokenizer_fingerprint(self.tokenizer),
                self.answer_prompt,
                str(self.drop_last_step),
                str(self.drop_cot),
                str(self.num_latents),
            ]
        )
        return self.cache_dir / "tokenised" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.arrow"

    def _tokenise_split(self, split: str) -> datasets.Dataset:
        recs = self.records[split]
        if len(recs) == 0:
            return recs.add_column("n_tokens", [])
        cache = self._cache_file(split)
        cache.parent.mkdir(parents=True, exist_ok=True)
        num_proc = (
            self.num_proc if self.num_proc is not None else (min(4, os.cpu_count() or 1) if len(recs) > 20000 else None)
        )
        table = recs.map(
            _tokenise,
            batched=True,
            num_proc=num_proc,
            cache_file_name=str(cache),
            load_from_cache_file=True,
            fn_kwargs={
                "tokenizer": self.tokenizer,
                "prompt": self.answer_prompt,
                "drop_last_step": self.drop_last_step,
                "drop_cot": self.drop_cot,
                "num_latents": self.num_latents,
            },
            desc=f"tokenising {split}",
        )
        lengths = table["n_tokens"]
        long_rows = [i for i, n in enumerate(lengths) if n > self.max_length]
        if long_rows and self.on_too_long == "error":
            i = long_rows[0]
            r = table[i]
            parts = {"question": len(r["q"]), "steps": len(r["c"]), "answer": len(r["a"])}
            raise BadRowError(
                r["source"],
                r["row"],
                max(parts, key=parts.get),
                f"the sample is {lengths[i]} tokens long (question {parts['question']}, steps {parts['steps']}, "
                f"answer {parts['answer']}), over data.max_length={self.max_length}; raise data.max_length "
                "or set data.on_too_long=skip",
            )
        if long_rows:
            self.too_long[split] = len(long_rows)
            table = table.select(sorted(set(range(len(table))) - set(long_rows)))
        return table

    def setup(self, stage: str | None = None) -> None:
        if self.tables:
            return
        if self.tokenizer is None:
            raise RuntimeError("GSM8KDataModule needs attach_tokenizer(tokenizer) before setup()")
        self.load()
        for split in SPLITS:
            self.tables[split] = self._tokenise_split(split)
            if self.skipped[split]:
                log.warning(
                    "data: skipped %d bad rows of the %s split (data.on_bad_row=skip)", self.skipped[split], split
                )
            if self.too_long[split]:
                log.warning(
                    "data: filtered %d samples of the %s split longer than data.max_length=%d",
                    self.too_long[split],
                    split,
                    self.max_length,
                )
        if len(self.tables["train"]) == 0:
            where = f"data.path={self.path}" if self.path else f"data.source={self.source}"
            raise DataError(
                f"the training split is empty after loading ({where}; {self.skipped['train']} rows skipped as bad, "
                f"{self.too_long['train']} over data.max_length): check the file and those settings"
            )

    @property
    def segments(self) -> dict[str, SegmentDataset]:
        return {k: SegmentDataset(v) for k, v in self.tables.items()}

    def counts(self) -> dict[str, float]:
        """Rows dropped per split, for logging (only non-zero entries)."""
        out = {f"data/skipped_{k}": float(v) for k, v in self.skipped.items() if v}
        out.update({f"data/too_long_{k}": float(v) for k, v in self.too_long.items() if v})
        return out

    # loaders -------------------------------------------------------------------------------------
    def _resume_skip(self) -> int:
        """Batches of the current epoch already trained on, when Lightning is resuming mid-epoch."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or not trainer.fit_loop.restarting:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        dataset = SegmentDataset(self.tables[split])
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if shuffle and trainer is not None and trainer.overfit_batches:  # the same batches every epoch
            shuffle = False
        if shuffle:
            sampler = ResumableRandomSampler(len(dataset), batch_size, self.seed, self._resume_skip, rank, world)
        elif world > 1:  # evaluation splits: each process its share, in order (padded as Lightning would)
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        else:
            sampler = None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            generator=torch.Generator().manual_seed(self.seed),  # iterators must not draw from the global RNG
            collate_fn=partial(collate, pad_id=self.tokenizer.pad_token_id),
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.micro_batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)
