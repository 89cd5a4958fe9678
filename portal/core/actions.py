"""What to do (imperative): the detection state machine's orders to the daemon.

core/session.py returns these; portal/daemon.py carries each out with an edge and must catch
and log its own failure ("…, ignoring"), so one failed action never stops DNS or detection.

    StartProbe(network, delay_s, probe_id)   after delay_s, probe `network` and emit
                                             ProbeFinished(network.id, probe_id, ...); it
                                             supersedes any probe not yet finished
    CancelProbe()                            drop the pending/running probe, if any
    PinPortalHosts(network_id, hosts)        resolve `hosts` through the venue's DNS and pin
                                             them: overrides scoped to `network_id`, source
                                             "auto" (a pin, in every layer's words)
    RouteToVenue(names, venue_dns)           forward `names` (and their subdomains) to the
                                             venue's DNS; replaces the previous routed set
    StopRouting()                            forward everything to the usual upstreams again
    UnpinPortalHosts(network_id)             drop the pins made on that network
    PublishStatus(status)                    emit StateChanged / answer GetStatus with it
    AskNMToRecheck()                         NetworkManager CheckConnectivity(), so desktops
                                             see the change now rather than at NM's next check
    WatchDns(portal_addresses)               arm the stub's alarm (core/expiry.py AnswerWatch)
                                             afresh: emit DnsTroubleSeen once at a burst of
                                             failing or hijacked answers
    StopWatchingDns()                        disarm it

Plain frozen dataclasses; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from portal.core.model import Network, PortalStatus


@dataclass(frozen=True, slots=True)
class StartProbe:
    """Probe `network` after `delay_s` seconds; report with ProbeFinished(probe_id=probe_id)."""

    network: Network
    delay_s: float = 0.0
    probe_id: int = 0


@dataclass(frozen=True, slots=True)
class CancelProbe:
    """Cancel the pending or running probe: its result would be ignored anyway."""


@dataclass(frozen=True, slots=True)
class PinPortalHosts:
    """Resolve the portal's names through the venue DNS and pin them on that network."""

    network_id: str
    hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RouteToVenue:
    """Send DNS questions for `names` (and below them) to the venue's own servers."""

    names: tuple[str, ...]
    venue_dns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StopRouting:
    """No more venue routing: every question goes to the usual upstreams."""


@dataclass(frozen=True, slots=True)
class UnpinPortalHosts:
    """The portal cleared or the network went: drop the pins made on it."""

    network_id: str


@dataclass(frozen=True, slots=True)
class PublishStatus:
    """The published portal status changed."""

    status: PortalStatus


@dataclass(frozen=True, slots=True)
class AskNMToRecheck:
    """Ask NetworkManager to run its own connectivity check now."""


@dataclass(frozen=True, slots=True)
class WatchDns:
    """Arm the stub's DNS alarm anew (new counters): answers pointing at `portal_addresses`, or
    failing, in a burst, make it emit DnsTroubleSeen once."""

    portal_addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StopWatchingDns:
    """Disarm the stub's DNS alarm."""


Action = (
    StartProbe
    | CancelProbe
    | PinPortalHosts
    | RouteToVenue
    | StopRouting
    | UnpinPortalHosts
    | PublishStatus
    | AskNMToRecheck
    | WatchDns
    | StopWatchingDns
)
