"""The config schema: dataclass structured configs (types) registered in Hydra's ConfigStore, and the value checks
that run before anything is loaded. Defaults live in the YAML files; the schema holds types and allowed values.

Only the standard library, OmegaConf and Hydra are imported here, so a bad value stops a run within a second.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, ValidationError

from kava.errors import UserError

KV_LOSSES = ("smooth_l1", "mse", "l1")
KV_STEPS = ("all", "last", "linear")
KV_SLOTS = ("all", "progressive")
TEACHER_MODES = ("shared", "frozen")
COMPILE_SCOPES = ("decoder", "step")  # model.compile: the decoder stack, or the whole loss computation as one graph
TEACHER_TARGETS = ("adapted", "base", "base_codi")
STUDENT_CE_SPANS = ("prompt_answer", "answer")
KEY_SPACES = ("post_rope", "pre_rope")
CODI_POSITIONS = ("prompt_end", "before_answer")
CODI_LAYERS = ("all", "last")
LATENT_SCALES = ("layernorm", "embedding")
ON_BAD_ROW = ("error", "skip")
DATA_SOURCES = ("synthetic", "local", "hub")
SYNTHETIC_TASKS = ("arith", "perm", "chase", "modsum")  # kava/data/synthetic.py, kava/data/tasks.py
TASK_SIZES = {"perm": (2, 9), "chase": (2, 10), "modsum": (2, 10)}  # states per depth-bound task: single digits


@dataclass
class LatentSchema:
    num_tokens: int = MISSING
    num_iterations: int = MISSING
    use_projection: bool = MISSING
    proj_dim: int | None = None
    output_scale: str = MISSING
    init_seed: int | None = None
    align_positions: bool = MISSING


@dataclass
class TeacherSchema:
    mode: str = MISSING
    targets: str = MISSING
    share_question: bool = MISSING


@dataclass
class LossSchema:
    alpha1: float = MISSING
    alpha2: float = MISSING
    kv_steps: Any = MISSING  # all | last | linear | [w_1, ..., w_T]
    kv_slots: str = MISSING  # all | progressive
    kv_loss: str = MISSING
    layerwise_std: bool = MISSING
    rkv_lambda: float = MISSING
    rkv_layer_chunk: int | None = None
    teacher_ce_weight: float = MISSING
    codi_std_norm: bool = MISSING
    student_ce_on: str = MISSING
    key_space: str = MISSING
    codi_position: str = MISSING
    codi_layers: str = MISSING


@dataclass
class OptimSchema:
    lr: float = MISSING
    weight_decay: float = MISSING
    warmup_ratio: float = MISSING
    betas: list[float] = MISSING
    latent_lr_scale: float = MISSING


@dataclass
class ValAccSchema:
    num_batches: int = MISSING
    every_n_validations: int = MISSING
    max_new_tokens: int = MISSING
    max_cot_tokens: int = MISSING


@dataclass
class DiagnosticsSchema:
    grad_every_n_steps: int = MISSING
    grad_per_group: bool = MISSING


@dataclass
class SyntheticSchema:
    """``data.synthetic``: the built-in generators' knobs (``kava/data/synthetic.py``, ``kava/data/tasks.py``)."""

    task: str = MISSING
    size: int | None = MISSING
    num_train: int = MISSING
    num_val: int = MISSING
    num_test: int = MISSING
    num_steps: int = MISSING
    operand_min: int = MISSING
    operand_max: int = MISSING
    natural_language: bool = MISSING
    seed: int = MISSING


@dataclass
class DataSchema:
    """``conf/data/*.yaml`` (every data config extends ``synthetic.yaml``, whose values are the defaults)."""

    _target_: str = MISSING
    name: str = MISSING
    source: str = MISSING
    path: str | None = MISSING
    hub_id: str | None = MISSING
    splits: dict[str, str] | None = None
    val_path: str | None = MISSING
    test_path: str | None = MISSING
    val_size: int = MISSING
    synthetic: SyntheticSchema = field(default_factory=SyntheticSchema)
    drop_last_step: bool = MISSING
    drop_cot: bool = MISSING
    answer_prompt: str = MISSING
    max_length: int = MISSING
    micro_batch_size: int = MISSING
    global_batch_size: int = MISSING
    eval_batch_size: int = MISSING
    on_bad_row: str = MISSING
    on_too_long: str | None = MISSING
    cot_split: str = MISSING
    num_latents: int = MISSING
    num_workers: int = MISSING
    num_proc: int | None = MISSING
    cache_dir: str | None = MISSING
    seed: int = MISSING


@dataclass
class TinySchema:
    """``model.tiny``: the random-init GQA Llama (``model.name_or_path=null``)."""

    hidden_size: int = MISSING
    intermediate_size: int = MISSING
    num_layers: int = MISSING
    num_heads: int = MISSING
    num_kv_heads: int = MISSING
    vocab_size: int = MISSING
    max_position_embeddings: int = MISSING


@dataclass
class LoraSchema:
    r: int = MISSING  # 0: full fine-tuning
    alpha: float = MISSING
    dropout: float = MISSING
    target_modules: Any = MISSING  # all-linear | [module names]


@dataclass
class ModelSchema:
    name: str = MISSING
    name_or_path: str | None = MISSING
    tokenizer_path: str | None = MISSING
    init_seed: int = MISSING
    dtype: str = MISSING
    compile: Any = MISSING  # false | decoder (true) | step: what torch.compile compiles (COMPILE_SCOPES)
    tiny: TinySchema | None = MISSING
    lora: LoraSchema = field(default_factory=LoraSchema)


@dataclass
class MethodSchema:
    """``conf/method/<name>.yaml``: the method's one name and its class (a ``kava.methods.base.Method``)."""

    name: str = MISSING
    _target_: str = MISSING


@dataclass
class TrainSchema:
    """``conf/train.yaml`` and its groups; groups without a dataclass here are typed ``Any``."""

    latent: LatentSchema = field(default_factory=LatentSchema)
    teacher: TeacherSchema = field(default_factory=TeacherSchema)
    loss: LossSchema = field(default_factory=LossSchema)
    optim: OptimSchema = field(default_factory=OptimSchema)
    val_acc: ValAccSchema = field(default_factory=ValAccSchema)
    diagnostics: DiagnosticsSchema = field(default_factory=DiagnosticsSchema)
    method: MethodSchema = field(default_factory=MethodSchema)
    data: DataSchema = field(default_factory=DataSchema)
    model: ModelSchema = field(default_factory=ModelSchema)
    trainer: Any = MISSING  # Lightning's Trainer arguments (conf/trainer/base.yaml lists them); Lightning checks them
    logger: Any = None
    callbacks: Any = None
    strategy: Any = MISSING  # conf/strategy/ (single: Lightning picks the device)
    paths: Any = MISSING
    task_name: str = MISSING
    seed: int = MISSING
    ckpt_path: str | None = None
    optimized_metric: str = MISSING


S = TypeVar("S")


def typed(schema: type[S], section: Any, name: str) -> S:
    """The config section ``name`` as an instance of its schema dataclass: what the code receives, so that no module
    declares a default of its own. A missing, unknown or mistyped key raises :class:`ConfigValueError` naming it."""
    if isinstance(section, schema):
        return section
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), section))  # type: ignore[return-value]
    except (MissingMandatoryValue, ValidationError, ConfigKeyError, ConfigAttributeError) as err:
        key = f"{name}.{err.full_key}" if getattr(err, "full_key", None) else name
        what = "has no value: set it" if isinstance(err, MissingMandatoryValue) else str(err).splitlines()[0]
        raise ConfigValueError(f"{key} {what}" if isinstance(err, MissingMandatoryValue) else f"{key}: {what}") from err


def register() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainSchema)


class ConfigValueError(UserError, ValueError):
    """A config value is out of range; the message names the key and what it may be."""


def _choice(cfg: Mapping[str, Any], key: str, allowed: Sequence[str]) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigValueError(f"{key}={value}: must be one of {', '.join(allowed)}")


def _at_least(cfg: Mapping[str, Any], key: str, low: float, strict: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None or (value <= low if strict else value < low):
        raise ConfigValueError(f"{key}={value}: must be {'>' if strict else '>='} {low}")


def compile_scope(value: Any) -> str | None:
    """``model.compile``'s scope: None (false), ``decoder`` (true, or by name) or ``step``."""
    if value is False or value is None:
        return None
    if value is True:
        return "decoder"
    if value not in COMPILE_SCOPES:
        raise ConfigValueError(f"model.compile={value}: must be false, true (= decoder), {' or '.join(COMPILE_SCOPES)}")
    return value


def validate_train(cfg: DictConfig) -> None:
    """Every value check a training run needs before loading anything; raises :class:`ConfigValueError`."""
    if compile_scope(OmegaConf.select(cfg, "model.compile")) == "step" and "_target_" in (cfg.get("strategy") or {}):
        raise ConfigValueError(
            "model.compile=step compiles the step on one device only (it is untested under DDP, FSDP or DeepSpeed, "
            "whose hooks run inside the step): use strategy=single, or model.compile=decoder with this strategy"
        )
    _at_least(cfg, "optim.lr", 0, strict=True)
    _at_least(cfg, "optim.latent_lr_scale", 0, strict=True)
    _at_least(cfg, "optim.weight_decay", 0)
    _at_least(cfg, "latent.num_tokens", 1)
    _at_least(cfg, "latent.num_iterations", 1)
    _choice(cfg, "latent.output_scale", LATENT_SCALES)
    _choice(cfg, "teacher.mode", TEACHER_MODES)
    _choice(cfg, "teacher.targets", TEACHER_TARGETS)
    for key, allowed in (("kv_loss", KV_LOSSES), ("kv_slots", KV_SLOTS), ("student_ce_on", STUDENT_CE_SPANS),
                         ("key_space", KEY_SPACES), ("codi_position", CODI_POSITIONS),
                         ("codi_layers", CODI_LAYERS)):  # fmt: skip
        _choice(cfg, f"loss.{key}", allowed)
    _at_least(cfg, "loss.alpha1", 0)
    _at_least(cfg, "loss.alpha2", 0)
    _at_least(cfg, "loss.rkv_lambda", 0)
    steps, t = cfg.loss.kv_steps, int(cfg.latent.num_iterations)
    if isinstance(steps, ListConfig | list):
        if len(steps) != t or any(float(w) < 0 for w in steps) or sum(float(w) for w in steps) <= 0:
            raise ConfigValueError(
                f"loss.kv_steps={list(steps)}: a list needs latent.num_iterations={t} weights >= 0 with a positive sum"
            )
    elif steps not in KV_STEPS:
        raise ConfigValueError(f"loss.kv_steps={steps}: must be one of {', '.join(KV_STEPS)} or a list of {t} weights")
    no_adapters = not OmegaConf.select(cfg, "model.lora.r")
    if no_adapters and (cfg.teacher.mode == "frozen" or cfg.teacher.targets != "adapted"):
        key = "teacher.mode=frozen" if cfg.teacher.mode == "frozen" else f"teacher.targets={cfg.teacher.targets}"
        raise ConfigValueError(
            f"{key} with model.lora.r=0: the adapter-free teacher is the base model with the LoRA adapters disabled, "
            "and a fully fine-tuned model has none; set model.lora.r > 0 (e.g. model.lora.r=16) or drop the override"
        )
    data = cfg.data
    _choice(cfg, "data.source", DATA_SOURCES)
    _choice(cfg, "data.on_bad_row", ON_BAD_ROW)
    _choice(cfg, "data.on_too_long", (*ON_BAD_ROW, None))
    if data.source == "local" and not data.path:
        raise ConfigValueError("data=local needs data.path=<training .json/.jsonl/.parquet file or directory>")
    if data.source == "hub" and not (data.hub_id or data.path):
        raise ConfigValueError("data.source=hub needs data.hub_id (or a local copy in data.path)")
    if data.get("source") == "synthetic" and not data.get("path"):
        check_task(data.synthetic.get("task"), data.synthetic.get("num_steps"), data.synthetic.get("size"))
    _at_least(cfg, "data.micro_batch_size", 1)
    if int(data.global_batch_size) % int(data.micro_batch_size):
        raise ConfigValueError(
            f"data.global_batch_size={data.global_batch_size} is not a multiple of data.micro_batch_size="
            f"{data.micro_batch_size}: change one of them"
        )
    if int(OmegaConf.select(cfg, "trainer.accumulate_grad_batches", default=1) or 1) != 1:
        raise ConfigValueError(
            f"trainer.accumulate_grad_batches={cfg.trainer.accumulate_grad_batches}: accumulation is derived as "
            "data.global_batch_size / (data.micro_batch_size x devices x nodes); set data.global_batch_size instead"
        )
    if OmegaConf.select(cfg, "trainer.use_distributed_sampler") is True:
        raise ConfigValueError(
            "trainer.use_distributed_sampler=true: kava's data module shards its loaders over processes itself (so a "
            "multi-process run resumes mid-epoch exactly); Lightning's sampler would shard them twice. Leave it false"
        )
    strategy = str(OmegaConf.select(cfg, "strategy._target_", default="") or "")
    if strategy.endswith("fsdp_strategy") and OmegaConf.select(cfg, "model.dtype") != "float32":
        raise ConfigValueError(
            f"strategy=fsdp with model.dtype={OmegaConf.select(cfg, 'model.dtype')}: FSDP flattens each decoder "
            "layer's frozen weights and its float32 LoRA weights into one tensor, which needs one dtype. Use "
            "model.dtype=float32 (strategy=fsdp sets it; bf16 compute comes from trainer.precision=bf16-mixed)"
        )
    target = OmegaConf.select(cfg, "method._target_")
    if not isinstance(target, str) or not target:
        raise ConfigValueError(f"method._target_={target}: pick a method with method=<name> (conf/method/)")
    name = OmegaConf.select(cfg, "method.name")
    if not isinstance(name, str) or not name:
        raise ConfigValueError(
            f"method.name={name}: every method config names its method (W&B group, logs, model card); add "
            "`name: <the file's name>` under `method:` in conf/method/<name>.yaml"
        )
    wandb = OmegaConf.select(cfg, "logger.wandb")
    if wandb and wandb.get("log_model") and wandb.get("offline"):
        raise ConfigValueError(
            "logger.wandb.log_model=true in an offline W&B run: checkpoints can only be uploaded online (set "
            "WANDB_API_KEY or run `wandb login`); offline runs keep them in <run folder>/checkpoints"
        )


def check_task(task: Any, num_steps: Any, size: Any) -> None:
    """``data.synthetic``'s task and its knobs (kava/data/tasks.py)."""
    if task not in SYNTHETIC_TASKS:
        raise ConfigValueError(f"data.synthetic.task={task}: must be one of {', '.join(SYNTHETIC_TASKS)}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigValueError(f"data.synthetic.num_steps={num_steps}: must be >= 1")
    if task == "arith":
        if size is not None:
            raise ConfigValueError(
                f"data.synthetic.size={size} is a knob of the depth-bound tasks; task=arith has none: drop it"
            )
        return
    lo, hi = TASK_SIZES[task]
    if not isinstance(size, int) or not lo <= size <= hi:
        raise ConfigValueError(f"data.synthetic.size={size}: the {task} task takes sizes {lo}..{hi} (its states)")


def leaf_keys(cfg: Any, prefix: str = "") -> Iterable[str]:
    """Every dotted key of a config (the keys of lists are not descended into)."""
    if isinstance(cfg, DictConfig):
        for key in cfg.keys():
            path = f"{prefix}{key}"
            yield path
            node = cfg._get_node(key)
            if isinstance(node, DictConfig):
                yield from leaf_keys(node, f"{path}.")


def unknown_key_message(cfg: DictConfig, overrides: Sequence[str]) -> str | None:
    """For the first ``key=value`` override whose key the config lacks: a message with the nearest valid keys."""
    keys = None
    for arg in overrides:
        if arg.startswith(("-", "+", "~")) or "=" not in arg:
            continue
        key = arg.split("=", 1)[0]
        if "." not in key or key.startswith("hydra.") or "@" in key:
            continue
        if not _has_key(cfg, key):
            keys = keys if keys is not None else list(leaf_keys(cfg))
            near = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(near)}? " if near else ""
            return f"unknown config key '{key}': {hint}(use +{key}=... to add a new key)"
    return None


def _has_key(cfg: DictConfig, key: str) -> bool:
    """Whether the dotted ``key`` exists, without resolving any value (some need a running Hydra app)."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig):
            return False
        try:  # a typed (schema) node raises for a key it does not define
            node = node._get_node(part, throw_on_missing_key=False)
        except (ConfigAttributeError, ConfigKeyError):
            return False
        if node is None:
            return False
    return True


def check_override_keys(config_name: str, argv: Sequence[str]) -> str | None:
    """Compose ``config_name`` with the command line's group choices and check its ``key=value`` keys exist; the
    message for the first unknown one (None when all exist, or when composing fails: Hydra reports that itself)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from kava.paths import CONF_DIR

    pairs = [a for a in argv if "=" in a and not a.startswith(("-", "+", "~"))]
    if not any("." in a.split("=", 1)[0] for a in pairs):
        return None
    groups = [a for a in pairs if "." not in a.split("=", 1)[0] and "," not in a and "(" not in a]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=groups)
    except HydraException:
        return None
    return unknown_key_message(cfg, pairs)
