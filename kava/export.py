"""Export the trained parts of a checkpoint as a PEFT-compatible folder, and load such a folder back.

The folder holds ``adapter_config.json`` + ``adapter_model.safetensors`` (loadable with
``PeftModel.from_pretrained(base, folder)``), ``student.safetensors`` (``prj`` and the ``<bot>``/``<eot>``/latent
embeddings), ``kava_config.json`` (everything needed to rebuild the module) and the tokenizer.

    python -m kava.export CHECKPOINT OUT_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from kava.lit_module import KAVALitModule, with_method

CONFIG_FILE = "kava_config.json"
STUDENT_FILE = "student.safetensors"


def export_pretrained(module: KAVALitModule, out_dir: str | Path) -> Path:
    """Write the folder described in the module docstring; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not isinstance(module.backbone, PeftModel):
        raise ValueError("export needs a LoRA backbone (model.lora.r > 0); a fully fine-tuned model is a checkpoint")
    module.backbone.save_pretrained(out)
    if module.student is not None:  # methods without latents (cot, nocot) have only the adapters
        tensors = {k: v.detach().contiguous().cpu() for k, v in module.student.state_dict().items()}
        save_file(tensors, out / STUDENT_FILE)
    module.tokenizer.save_pretrained(out)
    hp = {k: v for k, v in dict(module.hparams).items()}
    (out / CONFIG_FILE).write_text(json.dumps({"format": 1, "hyper_parameters": hp}, indent=1, default=str))
    return out


def is_export(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).exists()


def load_pretrained(folder: str | Path, map_location: str = "cpu") -> KAVALitModule:
    """Rebuild the module from an exported folder (base model from its config or tiny seed + the trained parts)."""
    folder = Path(folder)
    hp = with_method(json.loads((folder / CONFIG_FILE).read_text())["hyper_parameters"])
    tiny = not hp["model"].get("name_or_path")
    tokenizer = AutoTokenizer.from_pretrained(folder) if tiny else None
    module = KAVALitModule(tokenizer=tokenizer, **hp)
    set_peft_model_state_dict(module.backbone, load_file(folder / "adapter_model.safetensors", device=map_location))
    if module.student is not None:
        module.student.load_state_dict(load_file(folder / STUDENT_FILE, device=map_location))
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description="Export a kava checkpoint as a PEFT-compatible folder")
    ap.add_argument("checkpoint")
    ap.add_argument("out_dir")
    args = ap.parse_args()
    path = export_pretrained(KAVALitModule.from_checkpoint(args.checkpoint), args.out_dir)
    print(f"exported to {path}")


if __name__ == "__main__":
    main()
