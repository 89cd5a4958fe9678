"""What to tell the user about the network beyond its portal state, in one place.

    network_notes(status) -> tuple[Note, ...]

`portal status` prints every note; the agent's sign-in notification carries the ones that
change what the user must do to sign in (`Note.sign_in`). Each note is one or two sentences:
what the system is doing, why it matters here, and what to do about it.

Pure: a StatusReport in (portal/core/report.py), plain text out.
"""

from __future__ import annotations

from dataclasses import dataclass

from portal.core.model import Connectivity
from portal.core.report import StatusReport


@dataclass(frozen=True, slots=True)
class Note:
    topic: str  # "session", "recheck", "asking", ... (the CLI's line label)
    text: str
    sign_in: bool = False  # belongs in the sign-in notification too


def network_notes(status: StatusReport) -> tuple[Note, ...]:
    notes: list[Note] = []
    here = status.network or "this network"
    if status.expired and status.state is Connectivity.CAPTIVE:
        notes.append(
            Note(
                "session",
                f"ended: {here} took the network back (its time or data ran out, or it signed "
                "you out); sign in again",
            )
        )
    if status.expiry_watch:
        notes.append(
            Note(
                "re-check",
                "under a minute apart while online: the network was captive, and its portal "
                "may take it back",
            )
        )
    if status.quiet:
        notes.append(
            Note(
                "asking",
                f"not on {here}: you chose \"don't ask again\" ('portal ask-again' undoes it)",
            )
        )
    return tuple(notes)
