"""kava.answer: ask a trained model (a checkpoint or an exported folder) questions, from Python and the shell."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import make_module

from kava.answer import ask, load
from kava.checkpoint import export_pretrained
from kava.errors import UserError
from kava.evaluation import decode
from kava.inference import stop_token_ids

QUESTIONS = ["Tom has 3 boxes of 4 apples. How many apples?", "What is 7*8+2?"]
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_ask_answers_with_each_decoder_and_reads_out_every_jacobi_step(tokenizer):
    module = make_module(tokenizer, m=4, t=3)
    answers = ask(module, QUESTIONS, readout=True)
    gen = decode(module, QUESTIONS, "student", 16, 128, stop_token_ids(tokenizer))  # evaluation's own decoding
    for a, text, n in zip(answers, gen.texts, gen.forward_passes, strict=True):
        assert a.output == module.answer_prompt + text and a.forward_passes == n >= 4  # prefill + 3 passes, then tokens
        assert len(a.readout) == 3 and all(len(step) == 4 for step in a.readout)  # T passes x M latents
    teacher = ask(module, QUESTIONS[:1], decoder="teacher")[0]
    assert teacher.readout is None and teacher.decoder == "teacher" and teacher.forward_passes >= 1
    with pytest.raises(UserError, match="decoder=beam"):
        ask(module, QUESTIONS, decoder="beam")


def test_a_method_without_latents_has_no_read_out(tokenizer):
    module = make_module(tokenizer)
    module.method.student = None  # as method=cot builds it
    with pytest.raises(UserError, match="no latent tokens"):
        ask(module, QUESTIONS, readout=True)


@pytest.mark.slow
def test_the_command_answers_from_an_exported_folder_offline(tokenizer, tmp_path):
    torch.manual_seed(0)
    module = make_module(tokenizer, m=4, t=2)
    folder = export_pretrained(module, tmp_path / "export")
    expected = ask(load(folder), QUESTIONS)
    cmd = [sys.executable, "-m", "kava.answer", str(folder), *QUESTIONS, "--readout"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=OFFLINE, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.splitlines()
    assert [line[3:] for line in out if line.startswith("Q: ")] == QUESTIONS
    passes = [line for line in out if "forward passes]" in line]
    assert all(f"[student, {a.forward_passes} forward passes]" in p for a, p in zip(expected, passes, strict=True))
    assert sum(line.startswith("   step ") for line in out) == 2 * len(QUESTIONS)  # T = 2 read-out lines each
    missing = subprocess.run([*cmd[:3], str(tmp_path / "nothing"), "q"], capture_output=True, text=True, env=OFFLINE)
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"kava.answer: {tmp_path / 'nothing'}: no such checkpoint or exported folder"
    ]
