"""Times and durations as the CLI writes them: ``when`` and ``stamp`` for JSON (epoch
seconds and the UTC ISO string), ``local_time``, ``until``, ``ago`` and ``countdown``
for people reading a terminal on this machine, and ``duration`` for elapsed time. Pure
functions of their arguments (``local_time`` uses this machine's time zone); the CLI's
reports and views format time through them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def when(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def stamp(ts: float | None) -> dict[str, Any] | None:
    """A time for JSON: epoch seconds and the ISO string (UTC)."""
    if ts is None:
        return None
    return {"epoch": ts, "iso": when(ts)}


def local_time(ts: float) -> str:
    """A time as people read it on this machine: ``Mon 09:00``."""
    return datetime.fromtimestamp(ts).astimezone().strftime("%a %H:%M")


def countdown(seconds: float) -> str:
    """How long until something: ``45s``, ``13m``, ``2h13m``, ``3d04h``."""
    if seconds <= 0:
        return "now"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def until(ts: float, now: float) -> str:
    """``Mon 09:00 (in 2h13m)``, or ``Mon 09:00 (due)`` once it has passed."""
    left = ts - now
    return f"{local_time(ts)} ({'in ' + countdown(left) if left > 0 else 'due'})"


def ago(ts: float, now: float) -> str:
    """``Mon 09:00 (3m ago)``: when something happened, and how long ago."""
    return f"{local_time(ts)} ({countdown(now - ts)} ago)"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
