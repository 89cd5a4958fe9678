"""Can the user's own resolver see the portal? The question the daemon asks, and the answers.

A desktop's own captive-portal prompt loads the portal's pages with the system's name
resolution: GNOME Shell's portal helper is a WebKit window without a proxy
(js/portalHelper/main.js), plasma-nm's "Log in" opens the everyday browser. Both stand or fall
with the user's resolver, which behind a portal is often exactly what cannot answer (DNS over
TLS or HTTPS, a resolver of the user's choosing, a VPN's DNS). The daemon asks that resolver
(the stub's upstreams: where the stub sends every name that is neither an override nor a
portal name) for the sign-in page's own name once per portal, and reports the answer as
`StatusReport.user_dns`; the agent decides from it whether to speak (core/agent_logic.py).

Pure: the question is plain data; the daemon does the asking (portal/daemon.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from portal.core.model import Connectivity, PortalStatus

# StatusReport.user_dns: "" means not asked (no portal, no name to ask for, no resolver known,
# or a daemon that predates the question).
RESOLVES: Final = "resolves"
FAILS: Final = "fails"
CHECKING: Final = "checking"
NOT_ASKED: Final = ""


@dataclass(frozen=True, slots=True)
class Question:
    """Ask `servers` (ADDR:PORT) for `host`, on behalf of the portal of `network_id`."""

    network_id: str
    host: str
    servers: tuple[str, ...]


def _name(host: str) -> str:
    """`host` lowercased without its trailing dot; "" for an address literal or nothing."""
    host = host.rstrip(".").lower()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return ""


def question(status: PortalStatus, upstreams: Sequence[str]) -> Question | None:
    """What to ask the user's resolver about the portal in `status`, or None (nothing to ask).

    The sign-in page's host is the name a desktop's window must resolve after the portal's
    redirect; an address literal needs no resolver, so the portal's other names stand in.
    Asked while captive, and kept while the portal merely stops answering (limited).
    """
    network = status.network
    if network is None or status.state not in (Connectivity.CAPTIVE, Connectivity.LIMITED):
        return None
    if not upstreams:
        return None
    try:
        page_host = urlsplit(status.portal_url).hostname or ""
    except ValueError:
        page_host = ""
    for candidate in (page_host, *status.portal_hosts):
        host = _name(candidate)
        if host:
            return Question(network.id, host, tuple(upstreams))
    return None
