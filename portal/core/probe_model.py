"""Plain data of portal detection: what to probe, what came back, what it means.

    ProbeSpec      a probe URL and the answer that means "online"
    ProbeResponse  what one HTTP probe got (or why it got nothing: `error`)
    CaptiveApi     an RFC 8908 captive-portal API answer, parsed
    ProbeVerdict   what detection concludes about the network
    ProbeFinished  the event the daemon emits when a probe round is over

Frozen dataclasses only; no behaviour beyond small lookups. The rules that turn responses into
a verdict live in core/detect.py, the per-network state machine in core/session.py, the I/O in
edges/http_probe.py. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from portal.core.model import Connectivity, Network


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """A connectivity-check URL and the answer that means "the internet is reachable".

    Following NetworkManager: with `expected_body` set, a 200 whose body starts with it is the
    online answer; with it empty, 204 (or a 200 with an empty body) is.
    """

    url: str
    expected_status: int = 204
    expected_body: str = ""


@dataclass(frozen=True, slots=True)
class ProbeResponse:
    """What one probe got. `status == 0` means no HTTP answer; `error` then says why.

    `addresses` is what the probe host resolved to through the network's own DNS, kept so that
    detection can recognise a DNS-hijacking portal even when the HTTP request fails.
    """

    url: str
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()  # names in lower case, in arrival order
    body: str = ""
    addresses: tuple[str, ...] = ()
    error: str = ""  # "", "timeout", "dns-timeout", "dns-nxdomain", "connect-error", ...

    def header(self, name: str) -> str:
        """The first value of header `name` (case-insensitive), or ""."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return ""


@dataclass(frozen=True, slots=True)
class CaptiveApi:
    """An RFC 8908 API answer. `error` non-empty means the answer was unusable as a whole.

    Times and sizes are -1 when the API did not say. Optional fields that were present but
    invalid (an http:// user-portal-url, a negative count) are dropped and named in `dropped`.
    """

    captive: bool = False
    user_portal_url: str = ""
    venue_info_url: str = ""
    seconds_remaining: int = -1
    bytes_remaining: int = -1
    can_extend_session: bool = False
    error: str = ""
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProbeVerdict:
    """What detection concludes from a probe round.

    `portal_hosts` are the names the sign-in flow needs resolved through the venue's DNS (the
    sign-in host and the API host); IP literals never appear in it. `reason` is one short line
    for the log.
    """

    connectivity: Connectivity
    portal_url: str = ""
    portal_hosts: tuple[str, ...] = ()
    seconds_remaining: int = -1
    venue_info_url: str = ""
    error: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ProbeFinished:
    """A probe round asked for by `StartProbe(probe_id=...)` is over (event, past tense).

    `results` pairs every spec probed with its response; `api` is the RFC 8908 answer fetched
    from `api_uri` (the network's, or one from the config), else None. `error` says why the
    round as a whole failed (the probe process could not start, crashed, hung or answered
    garbage), "" when it ran: such a round's every probe failed too, and it counts like any
    round that got no answer.
    """

    network_id: str
    probe_id: int
    results: tuple[tuple[ProbeSpec, ProbeResponse], ...] = ()
    api: CaptiveApi | None = None
    api_uri: str = ""
    error: str = ""


def failed_round(
    network: Network, specs: Sequence[ProbeSpec], *, probe_id: int, why: str
) -> ProbeFinished:
    """A probe round that could not run (`why`): every probe failed, which the session counts
    as a round with no answer, and `why` is what `portal status` shows."""
    failed = tuple((s, ProbeResponse(s.url, error="probe-failed")) for s in specs)
    return ProbeFinished(network.id, probe_id, failed, error=why)
