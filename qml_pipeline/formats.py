"""How a value reads in a table cell or on a card: the one formatter of markdown tables, the HTML
report and the cards (prices, ages, signed percents)."""

from __future__ import annotations

import math
from datetime import date, datetime

# columns the report shows as percents of a fraction (0.25 -> 25.0%)
SHARE_COLUMNS = ("win_rate", "completeness", "share", "share_not_better")


def fmt_usd(price: float | None) -> str | None:
    """'$95.2K', '$1.23M', '$3,412', '$0.4521'."""
    if price is None:
        return None
    a = abs(price)
    if a >= 1e9:
        return f"${price / 1e9:.2f}B"
    if a >= 1e6:
        return f"${price / 1e6:.2f}M"
    if a >= 1e4:
        return f"${price / 1e3:.1f}K"
    if a >= 100:
        return f"${price:,.0f}"
    if a >= 1:
        return f"${price:.2f}"
    return f"${price:.4f}"


def fmt_age(minutes: float | None) -> str | None:
    """A duration in minutes: '12 min', '3.5 h', '2.1 d'."""
    if minutes is None:
        return None
    if minutes >= 2 * 1440:
        return f"{minutes / 1440:.1f} d"
    if minutes >= 120:
        return f"{minutes / 60:.1f} h"
    return f"{minutes:.0f} min"


def fmt_pct(value: float | None, decimals: int = 1) -> str | None:
    """A percent value with its sign: '+3.2%', '-0.5%'."""
    return None if value is None else f"{value:+.{decimals}f}%"


def _float_in(column: str, value: float) -> str:
    """A float of a named report column: its unit decides (minutes, shares, p-values), else its size."""
    name = column.lower()
    if name.endswith("_minutes"):
        return fmt_age(value)
    if name in SHARE_COLUMNS or name.endswith("_share"):
        return f"{value * 100:.1f}%"
    if name.startswith(("p_", "mw_p", "ks_p")) or name.endswith("_p"):
        return f"{value:.3g}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def cell_text(value: object, column: str | None = None, float_digits: int = 4) -> str | None:
    """A cell's text; None for a missing value (None, NaN) so each renderer shows its own blank.

    With `column` (the HTML report) floats follow the column's unit and ints group from 10,000;
    without it (markdown) floats keep `float_digits` significant digits and ints always group."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return _float_in(column, value) if column is not None else f"{value:.{float_digits}g}"
    if isinstance(value, int):
        return f"{value:,}" if column is None or abs(value) >= 10_000 else str(value)
    return str(value)
