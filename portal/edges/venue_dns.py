"""Looking names up through the network's own DNS servers (not the system resolver)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

log = logging.getLogger("portal.venue_dns")


async def resolve_via(
    name: str, servers: Sequence[str], *, timeout_s: float = 3.0, port: int = 53
) -> list[str]:
    """A and AAAA records of `name` from the first server that answers; [] when none does."""
    import dns.asyncquery
    import dns.exception
    import dns.message
    import dns.rdatatype

    async def one(server: str, rdtype: dns.rdatatype.RdataType) -> list[str]:
        query = dns.message.make_query(name, rdtype)
        reply = await dns.asyncquery.udp(query, server, timeout=timeout_s, port=port)
        out: list[str] = []
        for rrset in reply.answer:
            if rrset.rdtype == rdtype:
                out += [r.to_text() for r in rrset]
        return out

    for server in servers:
        try:
            v4, v6 = await asyncio.gather(
                one(server, dns.rdatatype.A), one(server, dns.rdatatype.AAAA)
            )
        except (dns.exception.DNSException, OSError) as exc:
            log.debug("looking up %s at %s failed: %s", name, server, exc)
            continue
        if v4 or v6:
            return v4 + v6
    return []
