"""Choices a user made about a network: "don't ask again" (to sign in there).

    Choices                               the networks portal no longer asks about
    Choices.dont_ask(id, name, now=)      remember one (by network identity)
    Choices.ask_again(query)              forget those whose id or name is `query`
    format_choices(c) / parse_choices(t)  the state file's text (choices.json)

Remembered by network identity: NetworkManager's connection UUID, or `link:<ifname>:<gateway>`
without it (core/model.py Network.id). The name (SSID or connection name) is kept for people:
`portal status` lists it and `portal ask-again NAME` takes it. Detection goes on as before on
such a network (its status says captive, its names are pinned); only the prompt is left out:
the agent shows no sign-in notification there, the tray still shows the state.

Pure: plain values in and out; times are wall-clock seconds passed in. `parse_choices` refuses
anything but what `format_choices` writes (ValueError), so the store can move a bad file aside.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

STATE_VERSION = 1
MAX_CHOICES = 1000  # a user's networks; more is not a real file
MAX_TEXT_CHARS = 1024 * 1024
MAX_FIELD_CHARS = 512


@dataclass(frozen=True, slots=True)
class NetworkChoice:
    """One network the user asked portal not to ask about again."""

    network_id: str
    name: str = ""
    since: float = 0.0  # wall-clock seconds

    @property
    def label(self) -> str:
        return self.name or self.network_id


@dataclass(frozen=True, slots=True)
class Choices:
    """The user's per-network choices: the networks where portal no longer asks to sign in."""

    quiet: tuple[NetworkChoice, ...] = ()

    def is_quiet(self, network_id: str | None) -> bool:
        return bool(network_id) and any(c.network_id == network_id for c in self.quiet)

    def dont_ask(self, network_id: str, name: str, *, now: float) -> Choices:
        """Remember the network (again: the name and time are refreshed). ValueError when
        there is no id or the table is full."""
        if not network_id:
            raise ValueError("no network to remember: not connected")
        if len(network_id) > MAX_FIELD_CHARS or len(name) > MAX_FIELD_CHARS:
            raise ValueError("network id or name too long")
        kept = tuple(c for c in self.quiet if c.network_id != network_id)
        if len(kept) >= MAX_CHOICES:
            raise ValueError(f"at most {MAX_CHOICES} networks can be remembered")
        return Choices((*kept, NetworkChoice(network_id, name, now)))

    def ask_again(self, query: str) -> tuple[Choices, tuple[NetworkChoice, ...]]:
        """Forget the networks whose id is `query`, or whose name is (case-insensitively);
        "*" forgets all. Returns the new choices and what was forgotten."""
        wanted = query.strip()
        if wanted == "*":
            return Choices(), self.quiet

        def matches(c: NetworkChoice) -> bool:
            return c.network_id == wanted or (
                bool(c.name) and c.name.casefold() == wanted.casefold()
            )

        gone = tuple(c for c in self.quiet if matches(c))
        return Choices(tuple(c for c in self.quiet if not matches(c))), gone

    def labels(self) -> tuple[str, ...]:
        return tuple(c.label for c in self.quiet)


def format_choices(choices: Choices) -> str:
    rows = [{"id": c.network_id, "name": c.name, "since": c.since} for c in choices.quiet]
    return json.dumps({"version": STATE_VERSION, "dont_ask": rows}, indent=1) + "\n"


def parse_choices(text: str) -> Choices:
    """The choices a `format_choices` text holds; ValueError for anything else."""
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError("too large")
    try:
        data: Any = json.loads(text)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        raise ValueError("unknown format or version")
    rows = data.get("dont_ask")
    if not isinstance(rows, list) or len(rows) > MAX_CHOICES:
        raise ValueError("no list of networks, or too long a one")
    out: list[NetworkChoice] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"entry {i} is not an object")
        network_id, name, since = row.get("id"), row.get("name", ""), row.get("since", 0.0)
        if not isinstance(network_id, str) or not network_id or len(network_id) > MAX_FIELD_CHARS:
            raise ValueError(f"entry {i} has no valid id")
        if not isinstance(name, str) or len(name) > MAX_FIELD_CHARS:
            raise ValueError(f"entry {i} has an invalid name")
        if isinstance(since, bool) or not isinstance(since, int | float):
            raise ValueError(f"entry {i} has an invalid time")
        if any(c.network_id == network_id for c in out):
            raise ValueError(f"entry {i} repeats {network_id}")
        out.append(NetworkChoice(network_id, name, float(since)))
    return Choices(tuple(out))
