"""Tasks: the functions behind train.py and eval.py (tested directly, without Hydra's command line)."""

from lnrepro.tasks.common import run_task
from lnrepro.tasks.evaluate import evaluate
from lnrepro.tasks.train import train

__all__ = ["evaluate", "run_task", "train"]
