"""Durations for people: 45s, 12m, 3h05m, 2d04h. Pure and tiny, so the CLI's read-only
commands can format expiry times without loading the override machinery."""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    """Compact human duration: 45s, 12m, 3h05m, 2d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"
