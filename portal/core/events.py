"""What happened (past tense). Edges emit these; the core decides what to do about them.

Every event is a frozen dataclass of plain data. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from portal.core.model import Connectivity, Network, Upstream
from portal.core.paths import NmVpn, PathFacts


@dataclass(frozen=True, slots=True)
class NetworkChanged:
    """The primary network changed, or something about it did (DNS servers, API URI, ...).

    `network` is None when the laptop has no network at all.
    """

    network: Network | None


@dataclass(frozen=True, slots=True)
class ConnectivityReported:
    """NetworkManager (or another source) reported its own connectivity verdict.

    `checked` says whether the reporter ran a check of its own: NetworkManager without a
    connectivity check (no `[connectivity] uri`, Debian's default; `interval=0`; turned off for
    privacy) reports FULL on any connected network, captive or not, so that word means nothing.
    """

    connectivity: Connectivity
    source: str = "nm"
    checked: bool = True


@dataclass(frozen=True, slots=True)
class UpstreamsChanged:
    """The resolver configuration the stub should forward to (ordered, best first).

    `source` names where they came from, for `portal status` ("NetworkManager",
    "systemd-networkd", "resolv.conf (/etc/resolv.conf)").
    """

    upstreams: tuple[Upstream, ...]
    source: str = "NetworkManager"


@dataclass(frozen=True, slots=True)
class Resumed:
    """The machine woke from suspend: re-probe."""


@dataclass(frozen=True, slots=True)
class CheckRequested:
    """Someone asked for a probe now (`portal check`)."""


@dataclass(frozen=True, slots=True)
class DnsTroubleSeen:
    """The DNS stub saw a burst of failing or hijacked answers from the user's resolvers
    (core/expiry.py AnswerWatch): on a network that was captive, the portal may be back.

    `reason` is "failing" (SERVFAIL, REFUSED, no answer) or "hijacked" (the portal's address).
    """

    reason: str


@dataclass(frozen=True, slots=True)
class PathsObserved:
    """What the kernel answered about where the network's traffic goes (core/paths.py)."""

    facts: PathFacts


@dataclass(frozen=True, slots=True)
class VpnsReported:
    """The VPN and WireGuard connections NetworkManager has active (none: empty)."""

    vpns: tuple[NmVpn, ...]
