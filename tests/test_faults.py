"""Faults stop a run loudly, and name what to change: non-finite training, bad checkpoints and eval sets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kava.errors import NonFiniteError

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "WANDB_MODE": "offline"}  # fmt: skip


@pytest.mark.parametrize("where", ["loss", "gradient", "checkpoint"])
def test_non_finite_training_stops_naming_what_went_wrong(module, batch, where):
    module.train()
    if where == "loss":
        real = module.compute_losses

        def nan_kv(b):
            terms = dict(real(b))
            terms["kv_step_2"] = terms["kv_step_2"] * float("nan")
            terms["loss"] = terms["loss"] + terms["kv_step_2"]
            return terms

        module.compute_losses = nan_kv
        with pytest.raises(NonFiniteError, match=r"step 0: the loss is not finite \(non-finite terms: kv_step_2\)"):
            module.training_step(batch, 0)
    elif where == "gradient":
        module.compute_losses(batch)["loss"].backward()
        name, p = next((n, p) for n, p in module.named_parameters() if p.requires_grad and "lora_A" in n)
        p.grad[0, 0] = float("inf")
        with pytest.raises(NonFiniteError, match=f"non-finite gradient in 1 tensors \\(first: {name}\\)"):
            module.on_before_optimizer_step(None)
        p.grad.zero_()
        module.on_before_optimizer_step(None)  # finite gradients pass
        p.grad.fill_(1e30)  # every entry finite, the norm beyond float32: still named, not an IndexError
        with pytest.raises(NonFiniteError, match=f"non-finite gradient in 1 tensors \\(first: {name}\\)"):
            module.on_before_optimizer_step(None)
    else:
        ckpt = {"state_dict": {k: v.clone() for k, v in module.state_dict().items()}}
        module.on_save_checkpoint({"state_dict": dict(ckpt["state_dict"])})  # finite weights are saved
        key = next(n for n, p in module.named_parameters() if p.requires_grad)
        ckpt["state_dict"][key][...] = float("nan")
        with pytest.raises(NonFiniteError, match=f"not writing a checkpoint.*first: {key}"):
            module.on_save_checkpoint(ckpt)


@pytest.mark.slow
def test_a_diverging_run_exits_non_zero_with_one_line_and_no_nan_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "optim.lr=10", "trainer.max_steps=30", "trainer.val_check_interval=10",
           "data.synthetic.num_train=256", "data.synthetic.num_val=16", "data.synthetic.num_test=16",
           "val_acc.num_batches=0", "callbacks.progress_bar=null", f"paths.output_dir={out}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: training stopped at step") and "optim.lr" in last
    assert "Traceback" not in proc.stderr
    assert not (out / "metrics.json").exists()
    saved = sorted((out / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    # the message tells the truth about what is kept: the newest checkpoint, or that none was saved
    assert (str(saved[-1]) in last) if saved else ("no checkpoint had been saved yet" in last), (saved, last)
    for path in saved:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


def _eval(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "eval.py", *args, f"paths.output_dir={tmp_path}/eval"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    return proc, time.perf_counter() - start


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "empty", "not_a_checkpoint", "plain_folder", "unknown_set"])
def test_eval_stops_within_seconds_before_loading_anything(tmp_path, case):
    path = tmp_path / "x.ckpt"
    args = [f"ckpt_path={path}"]
    expect = {"missing": "no such file", "empty": "the file is empty", "not_a_checkpoint": "not a zip archive",
              "plain_folder": "not one written by kava's export",
              "unknown_set": "unknown set(s) ['gsm9k']"}[case]  # fmt: skip
    if case == "empty":
        path.write_bytes(b"")
    elif case == "not_a_checkpoint":
        path.write_text("hello")
    elif case == "plain_folder":
        path.mkdir()
    elif case == "unknown_set":
        torch.save({"x": 1}, path)
        args.append("eval_sets=[gsm9k]")
    proc, seconds = _eval(args, tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("eval.py: "), proc.stderr[-2000:]
    assert expect in proc.stderr
    assert seconds < 5  # 0.7 s on an idle 2-core machine: no torch import, no model
    assert "ckpt_path" in proc.stderr or case == "unknown_set"


@pytest.mark.slow
def test_metrics_json_is_strict_json(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "trainer.max_steps=2", "trainer.val_check_interval=2", "val_acc.num_batches=0",
           "data.synthetic.num_train=64", "data.synthetic.num_val=16", "data.synthetic.num_test=16",
           "callbacks.progress_bar=null", f"paths.output_dir={out}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "optimized_metric" not in proc.stdout + proc.stderr  # the sweeper's warning only in sweeps
    assert f"run folder: {out.resolve()}\n" in proc.stdout  # the whole path on one line
    text = (out / "metrics.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


@pytest.mark.parametrize(
    "every,steps,expect", [("every_n_steps=2 every_minutes=0", 5, 4), ("every_n_steps=0 every_minutes=1e-6", 12, 10)]
)
def test_last_ckpt_every_n_steps_or_minutes_without_validation(tmp_path, every, steps, expect):
    from helpers import FAST, compose_train

    from kava.checkpoint import load_module
    from kava.training import train

    out = tmp_path / "run"
    train(compose_train(FAST + [f"trainer.max_steps={steps}", "trainer.limit_val_batches=0", "callbacks=default",
                                "callbacks.progress_bar=null", "callbacks.model_checkpoint=null",
                                f"paths.output_dir={out}"]
                               + [f"callbacks.periodic_checkpoint.{e}" for e in every.split()]))  # fmt: skip
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # by periodic_checkpoint alone, no validation: at steps 2 and 4, or where the clock is read (every 10 steps)
    assert ckpt["global_step"] == expect
    assert not list((out / "checkpoints").glob(".*tmp*"))
    load_module(out / "checkpoints" / "last.ckpt")


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    from kava.checkpoint_io import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)

    def torn(obj, f, *args, **kwargs):  # half a file, then the disk is full
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError, match=f"could not write the checkpoint {path}"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the partial temporary file is gone


def test_an_unwritable_checkpoint_folder_stops_the_run_at_its_start(tmp_path):
    from helpers import FAST, compose_train

    from kava.training import build

    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").write_text("a file where the folder should be")
    with pytest.raises(OSError, match=r"callbacks\.model_checkpoint\.dirpath=.*checkpoints: checkpoints cannot be"):
        build(compose_train(FAST + ["callbacks=default", f"paths.output_dir={out}"]))


GOOD_ROW = '{"question": "Tom has 3 boxes of 4 apples. How many apples?", "steps": ["<<3*4=12>>"], "answer": "12"}'


@pytest.mark.parametrize("case", ["bad_byte_jsonl", "bad_byte_jsonl_skip", "bad_byte_json", "empty", "unreadable"])
def test_data_file_failures_name_the_file_and_row(tmp_path, case, monkeypatch):
    from kava.data.records import BadRowError, load_records

    path = tmp_path / ("train.json" if case == "bad_byte_json" else "train.jsonl")
    if case.startswith("bad_byte_jsonl"):
        path.write_bytes((GOOD_ROW + "\n").encode() + b'{"question": "caf\xe9", "steps": [], "answer": "1"}\n')
    elif case == "bad_byte_json":
        path.write_bytes(b"[\n" + GOOD_ROW.encode() + b',\n{"question": "caf\xe9"}\n]')
    elif case == "empty":
        path.write_text("\n")
    else:  # root reads any file, so the refusal is injected
        path.write_text(GOOD_ROW)
        monkeypatch.setattr(Path, "read_bytes", lambda self: (_ for _ in ()).throw(PermissionError(13, "denied")))
    if case == "bad_byte_jsonl_skip":  # a bad byte is a bad row: skipped and counted
        records, skipped = load_records(path, on_bad_row="skip")
        assert len(records) == 1 and skipped == 1
        return
    expect = {"bad_byte_jsonl": (BadRowError, r"train\.jsonl.*row 2.*not UTF-8 \(byte 0xe9"),
              "bad_byte_json": (ValueError, r"train\.json, line 3: not UTF-8 \(byte 0xe9\)"),
              "empty": (ValueError, r"train\.jsonl: the data file is empty"),
              "unreadable": (OSError, r"train\.jsonl: cannot read the data file")}[case]  # fmt: skip
    with pytest.raises(expect[0], match=expect[1]):
        load_records(path)


def test_each_sweep_job_finishes_its_wandb_run(monkeypatch):
    import types

    sys.path.insert(0, str(ROOT))
    from train import finish_wandb

    calls = []
    fake = types.SimpleNamespace(run=object(), finish=lambda: calls.append("finish"))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    finish_wandb()
    assert calls == ["finish"]
    fake.run = None  # no active run: nothing to finish
    finish_wandb()
    assert calls == ["finish"]


def _decode_on_rank(rank: int, rdv: str, out: str) -> None:
    """One of two gloo ranks: rank 0's rows stop at their first token, rank 1's run to the token budget."""
    import torch.distributed as dist
    from conftest import make_module

    from kava.data.synthetic import generate_records
    from kava.data.tokenizer import train_tiny_tokenizer
    from kava.inference import encode_questions, latent_generate
    from kava.model.student import decoder_of

    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=2)
    records = generate_records(16, seed=7, num_steps=3)
    tok = train_tiny_tokenizer([r.question for r in records] + [" " + " ".join(r.steps) for r in records], 300)
    module = make_module(tok)
    passes = [0]
    decoder_of(module.backbone).register_forward_hook(lambda *a: passes.__setitem__(0, passes[0] + 1))
    q_ids, q_mask = encode_questions(tok, [r.question for r in records[:2]])
    stops = set(range(len(tok))) if rank == 0 else set()

    def sync(done: bool) -> bool:
        flag = torch.tensor([int(done)])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    counts = {}
    for name, s in (("alone", None), ("synced", sync)):
        passes[0] = 0
        gen = latent_generate(module.student, module.backbone, tok, q_ids, q_mask, "The answer is:", 6, stops, sync=s)
        counts[name] = (passes[0], [len(t) for t in gen.tokens])
    Path(out, f"rank{rank}.json").write_text(json.dumps(counts))
    dist.destroy_process_group()


@pytest.mark.slow
def test_decoding_keeps_two_ranks_in_step(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_decode_on_rank, args=(str(tmp_path / "rdv"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["alone"][0] < r1["alone"][0]  # left alone, the rank whose rows stop early runs fewer passes
    assert r0["synced"][0] == r1["synced"][0] == r1["alone"][0]  # synced, both run the longest rank's passes
    assert r0["synced"][1] == r0["alone"][1] == [1, 1]  # and rank 0's answers are unchanged by the extra passes


def test_predict_step_syncs_only_in_a_multi_process_run(module, batch):
    from unittest import mock

    seen = []
    real = module.method.generate
    module.method.generate = lambda *a, **k: (seen.append(k.get("sync")), real(*a, **k))[1]
    module.predict_step(batch)
    module._trainer = mock.Mock(world_size=2)
    with mock.patch.object(type(module), "_all_ranks_done", lambda self, done: done):
        module.predict_step(batch)
    assert seen[0] is None and seen[1] is not None
