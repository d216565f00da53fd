"""Train a network: `python train.py model=ghostnet data=cifar10 [key=value ...]` (see README.md)."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

from lnrepro.tasks import run_task, train  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run_task(train, cfg)
    # Hydra sweepers (optuna) maximise what the job returns.
    value = metrics.get(cfg.get("optimized_metric")) if cfg.get("optimized_metric") else None
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
