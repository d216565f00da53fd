"""The console scripts: `lnrepro-train`, `lnrepro-eval`, `lnrepro-profile` and `lnrepro-report`.

Each is a thin entry point over a tested task function. The Hydra ones compose the configs shipped in the package
(`pkg://lnrepro.conf`), so they work from any directory after `pip install lnrepro`; outputs go under the current
directory's `logs/` (see `conf/paths/default.yaml`). The checkout's `train.py`, `eval.py`, `profile_net.py` and
`report.py` call these same functions.
"""

from __future__ import annotations

import argparse
import sys

import hydra
from omegaconf import DictConfig

CONFIG_PATH = "pkg://lnrepro.conf"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def train(cfg: DictConfig) -> float | None:
    """`lnrepro-train model=ghostnet data=cifar10 [key=value ...]`; returns the optimised metric for sweepers."""
    from lnrepro.tasks import run_task
    from lnrepro.tasks import train as train_task

    metrics = run_task(train_task, cfg)
    # Hydra sweepers (optuna) maximise what the job returns.
    value = metrics.get(cfg.get("optimized_metric")) if cfg.get("optimized_metric") else None
    return float(value) if value is not None else None


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def evaluate(cfg: DictConfig) -> None:
    """`lnrepro-eval ckpt_path=PATH [data.key=value ...]`."""
    from lnrepro.tasks import evaluate as evaluate_task
    from lnrepro.tasks import run_task

    run_task(evaluate_task, cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="profile")
def profile(cfg: DictConfig) -> None:
    """`lnrepro-profile model=ghostnet data=cifar10 [profile.key=value ...]`."""
    from lnrepro.tasks import run_task
    from lnrepro.tasks.profile import profile as profile_task

    run_task(profile_task, cfg)


REPORT_DOC = """Report over finished runs: `lnrepro-report DIR... [--reference NAME|CSV] [--out DIR] [--wandb]`.

Gathers every metrics.json under the DIRs (runs and multiruns, recursively) into report.md and report.csv (the
ghost_vs_dwpw table's column order) and PNG plots (top-1 vs FLOPs, top-1 vs latency with the Pareto front, FLOPs vs
latency), and prints the Markdown. Example:

    lnrepro-train -m experiment=ghost_vs_dwpw_cifar10
    lnrepro-report logs/train/multiruns/<time> --reference ghost_vs_dwpw
"""


def report_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    from lnrepro.reporting.reference import SHIPPED_TABLES

    parser = argparse.ArgumentParser(
        prog="lnrepro-report",
        description=REPORT_DOC.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Published tables shipped with lnrepro (--reference NAME): "
        + "; ".join(f"{name}: {about}" for name, (_, about) in SHIPPED_TABLES.items())
        + ". Any CSV path works too.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run or multirun directories (or metrics.json files)")
    parser.add_argument(
        "--reference",
        metavar="NAME|CSV",
        help=f"published table to show side by side: {', '.join(SHIPPED_TABLES)} or a CSV path",
    )
    parser.add_argument(
        "--out", metavar="DIR", help="where report.md/.csv/.png go (default: DIR if one, else ./report)"
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1.0,
        metavar="POINTS",
        help="a mean top-1 within max(its 95%% interval, POINTS) of the published one is `reproduced` (default 1.0)",
    )
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log the table and plots to W&B as one run (job_type=report; WANDB_MODE=offline "
        "works); a multirun directory's report joins that multirun's W&B group",
    )
    parser.add_argument("--wandb-project", default="lnrepro", metavar="NAME")
    parser.add_argument(
        "--predict",
        metavar="RUNTIME[,RUNTIME]",
        help="add the latency predicted in these runtimes for runs never timed in them, by the predictor fitted "
        "on this machine (lnrepro-profile experiment=latency_predictor)",
    )
    parser.add_argument(
        "--predict-threads",
        type=int,
        default=1,
        metavar="N",
        help="the thread count of the predictor to use (default 1, the one experiment=latency_predictor fits)",
    )
    return parser.parse_args(argv)


def report(argv: list[str] | None = None) -> int:
    """`lnrepro-report DIR... [--reference NAME|CSV]`: report.md, report.csv and plots; exit status 2 on bad input."""
    args = report_arguments(argv)
    from lnrepro.errors import UserInputError, print_error
    from lnrepro.reporting import ReportError, log_to_wandb, make_report
    from lnrepro.schema import multirun_group

    try:
        result = make_report(
            args.dirs,
            reference=args.reference,
            out_dir=args.out,
            plots=not args.no_plots,
            tolerance=args.tolerance,
            predict=[name.strip() for name in args.predict.split(",") if name.strip()] if args.predict else None,
            predict_threads=args.predict_threads,
        )
    except (ReportError, UserInputError) as error:
        return print_error(error)
    print(result.markdown, end="")
    written = [result.files["markdown"], result.files["csv"]] + [p for p in result.files.values() if p.suffix == ".png"]
    print(f"\nwritten: {', '.join(str(p) for p in written)}", file=sys.stderr)
    if args.wandb:
        group = multirun_group(args.dirs[0]) if len(args.dirs) == 1 else None
        print(f"W&B run: {log_to_wandb(result, project=args.wandb_project, group=group)}", file=sys.stderr)
    return 0


def report_main() -> None:
    sys.exit(report())
