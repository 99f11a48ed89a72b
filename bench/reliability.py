"""Bad inputs and faults, each run as a user would (one command), and the one line each prints.

    python bench/reliability.py [--out docs/reliability.md]

runs every row of ``ROWS`` in a scratch folder and writes the table of ``docs/reliability.md`` (between markers): the
command, the line it prints, its exit status, its time on this machine, and whether a run folder was left behind.
``tests/test_reliability.py`` runs the same rows and asserts each line (a test per row).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
TINY = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "val_acc.num_batches=0",
        "data.micro_batch_size=4", "data.global_batch_size=4", "model.tiny.hidden_size=64",
        "model.tiny.intermediate_size=128", "model.tiny.num_layers=2", "model.tiny.vocab_size=300",
        "data.synthetic.num_train=32", "data.synthetic.num_val=8", "data.synthetic.num_test=8",
        "callbacks.progress_bar=null", "callbacks.model_summary=null"]  # fmt: skip
GOOD = {"question": "Tom has 3 boxes of 4 apples. How many apples?", "steps": ["<<3*4=12>>"], "answer": "12"}


def jsonl(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def local(path: str, *extra: str) -> list[str]:
    return ["data=local", f"data.path={path}", "data.val_size=2", *extra]


def write(work: Path, name: str, text: str | bytes) -> str:
    path = work / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def parquet_list_column(work: Path) -> str:
    """A Parquet file whose ``question`` column holds lists of strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 7
    table = pa.table({"question": [["Tom has 3 boxes.", "How many?"]] * n, "steps": [GOOD["steps"]] * n,
                      "answer": [GOOD["answer"]] * n})  # fmt: skip
    pq.write_table(table, work / "train.parquet")
    return str(work / "train.parquet")


def empty_folder(work: Path) -> str:
    (work / "data").mkdir()
    return str(work / "data")


def truncated(work: Path, trained: Path) -> str:
    data = (trained / "checkpoints" / "last.ckpt").read_bytes()
    return write(work, "truncated.ckpt", data[: len(data) // 2])


@dataclass(frozen=True)
class Row:
    """One fault: the command's arguments (``setup(work, trained_run)`` returns them), the part of the one line it
    must print, and whether it is caught before anything loads (a config error: <= 2 s on an idle 2-core machine)."""

    name: str
    script: str
    setup: Callable[[Path, Path], list[str]]
    expect: str
    early: bool = False
    exit_code: int = 1
    needs_run: bool = False
    signal: int = 0  # > 0: sent once the run has logged a few steps (an interruption, not a bad input)
    keeps: tuple[str, ...] = ()  # what the run folder must hold afterwards (nothing else is checked); () = no folder


ROWS: tuple[Row, ...] = (
    Row("a value out of range", "train.py", lambda w, r: ["optim.lr=-1"], "optim.lr=-1.0: must be > 0", True),
    Row("a typo'd key", "train.py", lambda w, r: ["loss.alpah1=3"], "did you mean loss.alpha1", True),
    Row("an unknown synthetic task", "train.py", lambda w, r: ["data.synthetic.task=sort"],
        "data.synthetic.task=sort: must be one of", True),
    Row("more CPU processes than cores", "train.py",
        lambda w, r: ["trainer.devices=64", "data.global_batch_size=256"],
        "trainer.devices=64 CPU processes on a", True),
    Row("a global batch the devices do not divide", "train.py",
        lambda w, r: ["trainer.devices=2", "data.global_batch_size=12"], "x trainer.devices=2 x", True),
    Row("FSDP without a GPU", "train.py", lambda w, r: ["strategy=fsdp"], "strategy=fsdp needs a GPU", True),
    Row("DeepSpeed without a GPU", "train.py", lambda w, r: ["strategy=deepspeed"], "strategy=deepspeed needs a GPU",
        True),
    Row("a GPU trainer without a GPU", "train.py", lambda w, r: ["trainer=gpu"], "no NVIDIA GPU is visible", True),
    Row("a missing checkpoint", "train.py", lambda w, r: [f"ckpt_path={w}/missing.ckpt"], "no such file", True),
    Row("an empty checkpoint", "train.py", lambda w, r: [f"ckpt_path={write(w, 'empty.ckpt', b'')}"],
        "the file is empty", True),
    Row("a truncated checkpoint", "train.py", lambda w, r: [f"ckpt_path={truncated(w, r)}"], "not a zip archive",
        True, needs_run=True),
    Row("a resume with another method", "train.py",
        lambda w, r: [f"ckpt_path={r}/checkpoints/last.ckpt", "method=pccot"],
        "the run was trained with method._target_=kava.methods.kava.KaVa", True, needs_run=True),
    Row("a resume with another M", "train.py", lambda w, r: [f"ckpt_path={r}/checkpoints/last.ckpt",
                                                             "latent.num_tokens=5"],
        "the run was trained with latent.num_tokens=12", True, needs_run=True),
    Row("a run folder on a read-only file system", "train.py", lambda w, r: ["hydra.run.dir=/sys/kava-run"],
        "nothing can be written in /sys", True),
    Row("an empty question", "train.py",
        lambda w, r: local(write(w, "train.jsonl", jsonl([GOOD] * 5 + [{**GOOD, "question": ""}]))),
        "train.jsonl: row 6: field 'question': must be a non-empty string"),
    Row("a `null` line", "train.py", lambda w, r: local(write(w, "train.jsonl", jsonl([GOOD] * 3 + [None, GOOD]))),
        "train.jsonl: row 4: field '<row>': expected a JSON object, got NoneType"),
    Row("a row over data.max_length", "train.py",
        lambda w, r: local(write(w, "train.jsonl", jsonl([GOOD] * 5 + [{**GOOD, "question": "word " * 300}])),
                           "data.max_length=64"),
        "over data.max_length=64"),
    Row("a .json holding a dict of lists", "train.py",
        lambda w, r: local(write(w, "train.json", json.dumps({"question": ["q"], "answer": ["1"]}))),
        "expected a JSON list of objects or an object with a 'data' list, got dict"),
    Row("an empty data folder", "train.py", lambda w, r: local(empty_folder(w)),
        "holds no train.json/.jsonl/.parquet"),
    Row("a Parquet list column", "train.py", lambda w, r: local(parquet_list_column(w)),
        "train.parquet: row 1: field 'question'"),
    Row("a byte that is not UTF-8", "train.py",
        lambda w, r: local(write(w, "train.jsonl", jsonl([GOOD] * 3).encode() + b'{"question": "caf\xe9"}\n')),
        "train.jsonl: row 4: field '<encoding>': not UTF-8 (byte 0xe9"),
    Row("an empty data file", "train.py", lambda w, r: local(write(w, "train.jsonl", "\n")),
        "the data file is empty"),
    Row("eval: a missing checkpoint", "eval.py", lambda w, r: [f"ckpt_path={w}/missing.ckpt"], "no such file", True),
    Row("eval: a truncated checkpoint", "eval.py", lambda w, r: [f"ckpt_path={truncated(w, r)}"],
        "not a zip archive", True, needs_run=True),
    Row("eval: an unknown evaluation set", "eval.py",
        lambda w, r: [f"ckpt_path={r}/checkpoints/last.ckpt", "eval_sets=[gsm9k]"], "unknown set(s) ['gsm9k']", True,
        needs_run=True),
    Row("a checkpoint folder that cannot be written", "train.py",
        lambda w, r: ["callbacks=default", "callbacks.progress_bar=null", "callbacks.model_summary=null",
                      f"callbacks.model_checkpoint.dirpath={write(w, 'afile', 'not a folder')}"],
        "checkpoints cannot be written there"),
    Row("a diverging run", "train.py",
        lambda w, r: ["optim.lr=1000", "trainer.gradient_clip_val=0", "trainer.max_steps=40",
                      "data.synthetic.num_train=256"],
        "training stopped at step", keeps=("csv",)),  # the loss or a gradient: whichever is non-finite first
    Row("SIGTERM mid-run (preemption)", "train.py", lambda w, r: ["trainer.max_steps=400"], "SIGTERM at step",
        exit_code=143, signal=15, keeps=("checkpoints", "interrupted.json", "metrics.json")),
    Row("Ctrl-C (SIGINT) mid-run", "train.py", lambda w, r: ["trainer.max_steps=400"], "SIGINT at step",
        exit_code=130, signal=2, keeps=("checkpoints", "interrupted.json", "metrics.json")),
)  # fmt: skip


def train_tiny(work: Path) -> Path:
    """A finished 2-step run to resume, truncate and evaluate."""
    run = work / "trained"
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY, f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, cwd=work, env=ENV, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return run


@dataclass
class Outcome:
    code: int
    line: str  # the last line of standard error
    seconds: float
    traceback: bool  # a traceback anywhere in the output
    left: list[str]  # what is in the run folder afterwards (nothing: the folder does not exist)
    stderr: str
    args: list[str]


def run_row(row: Row, work: Path, trained: Path | None) -> Outcome:
    work.mkdir(parents=True, exist_ok=True)
    args = row.setup(work, trained)
    out = work / "run"
    where = [] if any(a.startswith("hydra.run.dir=") for a in args) else [f"hydra.run.dir={out}"]
    base = TINY if row.script == "train.py" else []
    cmd = [sys.executable, str(ROOT / row.script), *base, *args, *where]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if row.signal:  # interrupt once a few optimizer steps are logged
        while proc.poll() is None and _lines(out) < 8:
            time.sleep(0.1)
        proc.send_signal(row.signal)
    stdout, stderr = proc.communicate(timeout=600)
    seconds = time.perf_counter() - start
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    tb = "Traceback" in stderr or "Traceback" in stdout
    return Outcome(proc.returncode, lines[-1] if lines else "", seconds, tb, left, stderr, args)


def _lines(run: Path) -> int:
    files = list(run.glob("csv/version_*/metrics.csv"))
    return len(files[0].read_text().splitlines()) if files else 0


BEGIN, END = "<!-- reliability table: written by bench/reliability.py -->", "<!-- end of reliability table -->"


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"))
    ap.add_argument("--note", default="", help="what else ran on the machine, e.g. ', two training runs beside it'")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        trained = train_tiny(Path(d))
        lines = [
            f"Regenerate: `python bench/reliability.py` ({os.cpu_count()}-core machine, one thread per command; "
            "`train.py` commands also carry the small-model overrides of `TINY` in the script, a 2-step run). Time: "
            f"the whole command, from start to exit{args.note}.",
            "",
            "| fault | command (after `python`) | exit | what it prints (one line) | s | run folder left |",
            "|---|---|---|---|---|---|",
        ]
        for i, row in enumerate(ROWS):
            o = run_row(row, Path(d) / f"row{i}", trained)
            cmd = f"{row.script} {' '.join(o.args)}".replace(d, "<tmp>")
            text = o.line.replace(d, "<tmp>").replace("|", "\\|")
            left = "none" if not o.left else ", ".join(o.left)
            left = left if not row.keeps else f"kept: {', '.join(row.keeps)}"
            lines.append(f"| {row.name} | `{cmd}` | {o.code} | {text} | {o.seconds:.1f} | {left} |")
            print(f"{row.name}: {o.code} {o.seconds:.1f}s {o.line[:100]}", flush=True)
    path = Path(args.out)
    old = path.read_text()
    table = "\n".join(lines) + "\n"
    path.write_text(old[: old.index(BEGIN) + len(BEGIN)] + "\n" + table + old[old.index(END) :])


if __name__ == "__main__":
    main()
