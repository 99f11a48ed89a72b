"""Evaluate a checkpoint: ``python eval.py ckpt_path=... [eval_sets=[...]] [eval.teacher=true]``."""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

import kava.config  # noqa: F401  (registers the config resolvers)
from kava.hub_ids import EVAL_HUB_IDS
from kava.preflight import PreflightError, check_checkpoint, check_eval_sets


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    paths = OmegaConf.to_container(cfg.eval.paths, resolve=True)
    try:  # before the heavy imports: a bad checkpoint or an unknown/unreachable set stops within seconds
        if cfg.eval_sets:
            check_eval_sets(list(cfg.eval_sets), paths, EVAL_HUB_IDS)
        check_checkpoint(cfg.ckpt_path)
    except PreflightError as err:
        sys.exit(f"eval.py: {err}")
    from kava.evaluation import run_evaluation

    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values()]
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    e = cfg.eval
    run_evaluation(
        ckpt_path=cfg.ckpt_path,
        out_dir=cfg.paths.output_dir,
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


if __name__ == "__main__":
    main()
