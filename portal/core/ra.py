"""What IPv6 router advertisements told us about a link, without NetworkManager.

The kernel processes RAs itself (SLAAC, default route) and hands the options it has no use
for to userspace as RTM_NEWNDUSEROPT (core/rtnetlink.py `parse_nduseropt`). This module keeps
what portal uses of them, per interface:

- RDNSS (RFC 8106 §5.1): the venue's DNS servers, each until its lifetime runs out (0 removes
  it, all ones is forever);
- the captive-portal option (RFC 8910 §2.3): the RFC 8908 API URI, as the latest RA gave it.

The kernel keeps none of this, and says it only when an RA comes (unsolicited every few
minutes, or in answer to a solicitation): a daemon that starts after the last RA learns the
options at the next one.

Pure: option bytes and monotonic times in, plain values out; no sockets, no clock.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

ND_OPT_RDNSS = 25
ND_OPT_CAPTIVE_PORTAL = 37
INFINITE = 0xFFFFFFFF
MAX_SERVERS = 8  # an RA could list more than a link has any use for
MAX_URI_CHARS = 2048

_RDNSS_HEAD = struct.Struct("!HI")  # reserved, lifetime


@dataclass(frozen=True, slots=True)
class RaLink:
    """What the router advertisements on one interface said."""

    dns: tuple[tuple[str, float], ...] = ()  # (server, monotonic expiry; inf: forever)
    captive_portal: str = ""  # RFC 8910 API URI, "" when none


def apply_options(
    link: RaLink, options: Iterable[tuple[int, bytes]], *, ifname: str, now: float
) -> RaLink:
    """`link` updated with one RA's options. A link-local server is given with its interface
    (fe80::1%eth0), the only way to reach it."""
    servers = dict(link.dns)
    uri = link.captive_portal
    for otype, body in options:
        if otype == ND_OPT_RDNSS and len(body) >= _RDNSS_HEAD.size + 16:
            _, lifetime_s = _RDNSS_HEAD.unpack_from(body)
            raw = body[_RDNSS_HEAD.size :]
            for pos in range(0, len(raw) - 15, 16):
                ip = ipaddress.IPv6Address(raw[pos : pos + 16])
                text = f"{ip}%{ifname}" if ip.is_link_local and ifname else str(ip)
                if lifetime_s == 0:
                    servers.pop(text, None)
                else:
                    expiry = float("inf") if lifetime_s == INFINITE else now + lifetime_s
                    servers[text] = expiry
        elif otype == ND_OPT_CAPTIVE_PORTAL:
            # The URI, padded with NULs to the option's 8-octet length (RFC 8910 §2.3).
            text = body.rstrip(b"\0").decode("utf-8", "replace")
            uri = text[:MAX_URI_CHARS] if text.isprintable() else ""
    # dicts keep their order: servers already known stay first, in the RAs' order
    return RaLink(dns=tuple(servers.items())[:MAX_SERVERS], captive_portal=uri)


def live_dns(link: RaLink, *, now: float) -> tuple[str, ...]:
    """The servers whose lifetime has not run out, in the order the RAs gave them."""
    return tuple(server for server, expiry in link.dns if expiry > now)


def next_expiry(links: Iterable[RaLink], *, now: float) -> float | None:
    """The monotonic time the next server runs out, None when none will."""
    times = [e for link in links for _, e in link.dns if now < e < float("inf")]
    return min(times) if times else None
