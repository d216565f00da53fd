"""Report over finished runs: `python report.py DIR... [--reference NAME|CSV]` (the same as `lnrepro-report`)."""

from lnrepro.cli import report_main

if __name__ == "__main__":
    report_main()
