"""Evaluate a checkpoint on the test split: `python eval.py ckpt_path=PATH [data.key=value ...]` (= `lnrepro-eval`)."""

from lnrepro.cli import evaluate

if __name__ == "__main__":
    evaluate()
