"""CPU-scale study: does KaVa learn, and does dense per-step KV supervision help? One command:

    OMP_NUM_THREADS=2 python bench/study.py [--quick] [--jobs 2] [--seeds 0 1 2] [--out docs] [--work outputs/study]

1. pretrain the tiny backbone on synthetic 3-step arithmetic with the CoT objective (full fine-tuning);
2. from it, with LoRA and equal steps, train the variants below (``VARIANTS``): KAVA dense (kv_steps=all, with
   progressive slots and with every slot at every step), KAVA as in the paper (kv_steps=last), PCCoT (Jacobi
   latents + CODI loss), CODI (sequential latents, CODI loss),
   the no-distillation student (alpha1 = alpha2 = 0), a pause-token control and a no-CoT baseline (``method=``);
   3 seeds for the KAVA variants, no-CoT, pause and no-distillation, 1 for PCCoT and CODI (``--seeds``
   overrides); ``--quick``: one seed of no-CoT and KAVA dense, 500 steps, in ``outputs/study_quick`` (a smoke run
   of the pipeline: its numbers are undertrained and ``docs/study.md`` is left alone);
3. evaluate each on the held-out synthetic test set (latent decoding; CoT decoding for the teacher and the
   no-CoT model) and write ``docs/study.md`` (mean +- std over seeds) and ``docs/study_kv_steps.png``.
Pretraining uses ``OMP_NUM_THREADS`` threads; the runs then go ``--jobs`` at a time (default 2), each with
cores/jobs threads (two single-thread processes use two cores better than one process with two threads at this
model size); settings are in ``conf/experiment/study_*.yaml``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

import kava.config  # noqa: E402,F401
from kava.config import CONF_DIR  # noqa: E402

VARIANTS = {  # name -> (experiment config, label, default number of seeds)
    "kava_dense": ("study_kava_dense", "KAVA dense (kv_steps=all, kv_slots=progressive, no CODI term)", 3),
    "kava_dense_all": ("study_kava_dense_all", "KAVA dense, every slot at every step (kv_slots=all)", 3),
    "kava_last": ("study_kava_last", "KAVA last step (kv_steps=last, no CODI term)", 3),
    "pccot": ("study_pccot", "PCCoT (method=pccot: Jacobi latents + CODI loss)", 1),
    "codi": ("study_codi", "CODI (method=codi: sequential latents + CODI loss)", 1),
    "nodistill": ("study_nodistill", "no distillation (Jacobi latents, alpha1=alpha2=0)", 3),
    "pause": ("study_pause", "pause tokens (method=pause: latents fixed at the placeholder)", 3),
    "nocot": ("study_nocot", "no-CoT (method=nocot: direct answer)", 3),
}
QUICK = ("nocot", "kava_dense")  # --quick: one seed each, QUICK_OVERRIDES, in outputs/study_quick
QUICK_OVERRIDES = ["trainer.max_steps=500"]  # a smoke run of the whole study: undertrained, not the table's numbers


def compose_cfg(experiment: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"experiment={experiment}", *overrides])


def metrics_csv(run_dir: Path) -> list[dict[str, str]]:
    (path,) = run_dir.glob("csv/version_*/metrics.csv")
    with open(path) as f:
        return list(csv.DictReader(f))


def pretrain(work: Path, extra: list[str]) -> tuple[Path, dict]:
    from kava.evaluation import run_evaluation
    from kava.training import train

    out = work / "pretrain"
    backbone = work / "backbone"
    if not (backbone / "config.json").exists():
        cfg = compose_cfg("study_pretrain", [f"paths.output_dir={out}", *extra])
        start = time.perf_counter()
        train(cfg)
        elapsed = time.perf_counter() - start
        (out / "elapsed.json").write_text(json.dumps({"seconds": elapsed}))
        print(f"[study] pretraining took {elapsed:.0f} s", flush=True)
        from kava.checkpoint import load_module

        module = load_module(out / "checkpoints" / "last.ckpt")
        module.backbone.save_pretrained(backbone)
        module.tokenizer.save_pretrained(backbone)
    done = out / "eval" / "results.json"
    if not done.exists():
        run_evaluation(str(out / "checkpoints" / "last.ckpt"), out / "eval", teacher=True, batch_size=128)
    return backbone, json.loads(done.read_text())["results"]["synthetic"]["teacher"]


def trained(run: Path) -> bool:
    """The run's training finished: its final metrics and last checkpoint are written and no signal stopped it."""
    return (
        all((run / f).exists() for f in ("metrics.json", "checkpoints/last.ckpt"))
        and not (run / "interrupted.json").exists()
    )


def run_variant(name: str, seed: int, backbone: Path, work: Path, extra: list[str]) -> dict:
    from kava.evaluation import run_evaluation
    from kava.training import train

    experiment = VARIANTS[name][0]
    out = work / f"{name}_seed{seed}"
    done = out / "eval" / "results.json"
    ckpt = out / "checkpoints" / "last.ckpt"
    if not done.exists() and trained(out):  # its evaluation did not finish: evaluate, do not train again
        start = time.perf_counter()
        run_evaluation(str(ckpt), out / "eval", teacher=True, batch_size=128)
        fit = json.loads((out / "metrics.json").read_text()).get("time/fit_s", 0.0)
        (out / "elapsed.json").write_text(json.dumps({"seconds": fit + time.perf_counter() - start}))
    if not done.exists():
        cfg = compose_cfg(
            experiment,
            [f"paths.output_dir={out}", f"model.name_or_path={backbone}", f"seed={seed}", *extra],
        )
        start = time.perf_counter()
        train(cfg)
        run_evaluation(str(ckpt), out / "eval", teacher=True, batch_size=128)
        elapsed = time.perf_counter() - start
        (out / "elapsed.json").write_text(json.dumps({"seconds": elapsed}))
        print(f"[study] {name} seed {seed}: {elapsed:.0f} s", flush=True)
    return json.loads(done.read_text())["results"]["synthetic"]


def _worker_init(threads: int) -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def run_jobs(calls: list[tuple], parallel: int) -> list:
    """``fn(*args)`` for each ``(fn, *args)``, ``parallel`` at a time in worker processes that share the cores
    equally; results in the order of ``calls``."""
    if parallel <= 1:
        return [fn(*args) for fn, *args in calls]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or parallel)
    threads = max(1, cores // parallel)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(parallel, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as ex:
        futures = [ex.submit(fn, *args) for fn, *args in calls]
        return [f.result() for f in futures]


def run_all(jobs: list[tuple[str, int]], backbone: Path, work: Path, extra: list[str], parallel: int) -> dict:
    """Every (variant, seed) run, ``parallel`` at a time in worker processes that share the cores equally."""
    order = sorted(jobs, key=lambda j: list(VARIANTS).index(j[0]))  # the slowest variants first
    results = run_jobs([(run_variant, v, s, backbone, work, extra) for v, s in order], parallel)
    return dict(zip(order, results, strict=True))


def unseen_rows(overrides: list[str]) -> set[int]:
    """Test rows whose numeric chain (the steps) never occurs in the training split."""
    from kava.data.datamodule import GSM8KDataModule

    cfg = compose_cfg("study_latent", ["model.name_or_path=x", "paths.output_dir=/tmp/x", *overrides])
    dm = GSM8KDataModule(**{k: v for k, v in dict(cfg.data).items() if k != "_target_"})
    tables = dm.load()
    seen = {tuple(s) for s in tables["train"]["steps"]}
    return {r for r, s in zip(tables["test"]["row"], tables["test"]["steps"], strict=True) if tuple(s) not in seen}


def accuracy_on(run_dir: Path, decoder: str, rows: set[int]) -> float:
    preds = [json.loads(line) for line in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    hits = [p["correct"] for p in preds if p["decoder"] == decoder and p["row"] in rows]
    return 100 * sum(hits) / max(len(hits), 1)


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.1f}"


def plot_kv_steps(work: Path, seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("kava_dense", "kava_dense_all", "kava_last") if list(work.glob(f"{n}_seed*/csv"))]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, name in zip(axes, names, strict=True):
        for seed in [s for s in seeds if list((work / f"{name}_seed{s}").glob("csv/version_*/metrics.csv"))]:
            rows = [r for r in metrics_csv(work / f"{name}_seed{seed}") if r.get("train/kv_step_1")]
            if not rows:  # a run too short to have logged a training step
                continue
            steps = [int(r["step"]) for r in rows]
            t_max = max(int(k.rsplit("_", 1)[1]) for k in rows[0] if k.startswith("train/kv_step_"))
            for t in range(1, t_max + 1):
                ax.plot(
                    steps,
                    [float(r[f"train/kv_step_{t}"]) for r in rows],
                    color=f"C{t - 1}",
                    alpha=0.8,
                    lw=1,
                    label=f"kv_step_{t}" if seed == seeds[0] else None,
                )
        ax.set_title(VARIANTS[name][1], fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("KV loss per Jacobi step (train)")
    axes[0].legend()
    fig.suptitle(f"Per-step KV distillation loss, {len(seeds)} seeds (one line per seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def best_kava_figures(
    work: Path, seeds: list[int], results: list[dict], out: Path, prefix: str = "study_"
) -> list[str]:
    """The KV-cosine heatmap and the latent read-out of the best KAVA dense run (by test accuracy): figures in
    ``out`` and the Markdown lines that show them."""
    import shutil

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kava.evaluation import run_evaluation

    best = max(range(len(seeds)), key=lambda i: results[i]["student"]["accuracy"])
    run = work / f"kava_dense_seed{seeds[best]}"
    lines = [f"Figures of the best KAVA dense run (seed {seeds[best]}):", ""]
    cos_figs = sorted(run.glob("figures/kv_cosine_step*.png"), key=lambda f: int(f.stem.rsplit("step", 1)[1]))
    if cos_figs:
        shutil.copy(cos_figs[-1], out / f"{prefix}kv_cosine.png")
        lines += [
            f"![KV cosine by layer, latent slot and Jacobi step]({prefix}kv_cosine.png)",
            "",
        ]
    readout = run / "readout"
    if not (readout / "latents.jsonl").exists():
        run_evaluation(str(run / "checkpoints" / "last.ckpt"), readout, limit=100, batch_size=100,
                       ablate_latents=False, inspect_latents=True)  # fmt: skip
    rows = [json.loads(line) for line in (readout / "latents.jsonl").read_text().splitlines()]
    n_t, n_m = len(rows[0]["steps"]), len(rows[0]["steps"][0])
    share = [[statistics.mean(r["steps"][t][m]["top1_in_cot"] for r in rows) for m in range(n_m)] for t in range(n_t)]
    fig, ax = plt.subplots(figsize=(2.2 + 0.45 * n_m, 1.2 + 0.45 * n_t))
    im = ax.imshow(share, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xlabel("latent slot")
    ax.set_ylabel("Jacobi step")
    ax.set_yticks(range(n_t), [str(t + 1) for t in range(n_t)])
    ax.set_xticks(range(n_m))
    fig.colorbar(im, ax=ax, label="top-1 token in CoT")
    ax.set_title(f"latent read-out, {len(rows)} test questions", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"{prefix}latent_readout.png", dpi=110)
    plt.close(fig)
    ex = rows[0]
    tops = " | ".join(repr(slot["top"][0][0]) for slot in ex["steps"][-1])
    lines += [
        f"![latent read-out]({prefix}latent_readout.png)",
        "",
        f"Latent read-out (`eval.py eval.inspect_latents=true`, {len(rows)} test questions): the share of latents "
        "whose top-1 token through the LM head occurs in the question's CoT is "
        + " / ".join(f"{100 * statistics.mean(row):.0f}%" for row in share)
        + f" at Jacobi steps 1..{n_t} (an upper bound on what they hold: any CoT token counts). Example, "
        f'"{ex["question"]}" (CoT `{" ".join(ex["cot"])}`), top-1 token of each slot at the last step: {tops}.',
        "",
    ]
    return lines


BEGIN, END = "<!-- study table: written by bench/study.py -->", "<!-- end of study table -->"


def write_section(path: Path, table: str, title: str = "CPU-scale study") -> None:
    """Replace the generated part of ``path`` (between the markers), keeping the hand-written experiment log."""
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        text = old[: old.index(BEGIN)] + f"{BEGIN}\n{table}{END}" + old[old.index(END) + len(END) :]
    else:
        text = f"# {title}\n\n{BEGIN}\n{table}{END}\n" + old
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds for every variant (default: per variant)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"one seed of {', '.join(QUICK)} with {' '.join(QUICK_OVERRIDES)}; --work and --out default to "
        "outputs/study_quick (docs/study.md is left alone)",
    )
    ap.add_argument("--out", default=None, help="where study.md and the figures go (default: docs)")
    ap.add_argument("--work", default=None, help="run folders, reused when finished (default: outputs/study)")
    ap.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS))
    ap.add_argument("--finished-only", action="store_true", help="tabulate the finished runs in --work, train none")
    ap.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs at a time, each with cores/jobs threads"
    )
    ap.add_argument("--task", default=None, help="a depth-bound task's study (bench/task_study.py): perm, modsum")
    ap.add_argument("--plan", default=None, choices=["full", "quick", "gpu", "gpu_tiny"],
                    help="with --task: the full study (default), --quick, the GPU study, or its pipeline at a tiny "
                    "size on the CPU")  # fmt: skip
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. trainer.max_steps=50)")
    args = ap.parse_args()
    if args.task:
        import task_study

        work, out = (Path(p) if p else None for p in (args.work, args.out))
        plan = args.plan or ("quick" if args.quick else "full")
        return task_study.main(args.task, plan, args.jobs, work, out, args.variants, args.finished_only)
    started = time.perf_counter()
    quick_dir = ROOT / "outputs" / "study_quick"
    work = Path(args.work or (quick_dir if args.quick else ROOT / "outputs" / "study"))
    out = Path(args.out or (quick_dir if args.quick else ROOT / "docs"))
    runs_overrides = [*QUICK_OVERRIDES, *args.overrides] if args.quick else args.overrides  # pretraining: as always
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    backbone, teacher = pretrain(work, args.overrides)
    print(f"[study] pretrained backbone CoT accuracy {100 * teacher['accuracy']:.1f}%", flush=True)
    variants = args.variants or (list(QUICK) if args.quick else list(VARIANTS))
    seeds = {v: args.seeds or ([0] if args.quick else list(range(VARIANTS[v][2]))) for v in variants}
    if args.finished_only:  # a table of what --work holds now; nothing is trained
        seeds = {
            v: [s for s in ss if (work / f"{v}_seed{s}" / "eval" / "results.json").exists()] for v, ss in seeds.items()
        }
        variants = [v for v in variants if seeds[v]]
        seeds = {v: seeds[v] for v in variants}
    jobs = [(v, s) for v in variants for s in seeds[v]]
    done = run_all(jobs, backbone, work, runs_overrides, args.jobs)
    results = {v: [done[(v, s)] for s in seeds[v]] for v in variants}
    runs = [work / "pretrain"] + [work / f"{v}_seed{s}" for v in variants for s in seeds[v]]
    times = [json.loads((r / "elapsed.json").read_text())["seconds"] for r in runs if (r / "elapsed.json").exists()]
    total = f"{sum(times) / 60:.0f} min" if len(times) == len(runs) else "unknown (some runs predate timing)"

    cfg = compose_cfg("study_latent", [f"model.name_or_path={backbone}", "paths.output_dir=/tmp/x", *runs_overrides])
    pre = compose_cfg("study_pretrain", ["paths.output_dir=/tmp/x", *args.overrides])
    pccot = compose_cfg("study_pccot", ["model.name_or_path=x", "paths.output_dir=/tmp/x", *runs_overrides])
    codi_alpha = pccot.loss.alpha1
    unseen = unseen_rows(args.overrides)
    lines = [
        f"Regenerate: `OMP_NUM_THREADS=2 python bench/study.py{' --quick' if args.quick else ''}`. Training and "
        f"evaluation summed over the runs: {total} on this {os.cpu_count()}-core machine, "
        + ("as they were run (tabulated with --finished-only)" if args.finished_only else f"{args.jobs} at a time")
        + f" (pretraining {times[0] if times else 0:.0f} s, then {len(runs) - 1} runs)"
        + (
            "."
            if args.finished_only
            else f"; wall time of the invocation that wrote this table: {(time.perf_counter() - started) / 60:.0f} min "
            "(runs found finished in `--work` are reused, not rerun)."
        ),
        "",
        f"Test set: {pre.data.synthetic.num_test} held-out problems; {len(unseen)} of them have a numeric chain "
        "(the sequence of equations) that never occurs in training, the rest differ from a training problem only "
        "in wording. Both accuracies are reported.",
        "",
        "| method | test accuracy % (mean ± std) | on unseen chains % | latents replaced by the placeholder % | "
        "forward passes / question | seeds |",
        "|---|---|---|---|---|---|",
        f"| CoT teacher (pretrained backbone) | {100 * teacher['accuracy']:.1f} | "
        f"{accuracy_on(work / 'pretrain', 'teacher', unseen):.1f} | | {teacher['mean_forward_passes']:.1f} | 1 |",
    ]
    for v, per_seed in results.items():
        dec = "teacher" if v == "nocot" else "student"
        acc = [100 * r[dec]["accuracy"] for r in per_seed]
        acc_unseen = [accuracy_on(work / f"{v}_seed{s}", dec, unseen) for s in seeds[v]]
        ablated = [100 * r["student_placeholder"]["accuracy"] for r in per_seed if "student_placeholder" in r]
        passes = statistics.mean(r[dec]["mean_forward_passes"] for r in per_seed)
        lines.append(
            f"| {VARIANTS[v][1]} | {mean_std(acc)} | {mean_std(acc_unseen)} | "
            f"{mean_std(ablated) if ablated and v not in ('nocot', 'pause') else ''} | {passes:.1f} | {len(per_seed)} |"
        )
    teach = [100 * r["teacher"]["accuracy"] for v in results if v != "nocot" for r in results[v]]
    lines += [
        "",
        f"CoT teacher after each latent run (LoRA, shared mode): {mean_std(teach)} % over all latent runs.",
        "",
        "Settings: tiny random-init GQA Llama "
        f"({pre.model.tiny.num_layers} layers, hidden {pre.model.tiny.hidden_size}, "
        f"{pre.model.tiny.num_heads}/{pre.model.tiny.num_kv_heads} heads, BPE vocab {pre.model.tiny.vocab_size} with "
        f"single-digit tokens); synthetic problems with {pre.data.synthetic.num_steps} steps "
        f"(`a*b`, then `+`/`-`; operands {pre.data.synthetic.operand_min}-{pre.data.synthetic.operand_max}), "
        f"{pre.data.synthetic.num_train} training and {pre.data.synthetic.num_test} held-out test problems. "
        f"Pretraining: CoT objective, full fine-tuning, {pre.trainer.max_steps} steps of batch "
        f"{pre.data.micro_batch_size}, lr {pre.optim.lr}. Latent runs: LoRA r={cfg.model.lora.r} "
        f"alpha={cfg.model.lora.alpha}, M={cfg.latent.num_tokens}, T={cfg.latent.num_iterations}, "
        f"alpha1={cfg.loss.alpha1} (PCCoT and CODI: {codi_alpha}), alpha2={cfg.loss.alpha2}, {cfg.loss.kv_loss}, "
        "layerwise_std="
        f"{cfg.loss.layerwise_std}, lambda={cfg.loss.rkv_lambda}, {cfg.trainer.max_steps} steps of batch "
        f"{cfg.data.micro_batch_size}, lr {cfg.optim.lr}; greedy decoding.",
        "",
        "![per-step KV losses](study_kv_steps.png)",
        "",
    ]
    if "kava_dense" in results:
        lines += best_kava_figures(work, seeds["kava_dense"], results["kava_dense"], out)
    write_section(out / "study.md", "\n".join(lines) + "\n")
    (out / "study.json").write_text(json.dumps({"teacher": teacher, "results": results}, indent=1))
    plot_kv_steps(work, sorted({s for v in seeds.values() for s in v}), out / "study_kv_steps.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
