"""How the pages write numbers, durations, shares, sizes and times: one function each,
so a value reads the same on every page."""

from __future__ import annotations

import time

MISSING = "–"


def format_params(n: int | float | None) -> str:
    """2257984 -> '2.3 M'; small counts stay exact so a tiny head still reads right."""
    if n is None:
        return MISSING
    if n >= 1e9:
        return f"{n / 1e9:.1f} B"
    if n >= 1e6:
        return f"{n / 1e6:.1f} M"
    if n >= 1e4:
        return f"{n / 1e3:.0f} k"
    return f"{int(n):,}"


def format_duration(seconds: float | None) -> str:
    """242.4 -> '4 min 02 s'."""
    if seconds is None:
        return MISSING
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_percent(value: float | None) -> str:
    """0.968 -> '96.8%'."""
    return MISSING if value is None else f"{value:.1%}"


def format_file_size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} B"


def format_time(timestamp: float | None) -> str:
    """An absolute time: labels that say "3 min ago" go stale in a widget that stays put."""
    return time.strftime("%b %d %H:%M", time.localtime(timestamp)) if timestamp else ""


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
