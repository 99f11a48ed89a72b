"""Strategy factories that need Python objects a YAML file cannot name (FSDP wrap policies)."""

from __future__ import annotations

from typing import Any


def decoder_layer_classes() -> set[type]:
    """Decoder-layer classes of the supported backbones: the FSDP wrapping unit."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    return {LlamaDecoderLayer, Qwen2DecoderLayer}


def checkpointed_classes() -> set[type]:
    """What ``activation_checkpointing`` recomputes in the backward: each decoder layer's MLP. Not the whole layer:
    its attention appends to the KV cache the method reads (the teacher's targets, the prefix the Jacobi passes
    extend), and recomputing it would append a second time (the backward then fails on mismatched key lengths)."""
    from transformers.models.llama.modeling_llama import LlamaMLP
    from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP

    return {LlamaMLP, Qwen2MLP}


def fsdp_strategy(
    sharding_strategy: str = "FULL_SHARD", activation_checkpointing: bool = False, **kwargs: Any
):  # -> lightning.pytorch.strategies.FSDPStrategy
    """FSDP that wraps each decoder layer and keeps original parameters (needed when only LoRA trains);
    ``activation_checkpointing`` recomputes the layers' MLPs in the backward (``checkpointed_classes``)."""
    from lightning.pytorch.strategies import FSDPStrategy

    layers = decoder_layer_classes()
    return FSDPStrategy(
        auto_wrap_policy=layers,
        activation_checkpointing_policy=checkpointed_classes() if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        use_orig_params=True,
        state_dict_type="full",
        **kwargs,
    )
