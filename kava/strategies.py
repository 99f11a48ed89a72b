"""Strategy factories that need Python objects a YAML file cannot name (FSDP wrap policies)."""

from __future__ import annotations

from typing import Any


def decoder_layer_classes() -> set[type]:
    """Decoder-layer classes of the supported backbones: the FSDP wrapping unit."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    return {LlamaDecoderLayer, Qwen2DecoderLayer}


def fsdp_strategy(
    sharding_strategy: str = "FULL_SHARD", activation_checkpointing: bool = False, **kwargs: Any
):  # -> lightning.pytorch.strategies.FSDPStrategy
    """FSDP that wraps each decoder layer and keeps original parameters (needed when only LoRA trains)."""
    from lightning.pytorch.strategies import FSDPStrategy

    layers = decoder_layer_classes()
    return FSDPStrategy(
        auto_wrap_policy=layers,
        activation_checkpointing_policy=layers if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        use_orig_params=True,
        state_dict_type="full",
        **kwargs,
    )
