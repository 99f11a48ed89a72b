"""Backbone and tokenizer loading (hub id or local path, or the random-init tiny model) and LoRA."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from kava.hub import hub_offline
from kava.model.attention import ATTN_IMPLEMENTATION
from kava.preflight import offline_mode_set

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _offline_hint(setting: str, name: str, err: Exception) -> OSError:
    return OSError(
        f"could not load '{name}' (set by `{setting}`): {err}. "
        + ("HF_HUB_OFFLINE is set, so only local files are used. " if offline_mode_set() else "")
        + f"Download it once (huggingface-cli download {name} --local-dir DIR) and pass `{setting}=DIR`."
    )


def tiny_config(spec: Mapping[str, Any], vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> LlamaConfig:
    """Config of the random-init GQA Llama used for CPU runs and tests."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_layers"],
        num_attention_heads=spec["num_heads"],
        num_key_value_heads=spec["num_kv_heads"],
        max_position_embeddings=spec.get("max_position_embeddings", 2048),
        tie_word_embeddings=spec.get("tie_word_embeddings", False),
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        attn_implementation=ATTN_IMPLEMENTATION,
    )


def local_only(path: str) -> bool:
    """``local_files_only`` for ``from_pretrained``: a local folder, or the Hub unreachable (no retries then)."""
    return Path(path).is_dir() or hub_offline()


def load_tokenizer(model_cfg: Mapping[str, Any], corpus: Iterable[str] | None = None):
    """The backbone's tokenizer; for the tiny model one trained offline on ``corpus`` unless saved already."""
    path = model_cfg.get("tokenizer_path") or model_cfg.get("name_or_path")
    if path:
        try:
            tok = AutoTokenizer.from_pretrained(path, local_files_only=local_only(path))
        except (OSError, ValueError) as err:
            raise _offline_hint("model.tokenizer_path", str(path), err) from err
    else:
        if corpus is None:
            raise ValueError("the tiny model trains its tokenizer on the training text: pass a corpus")
        from kava.data.tokenizer import train_tiny_tokenizer

        tok = train_tiny_tokenizer(corpus, vocab_size=model_cfg["tiny"]["vocab_size"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token is None:
        raise ValueError(f"tokenizer of '{path}' has no EOS token; set one in its tokenizer_config.json")
    return tok


def load_base_model(model_cfg: Mapping[str, Any], tokenizer) -> PreTrainedModel:
    """The frozen base model: a local/hub checkpoint, or the tiny random-init Llama built from a seed."""
    dtype = DTYPES[model_cfg.get("dtype", "float32")]
    path = model_cfg.get("name_or_path")
    if path:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION, local_files_only=local_only(path)
            )
        except (OSError, ValueError) as err:
            raise _offline_hint("model.name_or_path", str(path), err) from err
    else:
        cfg = tiny_config(
            model_cfg["tiny"],
            len(tokenizer),
            tokenizer.pad_token_id,
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(model_cfg.get("init_seed", 0)))
            model = LlamaForCausalLM(cfg)
        model = model.to(dtype)
    model.config.use_cache = False
    model.train()  # from_pretrained returns eval mode; Lightning keeps each module's mode (training sets dropout)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def apply_lora(base: PreTrainedModel, lora_cfg: Mapping[str, Any] | None) -> PeftModel | PreTrainedModel:
    """Wrap with LoRA adapters (only they train); ``lora_cfg=None`` or ``r=0`` trains the full model instead."""
    if not lora_cfg or not lora_cfg.get("r"):
        for p in base.parameters():
            p.requires_grad_(True)
        return base
    targets = lora_cfg.get("target_modules", "all-linear")
    cfg = LoraConfig(
        r=int(lora_cfg["r"]),
        lora_alpha=float(lora_cfg["alpha"]),
        lora_dropout=float(lora_cfg.get("dropout", 0.0)),
        target_modules=targets if isinstance(targets, str) else list(targets),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, cfg)
