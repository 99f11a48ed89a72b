"""Export the trained parts of a checkpoint as a Hub-ready folder: PEFT adapters, the student, a model card.

    python -m kava.export CHECKPOINT OUT_DIR [--results eval/results.json ...] [--push-to-hub USER/REPO [--private]]

The folder loads with ``kava.checkpoint.load_module`` (and ``eval.py ckpt_path=OUT_DIR``); its ``README.md`` is a
model card naming the base model, the method, M/T, the loss settings (the Table 6 row), the training data and, when
``eval.py`` has run on the checkpoint or the folder, its results (``eval_results.json``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kava.compat import method_name
from kava.preflight import offline_mode_set

RESULTS_FILE = "eval_results.json"  # {set: {decoder: summary}} merged from every eval run on this model
CARD_FILE = "README.md"
NO_LATENTS = ("cot", "nocot")  # methods whose export has only the adapters
LOSS_KEYS = ("alpha1", "alpha2", "kv_loss", "kv_steps", "kv_slots", "layerwise_std", "rkv_lambda", "teacher_ce_weight")


def _training_data(data: Mapping[str, Any]) -> tuple[str, list[str]]:
    """A sentence on the training data, and Hub data set ids for the card's metadata."""
    if data.get("path"):
        return f"local file `{Path(str(data['path'])).name}`", []
    if data.get("source") == "synthetic":
        syn = data.get("synthetic") or {}
        task = syn.get("task") or "arith"
        if task != "arith":
            return (
                f"kava's synthetic {task} task ({syn.get('num_train')} problems, {syn.get('num_steps')} steps, "
                f"size {syn.get('size')}, seed {syn.get('seed')})",
                [],
            )
        return (
            f"kava's synthetic arithmetic chains ({syn.get('num_train')} problems, {syn.get('num_steps')} steps, "
            f"operands {syn.get('operand_min')}-{syn.get('operand_max')}, seed {syn.get('seed')})",
            [],
        )
    hub = data.get("hub_id") or data.get("name")
    return f"[{hub}](https://huggingface.co/datasets/{hub})", [str(hub)]


def model_card(hp: Mapping[str, Any], results: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None) -> str:
    """The model card (YAML metadata + Markdown) of an exported model, from its hyperparameters and eval results."""
    model, latent, loss = hp.get("model") or {}, hp.get("latent") or {}, hp.get("loss") or {}
    method = method_name(hp)
    base = model.get("name_or_path")
    data_text, datasets = _training_data(hp.get("data") or {})
    lora = model.get("lora") or {}
    meta = ["---", "library_name: peft", "tags: [kava, latent-reasoning, continuous-chain-of-thought, lora]"]
    if base and not Path(str(base)).expanduser().exists():  # a Hub id; a local folder is not valid metadata
        meta.append(f"base_model: {base}")
    if datasets:
        meta.append(f"datasets: [{', '.join(datasets)}]")
    meta.append("---")
    base_text = f"`{base}`" if base else f"kava's tiny random-init Llama (seed {model['init_seed']})"
    lines = [
        *meta,
        "",
        f"# {method} {'' if method in NO_LATENTS else 'latent-reasoning '}adapters for {base or 'a tiny Llama'}",
        "",
        (
            "LoRA adapters and latent-token parameters trained with kava "
            f"(method `{method}`): the model reasons in {latent.get('num_tokens')} continuous latent tokens, "
            f"refined by {latent.get('num_iterations')} parallel (Jacobi) passes, before it writes the answer."
            if method not in NO_LATENTS
            else f"LoRA adapters trained with kava (method `{method}`: no latent tokens; the model writes its "
            f"{'' if (hp.get('data') or {}).get('drop_cot') else 'chain of thought and '}answer as text)."
        ),
        "",
        "| setting | value |",
        "|---|---|",
        f"| base model | {base_text} |",
        f"| method | `{method}` |",
        *(
            []
            if method in NO_LATENTS
            else [
                f"| latent tokens M / Jacobi passes T | {latent.get('num_tokens')} / {latent.get('num_iterations')} |"
            ]
        ),
        f"| LoRA r / alpha / dropout | {lora.get('r')} / {lora.get('alpha')} / {lora.get('dropout')} |",
        f"| loss (Table 6 row) | {', '.join(f'{k}={loss[k]}' for k in LOSS_KEYS if k in loss)} |",
        f"| training data | {data_text} |",
        "",
        "## Evaluation",
        "",
    ]
    if results:
        lines += ["| set | decoder | accuracy % | forward passes | n |", "|---|---|---|---|---|"]
        for name, per in results.items():
            for dec, r in per.items():
                acc, passes = 100 * float(r["accuracy"]), float(r["mean_forward_passes"])
                lines.append(f"| {name} | {dec} | {acc:.1f} | {passes:.1f} | {int(r['n'])} |")
    else:
        lines.append("Not evaluated yet: `python eval.py ckpt_path=<this folder>` adds the results here.")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from kava.checkpoint import load_module",
        "",
        'module = load_module("<this folder>")  # base model from its config, then these adapters and latents',
        "```",
        "",
    ]
    return "\n".join(lines)


def merge_results(folder: str | Path, results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict:
    """Add eval results to the folder's ``eval_results.json`` (a later run of a set/decoder replaces the earlier)."""
    path = Path(folder) / RESULTS_FILE
    merged: dict = json.loads(path.read_text()) if path.exists() else {}
    for name, per in results.items():
        merged.setdefault(name, {}).update({dec: dict(r) for dec, r in per.items()})
    path.write_text(json.dumps(merged, indent=1))
    return merged


def write_card(folder: str | Path, hp: Mapping[str, Any]) -> Path:
    """(Re)write the folder's model card from ``hp`` and its ``eval_results.json``."""
    folder = Path(folder)
    res_path = folder / RESULTS_FILE
    results = json.loads(res_path.read_text()) if res_path.exists() else None
    (folder / CARD_FILE).write_text(model_card(hp, results))
    return folder / CARD_FILE


def add_results(folder: str | Path, results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Path:
    """Record eval results in an exported folder and rewrite its card (``eval.py ckpt_path=<folder>`` calls this)."""
    from kava.checkpoint import CONFIG_FILE

    merge_results(folder, results)
    hp = json.loads((Path(folder) / CONFIG_FILE).read_text())["hyper_parameters"]
    return write_card(folder, hp)


def offline_refusal(repo_id: str) -> str | None:
    """Why an upload to ``repo_id`` cannot start (offline mode set), or None."""
    if offline_mode_set():
        return f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set; unset it (and log in) to upload"
    return None


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, api: Any = None) -> str:
    """Create ``repo_id`` (if needed) and upload the folder; returns the commit URL. Fails fast when offline."""
    refusal = offline_refusal(repo_id)
    if refusal:
        raise RuntimeError(refusal)
    from huggingface_hub import HfApi

    api = api or HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload kava export")
    return str(getattr(info, "commit_url", info))


def export(
    checkpoint: str | Path,
    out_dir: str | Path,
    results_files: Sequence[str | Path] = (),
    push: str | None = None,
    private: bool = False,
) -> Path:
    """Export ``checkpoint`` to ``out_dir`` with its model card; optionally push the folder to the Hub."""
    from kava.checkpoint import export_pretrained, load_module

    module = load_module(checkpoint)
    out = export_pretrained(module, out_dir)
    for f in results_files:
        merge_results(out, json.loads(Path(f).read_text())["results"])
    write_card(out, dict(module.hparams))
    if push:
        print(f"pushed: {push_to_hub(out, push, private)}")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Export a kava checkpoint as a Hub-ready PEFT folder with a model card")
    ap.add_argument("checkpoint")
    ap.add_argument("out_dir")
    ap.add_argument("--results", nargs="*", default=[], help="results.json files written by eval.py, for the card")
    ap.add_argument("--push-to-hub", metavar="REPO", default=None, help="upload the folder to this Hub repo")
    ap.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    args = ap.parse_args(argv)
    if args.push_to_hub and (refusal := offline_refusal(args.push_to_hub)):  # before the checkpoint is loaded
        ap.error(refusal)
    for f in args.results:
        if not Path(f).is_file():
            ap.error(f"--results {f}: no such file (eval.py writes results.json in its output folder)")
    path = export(args.checkpoint, args.out_dir, args.results, args.push_to_hub, args.private)
    print(f"exported to {path}")


if __name__ == "__main__":
    main()
