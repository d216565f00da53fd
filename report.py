"""Report over finished runs: `python report.py DIR... [--reference CSV] [--out DIR] [--wandb]`.

Gathers every metrics.json under the DIRs (runs and multiruns, recursively) into report.md and report.csv (the seed
table's column order) and PNG plots (top-1 vs FLOPs, top-1 vs latency with the Pareto front, FLOPs vs latency), and
prints the Markdown. Example:

    python train.py -m experiment=ghost_vs_dwpw_cifar10
    python report.py logs/train/multiruns/<time> --reference tests/data/cifar10_seed_table.csv
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="report.py", description=__doc__.split("\n\n")[0],
        epilog="Reference tables: tests/data/cifar10_seed_table.csv (rows <model>_<conv> + stem), "
               "tests/data/imagenet_published.csv (family, width, groups, resolution), "
               "tests/data/cifar10_published.csv (model, width).")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run or multirun directories (or metrics.json files)")
    parser.add_argument("--reference", metavar="CSV", help="published table to show side by side")
    parser.add_argument("--out", metavar="DIR", help="where report.md/.csv/.png go (default: DIR if one, else ./report)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--wandb", action="store_true",
                        help="also log the table and plots to W&B as one run (job_type=report; WANDB_MODE=offline "
                             "works); a multirun directory's report joins that multirun's W&B group")
    parser.add_argument("--wandb-project", default="lnrepro", metavar="NAME")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lnrepro.reporting import ReportError, log_to_wandb, make_report
    from lnrepro.reporting.report import wandb_group_of

    try:
        report = make_report(args.dirs, reference=args.reference, out_dir=args.out, plots=not args.no_plots)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.markdown, end="")
    written = [report.files["markdown"], report.files["csv"]] + [p for p in report.files.values() if p.suffix == ".png"]
    print(f"\nwritten: {', '.join(str(p) for p in written)}", file=sys.stderr)
    if args.wandb:
        group = wandb_group_of(args.dirs[0]) if len(args.dirs) == 1 else None
        print(f"W&B run: {log_to_wandb(report, project=args.wandb_project, group=group)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
