"""Backbone and tokenizer loading (hub id or local path, or the random-init tiny model) and LoRA."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from kava.hub import hub_offline
from kava.model.attention import ATTN_IMPLEMENTATION
from kava.preflight import offline_mode_set
from kava.schema import LoraSchema, ModelSchema, TinySchema

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _offline_hint(setting: str, name: str, err: Exception) -> OSError:
    return OSError(
        f"could not load '{name}' (set by `{setting}`): {err}. "
        + ("HF_HUB_OFFLINE is set, so only local files are used. " if offline_mode_set() else "")
        + f"Download it once (huggingface-cli download {name} --local-dir DIR) and pass `{setting}=DIR`."
    )


def tiny_config(spec: TinySchema, vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> LlamaConfig:
    """Config of the random-init GQA Llama used for CPU runs and tests."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=False,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        attn_implementation=ATTN_IMPLEMENTATION,
    )


def local_only(path: str) -> bool:
    """``local_files_only`` for ``from_pretrained``: a local folder, or the Hub unreachable (no retries then)."""
    return Path(path).is_dir() or hub_offline()


def load_tokenizer(model_cfg: ModelSchema, corpus: Iterable[str] | None = None):
    """The backbone's tokenizer; for the tiny model one trained offline on ``corpus`` unless saved already."""
    path = model_cfg.tokenizer_path or model_cfg.name_or_path
    if path:
        try:
            tok = AutoTokenizer.from_pretrained(path, local_files_only=local_only(path))
        except (OSError, ValueError) as err:
            raise _offline_hint("model.tokenizer_path", str(path), err) from err
    else:
        if corpus is None:
            raise ValueError("the tiny model trains its tokenizer on the training text: pass a corpus")
        from kava.data.tokenizer import train_tiny_tokenizer

        tok = train_tiny_tokenizer(corpus, vocab_size=model_cfg.tiny.vocab_size)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token is None:
        raise ValueError(f"tokenizer of '{path}' has no EOS token; set one in its tokenizer_config.json")
    return tok


def load_base_model(model_cfg: ModelSchema, tokenizer) -> PreTrainedModel:
    """The frozen base model: a local/hub checkpoint, or the tiny random-init Llama built from a seed."""
    dtype = DTYPES[model_cfg.dtype]
    path = model_cfg.name_or_path
    if path:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION, local_files_only=local_only(path)
            )
        except (OSError, ValueError) as err:
            raise _offline_hint("model.name_or_path", str(path), err) from err
    else:
        cfg = tiny_config(
            model_cfg.tiny,
            len(tokenizer),
            tokenizer.pad_token_id,
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(model_cfg.init_seed)
            model = LlamaForCausalLM(cfg)
        model = model.to(dtype)
    model.config.use_cache = False
    model.train()  # from_pretrained returns eval mode; Lightning keeps each module's mode (training sets dropout)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def apply_lora(base: PreTrainedModel, lora_cfg: LoraSchema) -> PeftModel | PreTrainedModel:
    """Wrap with LoRA adapters (only they train); ``r=0`` trains the full model instead."""
    if not lora_cfg.r:
        for p in base.parameters():
            p.requires_grad_(True)
        return base
    targets = lora_cfg.target_modules
    cfg = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, cfg)


def compile_decoder(model: PreTrainedModel, backend: str = "inductor") -> None:
    """Compile the decoder stack in place (``model.compile``), dynamic shapes: batches of other lengths and the passes'
    different query lengths reuse its graphs instead of recompiling; the code around it (the Jacobi loop, R-KV, the
    losses) stays eager, and parameter names and checkpoints are unchanged. The whole stack rather than each layer
    (torchtune's way): transformers reads its output-capture flag (a ContextVar) in a hook of every layer, which
    breaks a layer's graph unless the flag was set inside the compiled region, i.e. by the decoder's own forward.
    ``backend``: dynamo's (the GPU check's CPU dry run uses ``aot_eager``, which generates no code)."""
    model.get_decoder().compile(dynamic=True, backend=backend)
