"""What to tell the user about the network beyond its portal state, in one place.

    network_notes(status) -> tuple[Note, ...]

`portal status` prints every note; the agent's sign-in notification carries the ones that
change what the user must do to sign in (`Note.sign_in`). Each note is one or two sentences:
what the system is doing, why it matters here, and what to do about it.

Pure: a StatusReport in (portal/core/report.py), plain text out.
"""

from __future__ import annotations

from dataclasses import dataclass

from portal.core.connectivity import Connectivity
from portal.core.owners import owner_of
from portal.core.report import StatusReport


@dataclass(frozen=True, slots=True)
class Note:
    """One line about the network for `portal status` (and the notification when `sign_in`)."""

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
    notes += vpn_notes(status)
    notes += clash_notes(status)
    if status.random_mac:
        fix = (
            f"; to keep one MAC on this network only: {status.stable_mac_command}"
            if status.stable_mac_command
            else ""
        )
        notes.append(
            Note(
                "MAC",
                f"this computer shows {here} a new random MAC address at each connection, so "
                f"its portal sees a new device and asks again every time{fix}",
                sign_in=True,
            )
        )
    return tuple(notes)


def vpn_notes(status: StatusReport) -> list[Note]:
    """What a VPN in the way does to the sign-in, and what to do (core/paths.py decides)."""
    if not status.vpn:
        return []
    vpn = f"{status.vpn_name} ({status.vpn})" if status.vpn_name else status.vpn
    own = status.interface or "the network's interface"
    if not status.vpn_routing:
        text = (
            f"your DNS goes through {vpn}: portal sends the sign-in page's names to the "
            "network's own DNS instead; if the page still does not load, pause the VPN to sign "
            "in"
        )
    elif status.vpn_bypass:
        carries = "your traffic and DNS" if status.vpn_dns else "your traffic"
        text = (
            f"{vpn} carries {carries}; portal's checks and its sign-in window ('portal open') "
            f"go around it through {own}. A VPN that blocks everything outside its tunnel (a "
            "kill switch) must be paused to sign in, then reconnected"
        )
    else:
        text = (
            f"{vpn} also catches traffic bound to {own}: the sign-in page cannot load around "
            "it. Disconnect or pause the VPN, sign in, then reconnect it"
        )
    return [Note("vpn", text, sign_in=True)]


ROLE_WORDS = {"gateway": "gateway", "dns": "DNS server", "portal": "sign-in server"}


def clash_notes(status: StatusReport) -> list[Note]:
    """One note per local interface that venue addresses are routed into ("ROLE ADDRESS
    INTERFACE" in `status.clashes`), naming who made it and the usual fix."""
    by_interface: dict[str, list[str]] = {}
    for clash in status.clashes:
        words = clash.split()
        if len(words) != 3:
            continue
        role, address, interface = words
        what = f"part of its subnet ({address})" if role == "subnet" else address
        if role in ROLE_WORDS:
            what = f"its {ROLE_WORDS[role]} {address}"
        by_interface.setdefault(interface, []).append(what)
    notes = []
    here = status.network or "this network"
    own = status.interface or "its interface"
    for interface, addresses in by_interface.items():
        owner, fix = owner_of(interface)
        local = f"{interface} ({owner})" if owner else interface
        text = (
            f"{here} uses addresses this computer routes into {local}, not {own}: "
            f"{', '.join(addresses)}. Programs cannot reach them (portal's own checks and sign-in "
            f"window can). Fix: {fix or f'move {interface} to another address range'}"
        )
        notes.append(Note("clash", text, sign_in=True))
    return notes
