"""Train KaVa: ``python train.py [model=...] [data=...] [loss=...] [key=value ...]``."""

import hydra
from omegaconf import DictConfig

import kava.config  # noqa: F401  (registers the config resolvers)
from kava.preflight import check_train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    check_train(cfg)  # before the heavy imports: an unreachable data set or model stops within seconds
    from kava.training import train

    metrics = train(cfg)
    return metrics.get("val/acc", metrics.get("val/loss"))


if __name__ == "__main__":
    main()
