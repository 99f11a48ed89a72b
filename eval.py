"""Evaluate a checkpoint: ``python eval.py ckpt_path=... [eval_sets=[...]] [eval.teacher=true]``."""

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import kava.config  # noqa: F401  (registers the config resolvers)
from kava import cli
from kava.errors import UserError
from kava.hub_ids import EVAL_HUB_IDS
from kava.preflight import PreflightError, check_checkpoint, check_eval_sets

log = logging.getLogger("eval")


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.paths.output_dir).resolve()
    try:
        evaluate(cfg, out)
    except UserError as err:  # one line naming the setting, row or file; a folder with nothing written is removed
        cli.fail("eval.py", err, out)


def evaluate(cfg: DictConfig, out: Path) -> None:
    paths = OmegaConf.to_container(cfg.eval.paths, resolve=True)
    if cfg.eval_sets:  # before the heavy imports: an unknown or unreachable set stops within seconds
        check_eval_sets(list(cfg.eval_sets), paths, EVAL_HUB_IDS)
    check_checkpoint(cfg.ckpt_path)
    from kava.checkpoint import is_export
    from kava.console import quiet_known_noise, results_table, show
    from kava.evaluation import run_evaluation
    from kava.export import add_results

    quiet_known_noise()
    log.info("output folder: %s", out)
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    e = cfg.eval
    results = run_evaluation(
        ckpt_path=cfg.ckpt_path,
        out_dir=out,
        eval_sets=list(cfg.eval_sets) if cfg.eval_sets else None,
        teacher=e.teacher,
        student=e.student,
        batch_size=e.batch_size,
        max_new_tokens=e.max_new_tokens,
        max_cot_tokens=e.max_cot_tokens,
        limit=e.limit,
        paths=paths,
        device=e.device,
        loggers=loggers,
        ablate_latents=e.ablate_latents,
        inspect_latents=e.inspect_latents,
        inspect_top_k=e.inspect_top_k,
    )
    show(results_table(results, f"eval: {cfg.ckpt_path}"))
    if is_export(cfg.ckpt_path):  # an exported folder keeps its (full-set) results in its model card
        card = Path(cfg.ckpt_path) / "README.md"
        if e.limit is not None:
            log.info("model card not updated: eval.limit=%s evaluates a subset", e.limit)
        elif card.is_symlink() or not os.access(cfg.ckpt_path, os.W_OK):
            log.info("model card not updated: %s is read-only (or a Hub cache link)", cfg.ckpt_path)
        else:
            log.info("model card updated: %s", add_results(cfg.ckpt_path, results))
    log.info("results.json, results.md and predictions.jsonl in %s", out)


def prepare(argv: list[str]) -> None:
    """The checks that need no heavy import, before Hydra makes an output folder: the checkpoint named."""
    ckpt = cli.arg_value(argv, "ckpt_path")
    try:
        if ckpt is None:
            raise PreflightError("ckpt_path is not set: python eval.py ckpt_path=<run>/checkpoints/last.ckpt")
        check_checkpoint(ckpt)
    except UserError as err:
        cli.fail("eval.py", err)


if __name__ == "__main__":
    prepare(sys.argv[1:])
    main()
