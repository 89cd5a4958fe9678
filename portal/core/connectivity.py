"""What portal believes about the current network, one word across all layers (the session,
the status the daemon publishes, the CLI, the agent). Also importable from portal.core.model.

Pure: an enum.
"""

from __future__ import annotations

import enum


class Connectivity(enum.StrEnum):
    """What portal believes about the current network (one name across all layers)."""

    UNKNOWN = "unknown"
    PROBING = "probing"
    CAPTIVE = "captive"
    ONLINE = "online"
    LIMITED = "limited"
    OFFLINE = "offline"
