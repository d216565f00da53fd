"""Reports over finished runs: tables in the ghost_vs_dwpw table's column order, published figures side by side, plots.

`lnrepro-report DIR... [--reference NAME|CSV] [--out DIR]`; from Python, `make_report([...])`.
"""

from lnrepro.reporting.collect import ReportError, Run, find_metrics_files, load_runs
from lnrepro.reporting.plots import pareto_front
from lnrepro.reporting.reference import Reference, load_reference, parse_amount
from lnrepro.reporting.render import COLUMNS, Report, format_value, log_to_wandb, make_report

__all__ = [
    "COLUMNS",
    "Reference",
    "Report",
    "ReportError",
    "Run",
    "find_metrics_files",
    "format_value",
    "load_reference",
    "load_runs",
    "log_to_wandb",
    "make_report",
    "pareto_front",
    "parse_amount",
]
