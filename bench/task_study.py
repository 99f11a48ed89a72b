"""The depth-bound task study (``bench/study.py --task <name>``): does KAVA beat direct answering where a fixed-depth
model cannot answer directly? Settings of each task in ``conf/study_task/<name>.yaml`` and ``TASK_STUDIES`` below.

1. two backbones (pretraining seeds 0 and 1: random init and data order), each CoT-pretrained on the task;
2. on each, with LoRA, the variants of ``bench/study.py`` with paired initialisations: every variant of seed s has
   ``seed=s latent.init_seed=s`` (same adapters, same ``prj``, same data order); ``PLANS`` gives the seeds per variant;
3. each run evaluated once on the task's 500 test problems; the table (``docs/study_<task>.md``, between markers)
   gives each variant's mean ± std per backbone, and each paired difference KAVA dense - variant with its
   standard error over the pairs of both backbones.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study  # noqa: E402  (bench/study.py: the runs, pretraining and figures are shared)

TASK_STUDIES = {  # --task -> budgets and the KAVA variants' own overrides (chosen on validation, docs/study.md);
    # the data, backbone size, M, T and positions are in conf/study_task/<task>.yaml
    "modsum": {"pretrain_steps": 1500, "steps": 2000, "kava": ("loss.alpha2=3",)},
    "perm": {"pretrain_steps": 4000, "steps": 2000, "kava": ("loss.alpha2=3",)},
}
KAVA_VARIANTS = ("kava_dense", "kava_dense_all", "kava_last")  # the variants with a KV loss
MAIN = ("kava_dense", "nodistill", "nocot", "pause")  # the acceptance's comparison: run first, seed by seed
CONTROLS = ("nocot", "pause", "nodistill", "kava_last", "kava_dense_all", "pccot", "codi")  # KAVA dense minus each
GPU_BACKBONE = ("model.tiny.num_layers=4", "model.tiny.hidden_size=256", "model.tiny.intermediate_size=1024",
                "model.tiny.num_heads=8", "model.tiny.num_kv_heads=4")  # fmt: skip
TINY_BACKBONE = ("model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "model.tiny.num_heads=2",
                 "model.tiny.num_kv_heads=1", "data.synthetic.num_train=64", "data.synthetic.num_test=16")  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """What one invocation runs: backbones (pretraining seeds), paired seeds per variant, budgets, the overrides of
    every run (pretraining included), how many runs at a time, and the suffix of its folders and files."""

    backbones: tuple[int, ...] = (0, 1)
    seeds: dict[str, int] = field(default_factory=lambda: {
        "kava_dense": 5, "nocot": 5, "pause": 5, "nodistill": 5,
        "kava_last": 2, "kava_dense_all": 2, "pccot": 2, "codi": 2,
    })  # fmt: skip
    pretrain_steps: int | None = None  # None: the task's
    steps: int | None = None
    extra: tuple[str, ...] = ()
    jobs: int | None = None  # None: --jobs
    suffix: str = ""
    only_on: dict[str, tuple[int, ...]] = field(default_factory=dict)  # variant -> its backbones (default: all)


PLANS = {
    "full": Plan(only_on={v: (0,) for v in ("kava_last", "kava_dense_all", "pccot", "codi")}),
    "quick": Plan(backbones=(0,), seeds={"nocot": 1, "kava_dense": 1}, pretrain_steps=400, steps=300, suffix="_quick"),
    # one GPU: a deeper and wider backbone, 10 paired seeds of the four main variants, 16 runs at a time
    "gpu": Plan(seeds={"kava_dense": 10, "nocot": 10, "pause": 10, "nodistill": 10, "kava_last": 2, "pccot": 2},
                extra=("trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=32-true", *GPU_BACKBONE),
                jobs=16, suffix="_gpu"),
    # the GPU plan's pipeline on the CPU at a tiny size (tests/test_study.py runs it)
    "gpu_tiny": Plan(backbones=(0,), seeds={"kava_dense": 1, "nocot": 1}, pretrain_steps=4, steps=2,
                     extra=("trainer.accelerator=cpu", *TINY_BACKBONE), jobs=2, suffix="_gpu_tiny"),
}  # fmt: skip


def pretrain_backbone(task: str, bb: int, work: Path, steps: int, extra: tuple[str, ...] = ()) -> tuple[Path, dict]:
    overrides = [f"study_task={task}", f"trainer.max_steps={steps}", f"trainer.val_check_interval={max(steps // 2, 1)}",
                 f"seed={bb}", f"model.init_seed={bb}", *extra]  # fmt: skip
    return study.pretrain(work / f"backbone{bb}", overrides)


def latent_run(
    task: str, name: str, seed: int, backbone: Path, work: Path, steps: int, extra: tuple[str, ...] = ()
) -> dict:
    own = TASK_STUDIES[task]["kava"] if name in KAVA_VARIANTS else ()
    overrides = [f"study_task={task}", f"trainer.max_steps={steps}",
                 f"trainer.val_check_interval={max(steps // 8, 1)}", f"latent.init_seed={seed}", *own,
                 *(e for e in extra if not e.startswith("model.tiny."))]  # fmt: skip
    return study.run_variant(name, seed, backbone, work, overrides)


def last_val_acc(run: Path) -> float | None:
    rows = [r for r in study.metrics_csv(run) if r.get("val/acc")]
    return 100 * float(rows[-1]["val/acc"]) if rows else None


def decoder(name: str) -> str:
    return "teacher" if name == "nocot" else "student"


def paired(a: list[float], b: list[float]) -> tuple[float, float, int]:
    """Mean paired difference, its standard error, and how many pairs favour ``a``."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return statistics.mean(d), se, sum(x > 0 for x in d)


def table(
    task: str,
    runs: dict,
    vals: dict,
    teachers: dict,
    seeds: dict,
    times: dict,
    wall: float | None,
    plan: Plan = PLANS["full"],
    pretrain_steps: int | None = None,
    steps: int | None = None,
    finished_only: bool = False,
) -> str:
    """The Markdown section: ``runs[(variant, backbone, seed)]`` are eval results, ``vals`` the same keys' last
    validation accuracy (%), ``teachers[backbone]`` the pretrained CoT teacher's results."""
    from omegaconf import OmegaConf

    cfg = study.compose_cfg(
        "study_kava_dense", [f"study_task={task}", "model.name_or_path=x", "paths.output_dir=/x", *plan.extra]
    )
    OmegaConf.resolve(cfg)
    syn, tiny = cfg.data.synthetic, cfg.model.tiny
    pretrain_steps = pretrain_steps or TASK_STUDIES[task]["pretrain_steps"]
    steps = steps or TASK_STUDIES[task]["steps"]
    mode = next(name for name, p in PLANS.items() if p == plan)
    acc = {  # (variant, backbone) -> {seed: test accuracy} of the runs made
        (v, b): {s: 100 * runs[(v, b, s)][decoder(v)]["accuracy"] for s in seeds[v] if (v, b, s) in runs}
        for v in seeds
        for b in teachers
    }
    where = f"this {os.cpu_count()}-core machine"
    if any("accelerator=gpu" in e for e in plan.extra):
        import torch

        where = f"one {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'GPU'}, runs in parallel"
    lines = [
        f"Regenerate: `OMP_NUM_THREADS=2 python bench/study.py --task {task}"
        + ("" if mode == "full" else f" --plan {mode}")
        + f"`. Training and evaluation summed over the runs: {sum(times.values()) / 60:.0f} min on {where}"
        + (f"; wall time of the invocation that wrote this table: {wall / 60:.0f} min" if wall else "")
        + " (runs found finished are reused, not rerun)."
        + (" This table: the runs finished so far, tabulated with `--finished-only`." if finished_only else ""),
        "",
        f"Task `{syn.task}` (`data.synthetic.task={syn.task} size={syn.size} num_steps={syn.num_steps}`): "
        f"{syn.num_train} training, {syn.num_val} validation and {syn.num_test} test problems, disjoint by question. "
        f"Backbones: {len(teachers)} tiny random-init GQA Llamas ({tiny.num_layers} layers, hidden {tiny.hidden_size}, "
        f"{tiny.num_heads}/{tiny.num_kv_heads} heads), each CoT-pretrained for {pretrain_steps} steps "
        f"(`experiment=study_pretrain study_task={task} seed=b model.init_seed=b`, b = "
        f"{', '.join(map(str, teachers))}). Latent runs: LoRA r={cfg.model.lora.r}, M={cfg.latent.num_tokens}, "
        f"T={cfg.latent.num_iterations}, `latent.align_positions={cfg.latent.align_positions}`, {steps} steps of "
        f"batch {cfg.data.micro_batch_size}, lr {cfg.optim.lr}; the KAVA variants with "
        f"`{' '.join(TASK_STUDIES[task]['kava'])}`; every variant of seed s has `seed=s latent.init_seed=s` "
        "(paired initialisations). A dash: not run on that backbone.",
        "",
        "| variant | "
        + " | ".join(f"backbone {b}: test % per seed | mean ± std" for b in teachers)
        + " | val % (mean) "
        "| latents replaced by the placeholder % |",
        "|---|" + "---|---|" * len(teachers) + "---|---|",
        "| CoT teacher (pretrained backbone) | "
        + " | ".join(f"{100 * teachers[b]['accuracy']:.1f} | " for b in teachers)
        + " | | |",
    ]
    for v in seeds:
        val = [x for k, x in vals.items() if k[0] == v and x is not None]
        ablated = [
            100 * r["student_placeholder"]["accuracy"]
            for k, r in runs.items()
            if k[0] == v and "student_placeholder" in r and v not in ("nocot", "pause")
        ]
        cells = " | ".join(
            " / ".join(f"{x:.1f}" for x in acc[(v, b)].values()) + f" | {study.mean_std(list(acc[(v, b)].values()))}"
            if acc[(v, b)]
            else "– | –"
            for b in teachers
        )
        lines.append(
            f"| {study.VARIANTS[v][1]} | {cells} | {statistics.mean(val) if val else float('nan'):.1f} | "
            f"{study.mean_std(ablated) if ablated else ''} |"
        )
    lines += [
        "",
        "Paired differences (test points, KAVA dense minus the variant, same backbone and seed; mean ± standard "
        "error over the pairs; wins = pairs where KAVA dense is ahead):",
        "",
        "| KAVA dense minus | " + " | ".join(f"backbone {b}" for b in teachers) + " | both backbones | wins |",
        "|---|" + "---|" * len(teachers) + "---|---|",
    ]
    for v in (c for c in CONTROLS if c in seeds and "kava_dense" in seeds):
        cells, both_a, both_b = [], [], []
        for b in teachers:
            common = [s for s in acc[(v, b)] if s in acc[("kava_dense", b)]]  # pairs: same backbone and seed
            a, c = [acc[("kava_dense", b)][s] for s in common], [acc[(v, b)][s] for s in common]
            if not common:
                cells.append("–")
                continue
            mean, se, _ = paired(a, c)
            cells.append(f"{mean:+.1f} ± {se:.1f}")
            both_a, both_b = both_a + a, both_b + c
        if not both_a:
            lines.append(f"| {study.VARIANTS[v][1]} | {' | '.join(cells)} | – | – |")
            continue
        mean, se, wins = paired(both_a, both_b)
        lines.append(f"| {study.VARIANTS[v][1]} | {' | '.join(cells)} | **{mean:+.1f} ± {se:.1f}** | "
                     f"{wins}/{len(both_a)} |")  # fmt: skip
    teach = [100 * runs[k]["teacher"]["accuracy"] for k in runs if k[0] != "nocot"]
    lines += ["", f"CoT teacher after each latent run (LoRA, shared mode): {study.mean_std(teach)} %.", ""]
    return "\n".join(lines) + "\n"


def main(
    task: str,
    mode: str,
    jobs: int,
    work: Path | None,
    out: Path | None,
    only: list[str] | None,
    finished_only: bool = False,
) -> None:
    """Pretrain the backbones, train the plan's runs (those found finished are reused) and write the table;
    ``finished_only``: tabulate the latent runs that have test results now and train none of them."""
    if task not in TASK_STUDIES:
        sys.exit(f"bench/study.py: --task {task}: the tasks with a study are {', '.join(TASK_STUDIES)}")
    started = time.perf_counter()
    plan = PLANS[mode]
    pre_steps = plan.pretrain_steps or TASK_STUDIES[task]["pretrain_steps"]
    steps = plan.steps or TASK_STUDIES[task]["steps"]
    jobs = plan.jobs or jobs
    backbones = plan.backbones
    seeds = {v: list(range(n)) for v, n in plan.seeds.items() if not only or v in only}
    work = work or study.ROOT / "outputs" / f"study_{task}{plan.suffix}"
    out = out or (work if mode != "full" and mode != "gpu" else study.ROOT / "docs")
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    pre = study.run_jobs(
        [(pretrain_backbone, task, b, work, pre_steps, plan.extra) for b in backbones], min(jobs, len(backbones))
    )
    teachers = {b: t for b, (_, t) in zip(backbones, pre, strict=True)}
    for b, t in teachers.items():
        print(f"[study] backbone {b}: CoT teacher {100 * t['accuracy']:.1f}%", flush=True)
    order = sorted(
        [(v, b, s) for v in seeds for b in plan.only_on.get(v, backbones) for s in seeds[v]],
        key=lambda k: (k[0] not in MAIN, k[2], k[1], k[0] in ("nocot", "pause")),  # the main comparison first
    )
    if finished_only:  # the runs with test results; a seed missing from a variant drops out of its pairs
        order = [(v, b, s) for v, b, s in order
                 if (work / f"backbone{b}" / f"{v}_seed{s}" / "eval" / "results.json").exists()]  # fmt: skip
        seeds = {v: sorted({s for w, _, s in order if w == v}) for v in seeds}
        seeds = {v: ss for v, ss in seeds.items() if ss}
    calls = [(latent_run, task, v, s, pre[backbones.index(b)][0], work / f"backbone{b}", steps, plan.extra)
             for v, b, s in order]  # fmt: skip
    runs = dict(zip(order, study.run_jobs(calls, jobs), strict=True))
    folders = [work / f"backbone{b}" / "pretrain" for b in backbones]
    folders += [work / f"backbone{b}" / f"{v}_seed{s}" for v, b, s in order]
    times = {f: json.loads((f / "elapsed.json").read_text())["seconds"] for f in folders}
    vals = {(v, b, s): last_val_acc(work / f"backbone{b}" / f"{v}_seed{s}") for v, b, s in order}
    wall = None if finished_only else time.perf_counter() - started
    text = table(task, runs, vals, teachers, seeds, times, wall, plan, pre_steps, steps, finished_only)
    if "kava_dense" in seeds and mode in ("full", "gpu"):
        best = max(
            ((b, s) for b in backbones for s in seeds["kava_dense"] if ("kava_dense", b, s) in runs),
            key=lambda k: runs[("kava_dense", *k)]["student"]["accuracy"],
        )
        figs = study.best_kava_figures(work / f"backbone{best[0]}", [best[1]], [runs[("kava_dense", *best)]], out,
                                       prefix=f"study_{task}{plan.suffix}_")  # fmt: skip
        text += f"\nBackbone {best[0]}. " + "\n".join(figs) + "\n"
    path = out / f"study_{task}{plan.suffix}.md"
    study.write_section(path, text, title=f"Depth-bound task study: {task}{plan.suffix.replace('_', ' ')}")
    (out / f"study_{task}{plan.suffix}.json").write_text(
        json.dumps({"teachers": teachers, "runs": {f"{v}|{b}|{s}": r for (v, b, s), r in runs.items()}}, indent=1)
    )
    print(text)
