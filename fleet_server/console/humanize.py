"""Jinja filters that turn raw numbers into what people read: sizes in KiB/MiB, relative
times with the absolute time on hover, milliseconds with sensible precision. Pure."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup


def size(value: int | float | None) -> str:
    """1536 -> '1.5 KiB'; binary units, like the tools that unpack bundles."""
    if value is None:
        return "-"
    n = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def ago(seconds: float) -> str:
    """A duration in the past as people say it: 'just now', '5 min ago', '3 h ago'."""
    s = max(0.0, seconds)
    if s < 10:
        return "just now"
    for limit, div, unit in ((60, 1, "s"), (3600, 60, "min"), (86400, 3600, "h")):
        if s < limit:
            return f"{int(s // div)} {unit} ago"
    return f"{int(s // 86400)} d ago"


def when(value: float | None, now: float | None = None) -> Markup:
    """A ``<time>`` element: relative text, the absolute UTC time in ``title``/``datetime``."""
    if not value:
        return Markup('<span class="never">never</span>')
    stamp = datetime.fromtimestamp(float(value), UTC)
    absolute = stamp.strftime("%Y-%m-%d %H:%M:%S UTC")
    rel = ago((time.time() if now is None else now) - float(value))
    return Markup('<time datetime="{}" title="{}">{}</time>').format(  # format escapes
        stamp.isoformat(), absolute, rel)


def ms(value: Any) -> str:
    """Milliseconds: '-' for no value, 3 significant digits otherwise."""
    if not isinstance(value, int | float):
        return "-"
    return f"{float(value):.3g}"


def short_sha(value: str | None) -> Markup:
    """The first 12 hex digits, the full hash on hover."""
    if not value:
        return Markup("-")
    return Markup('<code title="{}">{}</code>').format(value, value[:12])


def count(value: int | None) -> str:
    """10000 -> '10,000'."""
    return "-" if value is None else f"{int(value):,}"


FILTERS = {"size": size, "when": when, "ms": ms, "short_sha": short_sha, "count": count}
