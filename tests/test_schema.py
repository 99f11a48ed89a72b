"""Config schema: bad values fail before anything loads, naming the key; typos get the nearest key; every
Lightning Trainer argument is settable under ``trainer.``."""

from __future__ import annotations

import copy
import inspect
import re
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from kava.config import CONF_DIR
from kava.schema import (
    ConfigValueError,
    DataSchema,
    LatentSchema,
    LossSchema,
    MethodSchema,
    ModelSchema,
    OptimSchema,
    TeacherSchema,
    ValAccSchema,
    check_override_keys,
    compile_scope,
    typed,
    validate_train,
)

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = {"model": ModelSchema, "latent": LatentSchema, "teacher": TeacherSchema, "loss": LossSchema,
            "optim": OptimSchema, "data": DataSchema, "val_acc": ValAccSchema, "method": MethodSchema}  # fmt: skip


def compose_train(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[*overrides, "paths.output_dir=/tmp/kava-schema"])


BAD = [
    (["optim.lr=0"], "optim.lr"),
    (["optim.lr=-1"], "optim.lr"),
    (["latent.num_tokens=0"], "latent.num_tokens"),
    (["latent.num_iterations=0"], "latent.num_iterations"),
    (["loss.kv_loss=huber"], "loss.kv_loss=huber: must be one of smooth_l1, mse, l1"),
    (["teacher.mode=both"], "teacher.mode=both: must be one of shared, frozen"),
    (["data.on_bad_row=drop"], "data.on_bad_row=drop: must be one of error, skip"),
    (["loss.kv_steps=[0.5,0.5]"], "loss.kv_steps"),
    (["loss.kv_steps=every"], "loss.kv_steps=every"),
    (["loss.kv_slots=first"], "loss.kv_slots=first: must be one of all, progressive"),
    (["data.global_batch_size=20", "data.micro_batch_size=8"], "data.global_batch_size=20"),
    (["trainer.accumulate_grad_batches=2"], "trainer.accumulate_grad_batches"),
    (["loss.alpha2=-1"], "loss.alpha2"),
    (["data.synthetic.task=sort"], "data.synthetic.task=sort: must be one of arith, perm, chase, modsum"),
    (["model=llama1b", "strategy=fsdp", "model.dtype=bfloat16"], "strategy=fsdp with model.dtype=bfloat16"),
    (["model.compile=layers"], "model.compile=layers: must be false, true"),
    (["model.compile=step", "strategy=ddp"], "model.compile=step compiles the step on one device only"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[o[0] for o, _ in BAD])
def test_bad_values_fail_at_compose_naming_the_key(overrides, message):
    start = time.perf_counter()
    cfg = compose_train(overrides)
    with pytest.raises(ConfigValueError, match=message.replace("[", r"\[")):
        validate_train(cfg)
    assert time.perf_counter() - start < 2.0
    validate_train(compose_train([]))  # the defaults pass


@pytest.mark.parametrize(
    "value,scope", [("false", None), ("true", "decoder"), ("decoder", "decoder"), ("step", "step")]
)
def test_model_compile_takes_a_bool_or_a_scope(value, scope):
    cfg = compose_train([f"model.compile={value}"])
    validate_train(cfg)
    assert compile_scope(cfg.model.compile) == scope


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["method=sgd"], "Could not find 'method/sgd'"),  # lists the methods
        (["latent.num_tokens=many"], "latent.num_tokens"),  # typed by the schema
        (["loss.alpah1=3"], "alpah1"),
    ],
)
def test_unknown_options_types_and_keys_fail_at_compose(overrides, message):
    with pytest.raises(ConfigCompositionException, match=message):
        compose_train(overrides)


def test_a_typo_names_the_nearest_keys():
    msg = check_override_keys("train", ["model=llama3b", "loss.alpah1=3", "latent.num_tokens=4"])
    assert msg and "'loss.alpah1'" in msg and "loss.alpha1" in msg
    assert "optim.weight_decay" in check_override_keys("train", ["optim.wieght_decay=0.1"])
    assert check_override_keys("train", ["loss.alpha1=3", "trainer.fast_dev_run=true", "+foo.bar=1"]) is None
    # keys whose value interpolates what only a running Hydra app knows (paths.output_dir) exist too
    assert check_override_keys("train", ["paths.output_dir=/tmp/x", "trainer.default_root_dir=/tmp/y"]) is None


@pytest.mark.slow
def test_the_command_line_stops_without_loading_anything():
    """A bad value or a typo stops train.py with the key named, before torch is imported."""
    for args, expect in ((["optim.lr=-1"], "optim.lr=-1.0: must be > 0"), (["loss.alpah1=3"], "loss.alpha1")):
        code = (
            "import runpy, sys, atexit; sys.argv = ['train.py', *sys.argv[1:]]; "
            "atexit.register(lambda: print('TORCH', 'torch' in sys.modules)); "
            "runpy.run_path('train.py', run_name='__main__')"
        )
        proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode != 0 and expect in proc.stderr, proc.stderr[-2000:]
        assert "TORCH False" in proc.stdout


def test_every_trainer_argument_is_a_key_of_trainer_base():
    base = yaml.safe_load((CONF_DIR / "trainer" / "base.yaml").read_text())
    args = set(inspect.signature(L.Trainer.__init__).parameters) - {"self", "logger", "callbacks", "strategy"}
    assert set(base) - {"_target_"} == args
    cfg = compose_train(["trainer.fast_dev_run=true", "trainer.detect_anomaly=true", "trainer.max_time=00:00:05:00"])
    assert cfg.trainer.fast_dev_run is True and cfg.trainer.detect_anomaly is True


def test_every_shipped_config_passes_validation():
    """Each method, each Table 6 row and each study experiment composes and validates."""
    rows = [p.stem.split("_", 1) for p in (CONF_DIR / "recipe" / "table6").glob("*.yaml")]
    combos = [[f"method={p.stem}"] for p in (CONF_DIR / "method").glob("*.yaml")]
    combos += [[f"model={m}", f"data={d}", "loss=table6"] for m, d in rows]
    combos += [[f"experiment={p.stem}", "model.name_or_path=x"] for p in (CONF_DIR / "experiment").glob("*.yaml")]
    combos += [[f"data={p.stem}", "data.path=x"] for p in (CONF_DIR / "data").glob("*.yaml")]
    combos += [[f"study_task={p.stem}"] for p in (CONF_DIR / "study_task").glob("*.yaml")]
    assert len(combos) >= 7 + 6 + 9 + 4 + 3
    for overrides in combos:
        cfg = compose_train(overrides)
        validate_train(cfg)
        for name, schema in SECTIONS.items():  # every section is complete: the code's typed objects have no gap
            assert isinstance(typed(schema, OmegaConf.to_container(cfg[name], resolve=True), name), schema)


def test_a_section_missing_a_key_is_refused_naming_it():
    loss = OmegaConf.to_container(compose_train([]).loss)
    del loss["codi_layers"]
    with pytest.raises(ConfigValueError, match="^loss.codi_layers has no value: set it$"):
        typed(LossSchema, loss, "loss")
    with pytest.raises(ConfigValueError, match="loss.bogus: Key 'bogus' not in"):
        typed(LossSchema, {**loss, "codi_layers": "all", "bogus": 1}, "loss")


def test_the_code_declares_no_defaults_of_its_own():
    """No ``<config>.get("key", <default>)`` in kava/: values come from conf/ (and kava.compat for old checkpoints)."""
    found = [
        f"{path.relative_to(ROOT)}:{i}"
        for path in sorted((ROOT / "kava").rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(
            r"""\b(\w*cfg\w*|model|data|loss|latent|teacher|optim|val_acc|lora|spec|hp|method|trainer|strategy)"""
            r"""\.get\(["'][a-z_]+["'], """,
            line,
        )
    ]
    assert not found, found


def test_an_older_checkpoint_gets_every_key_it_predates():
    """Today's hyperparameters without the keys of kava.compat.PREDATES build the same module as with them."""
    from kava.compat import PREDATES, with_method

    hp = {k: OmegaConf.to_container(compose_train(["method=pccot"])[k], resolve=True) for k in SECTIONS}
    old = copy.deepcopy(hp)
    for key in PREDATES:
        *path, leaf = key.split(".")
        node = old
        for part in path:
            node = node[part]
        node.pop(leaf)
    del old["method"]["name"], old["model"]["name"]
    restored = with_method(old)
    for name, schema in SECTIONS.items():
        assert isinstance(typed(schema, restored[name], name), schema)
    assert restored["method"] == hp["method"] and restored["model"]["lora"] == hp["model"]["lora"]
    assert restored["optim"]["warmup_ratio"] == 0.0  # what such runs did without the key, not today's YAML value


def test_fsdp_sets_one_dtype_after_the_model_group():
    cfg = compose_train(["model=llama1b", "strategy=fsdp"])  # llama1b says bfloat16; the strategy comes after it
    assert cfg.model.dtype == "float32" and cfg.trainer.precision == "bf16-mixed"
    validate_train(cfg)


@pytest.mark.parametrize("method", sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml")))
def test_the_built_objects_carry_the_yaml_values(method, tokenizer):
    """Each method's module and data module hold the composed config's values, where the code once had defaults of
    its own that disagreed: optim.warmup_ratio, loss.layerwise_std, data.max_length, model.tiny.max_position_embeddings
    (the tiny model's width is shrunk for speed; those four keys keep their YAML values)."""
    from helpers import data_kwargs, module_sections

    from kava.data.datamodule import GSM8KDataModule
    from kava.lit_module import KAVALitModule

    shrink = ["model.tiny.hidden_size=64", "model.tiny.intermediate_size=128", "model.tiny.num_layers=2",
              "model.tiny.vocab_size=300"]  # fmt: skip
    cfg = compose_train([f"method={method}", *shrink])
    module = KAVALitModule(**module_sections([f"method={method}", *shrink]), tokenizer=tokenizer)
    assert module.optim_cfg.warmup_ratio == cfg.optim.warmup_ratio == 0.05
    assert module.method.loss_cfg.layerwise_std is cfg.loss.layerwise_std is True
    assert module.backbone.config.max_position_embeddings == cfg.model.tiny.max_position_embeddings == 1024
    assert module.method.latent_cfg.num_tokens == cfg.latent.num_tokens
    assert type(module.method).__name__ == cfg.method._target_.rsplit(".", 1)[1]
    assert GSM8KDataModule(**data_kwargs([f"method={method}"])).max_length == cfg.data.max_length == 256
