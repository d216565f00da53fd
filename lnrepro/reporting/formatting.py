"""How a report writes a figure in Markdown: one place for the report's tables (render.py) and its per-layer
sections (layers.py), so that a figure reads the same in both."""

from __future__ import annotations

MISSING = "-"


def significant(value: float) -> str:
    """Three significant digits, never in exponent notation."""
    text = f"{value:.3g}"
    if "e" in text:  # 1.23e+03 -> 1230
        text = f"{value:.0f}"
    return text


def figure(value: float | None) -> str:
    """`significant`, or MISSING for a figure that is not there."""
    return MISSING if value is None else significant(value)


def amount(value: float | None) -> str:
    """Counts as 14.7M, 877K, 2.32G."""
    if value is None:
        return MISSING
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return significant(value / scale) + suffix
    return significant(value)


def format_value(column: str, value: float | None) -> str:
    """How the Markdown shows a figure: 14.7M, 877K, 2.32G, 10.6, 4.8 GiB, 83.9."""
    if value is None:
        return MISSING
    if column in ("params", "flops"):
        return amount(value)
    if column == "memory_mib":
        return f"{significant(value / 1024)} GiB" if value >= 1024 else f"{significant(value)} MiB"
    if column == "top1":
        return f"{value:.1f}"
    return significant(value)
