"""What the daemon remembers across restarts besides the overrides: the network it was last on.

A restart must never change an answer. Overrides are scoped to a network, and the network
watcher needs a moment (about 0.1 s, more while NetworkManager starts) to say which network
this is; queries that queued in the socket meanwhile would get the upstream's answer for a name
the user overrode. So the last network's identity is kept in the state directory and assumed at
start (core/session.py `restore`) until the watcher reports.

Pure: text in, a Network out, and back. The file is one JSON object, `{"network": {...}}` or
`{"network": null}`; anything else is refused with ValueError (the store then starts with no
assumption rather than a wrong one).
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any

from portal.core.model import Network

MAX_TEXT_CHARS = 64 * 1024
_TEXT_FIELDS = {f.name for f in fields(Network) if f.type in ("str", str)}
_TUPLE_FIELDS = {f.name for f in fields(Network)} - _TEXT_FIELDS


def format_network(network: Network | None) -> str:
    return json.dumps({"network": asdict(network) if network else None}, indent=1) + "\n"


def parse_network(text: str) -> Network | None:
    """The network a `format_network` text names. Raise ValueError for anything else."""
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError("too large")
    data: Any = json.loads(text)
    if not isinstance(data, dict) or "network" not in data:
        raise ValueError("no network key")
    raw = data["network"]
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("network is not an object")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _TEXT_FIELDS and isinstance(value, str):
            values[key] = value
        elif key in _TUPLE_FIELDS and isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise ValueError(f"{key} holds something other than text")
            values[key] = tuple(value)
        elif key in _TEXT_FIELDS or key in _TUPLE_FIELDS:
            raise ValueError(f"{key} has the wrong type")
        # keys of a newer version are ignored
    if not values.get("id"):
        raise ValueError("the network has no id")
    return Network(**values)
