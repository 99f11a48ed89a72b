"""A run's configuration across versions: an older checkpoint's hyperparameters in today's form, the method's name,
and what a resume must keep equal to the checkpoint's run.

Pure functions on config mappings (OmegaConf only), so the entry points, the Lightning module and the exporter
share them without importing each other.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

DEFAULT_METHOD = {"name": "kava", "_target_": "kava.methods.kava.KaVa"}
# what must equal the checkpoint's own run for a resume: the parameters the checkpoint holds, and the objective
RESUME_KEYS = (
    "method._target_", "data.drop_cot", "latent.num_tokens", "latent.num_iterations", "latent.use_projection",
    "latent.proj_dim", "latent.align_positions", "model.name_or_path", "model.init_seed", "model.tiny",
    "model.lora.r", "model.lora.alpha", "model.lora.target_modules",
)  # fmt: skip

# A checkpoint written before ``method.name`` names its method by class; ``CoT`` is ``nocot`` with ``data.drop_cot``.
METHOD_OF_CLASS = {"KaVa": "kava", "PCCoT": "pccot", "CODI": "codi", "Pause": "pause", "CoT": "cot",
                   "AnswerCE": "answer_ce"}  # fmt: skip


def method_name_of(target: str, drop_cot: bool) -> str:
    """The config name of an older run's method from its class: ``kava.methods.cot.CoT`` + ``drop_cot`` -> ``nocot``."""
    cls = str(target).rsplit(".", 1)[-1]
    name = METHOD_OF_CLASS.get(cls, cls.lower())
    return "nocot" if name == "cot" and drop_cot else name


def method_name(hp: Any) -> str:
    """A run's method name from its hyperparameters (``method.name``; older runs: from the class, default KaVa)."""
    method = hp.get("method") or {}
    if method.get("name"):
        return str(method["name"])
    drop_cot = bool((hp.get("data") or {}).get("drop_cot"))
    return method_name_of(method.get("_target_") or DEFAULT_METHOD["_target_"], drop_cot)


# Keys added after the first checkpoints were written, with the value those runs used (what the code did without the
# key): an older checkpoint gets them, so that the module can require every key (``model.tiny.*``: tiny models only).
PREDATES = {
    "latent.use_projection": True, "latent.proj_dim": None, "latent.output_scale": "layernorm",
    "latent.init_seed": None, "latent.align_positions": False,
    "teacher.mode": "shared", "teacher.targets": "adapted", "teacher.share_question": False,
    "loss.rkv_layer_chunk": None, "loss.teacher_ce_weight": 1.0, "loss.codi_std_norm": True,
    "loss.student_ce_on": "prompt_answer", "loss.key_space": "post_rope", "loss.codi_position": "prompt_end",
    "loss.codi_layers": "all",
    "optim.warmup_ratio": 0.0, "optim.betas": [0.9, 0.999], "optim.latent_lr_scale": 1.0,
    "val_acc.num_batches": 1, "val_acc.every_n_validations": 1, "val_acc.max_new_tokens": 12,
    "val_acc.max_cot_tokens": 96,
    "data.answer_prompt": "The answer is:", "data.on_bad_row": "error", "data.cot_split": "auto",
    "data.on_too_long": None, "data.drop_cot": False, "data.num_workers": 0, "data.num_proc": None,
    "data.cache_dir": None, "data.val_path": None, "data.test_path": None, "data.hub_id": None, "data.splits": None,
    "model.tokenizer_path": None, "model.init_seed": 0, "model.dtype": "float32", "model.compile": False,
    "model.lora.dropout": 0.0, "model.lora.target_modules": "all-linear",
    "model.tiny.max_position_embeddings": 2048,
}  # fmt: skip
NO_LORA = {"r": 0, "alpha": 0.0, "dropout": 0.0, "target_modules": "all-linear"}


def with_method(hp: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters of an older checkpoint in today's form: before ``method=`` (``loss.objective``; neither: KaVa),
    before ``loss.kv_slots`` (such runs supervised every slot at every step: ``all``), and every key of
    :data:`PREDATES` it lacks."""
    hp = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in hp.items()}
    loss = hp.setdefault("loss", {})
    if "kv_steps" in loss:
        loss.setdefault("kv_slots", "all")
    objective = loss.pop("objective", None)
    if hp.get("method") is None:
        target = "kava.methods.cot.CoT" if objective == "cot" else DEFAULT_METHOD["_target_"]
        hp["method"] = {"_target_": target}
    if not hp["method"].get("name"):  # before method.name: named by its class
        hp["method"] = {**hp["method"], "name": method_name(hp)}
    data = hp.setdefault("data", {})
    if "micro_batch_size" in data:  # before data.eval_batch_size: evaluation batches were micro batches
        data.setdefault("eval_batch_size", data["micro_batch_size"])
    model = hp.setdefault("model", {})
    model.setdefault("name", model.get("name_or_path") or "tiny")
    model["lora"] = dict(model.get("lora") or NO_LORA)  # ``lora: null`` trained the full model
    model["tiny"] = dict(model["tiny"]) if model.get("tiny") is not None else None
    for key, value in PREDATES.items():
        *path, leaf = key.split(".")
        node = hp
        for part in path:
            node = node.setdefault(part, {})
            if node is None:  # model.tiny of a Hub model: no tiny keys to fill
                break
        else:
            node.setdefault(leaf, copy.copy(value))
    return hp


def with_method_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's state dict with today's parameter names: the method owns the backbone and the student, so a
    checkpoint written before that (``backbone.*``, ``student.*``) gets the ``method.`` prefix."""
    old = ("backbone.", "student.")
    return {(f"method.{k}" if k.startswith(old) else k): v for k, v in state.items()}


def _node(cfg: Any, key: str) -> Any:
    node = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    return OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else node


def incompatible(old: Mapping[str, Any] | DictConfig, new: Mapping[str, Any] | DictConfig) -> str | None:
    """The first of :data:`RESUME_KEYS` whose value differs between a checkpoint's run and this one, as
    ``key=<old> ... <new>``; None when the checkpoint can be resumed."""
    old, new = OmegaConf.create(dict(old)), OmegaConf.create(dict(new))
    for key in RESUME_KEYS:
        a, b = _node(old, key), _node(new, key)
        if a != b:
            return f"the run was trained with {key}={a} and this command has {key}={b}"
    return None


def resume_message(ckpt: str, problem: str) -> str:
    return (
        f"ckpt_path={ckpt}: {problem}; a checkpoint resumes only with its own method, latents (M, T, projection), "
        "base model and LoRA shape. Drop the override, or start a new run without ckpt_path"
    )
