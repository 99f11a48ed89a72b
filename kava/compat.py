"""A run's configuration across versions: an older checkpoint's hyperparameters in today's form, the method's name,
and what a resume must keep equal to the checkpoint's run.

Pure functions on config mappings (OmegaConf only), so the entry points, the Lightning module and the exporter
share them without importing each other.
"""

from __future__ import annotations

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


def with_method(hp: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters of an older checkpoint in today's form: before ``method=`` (``loss.objective``), before
    ``loss.kv_slots`` (such runs supervised every slot at every step: ``all``) and before ``latent.align_positions``
    (consecutive positions)."""
    hp = dict(hp)
    loss = dict(hp.get("loss") or {})
    if "kv_steps" in loss:
        loss.setdefault("kv_slots", "all")
    objective = loss.pop("objective", None)
    if hp.get("method") is None and objective is not None:
        target = "kava.methods.cot.CoT" if objective == "cot" else DEFAULT_METHOD["_target_"]
        hp["method"] = {"_target_": target}
    if hp.get("method") is not None and not hp["method"].get("name"):  # before method.name: named by its class
        hp["method"] = {**hp["method"], "name": method_name(hp)}
    latent = dict(hp.get("latent") or {})
    latent.setdefault("align_positions", False)  # before latent.align_positions: consecutive positions
    hp["loss"], hp["latent"] = loss, latent
    return hp


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
