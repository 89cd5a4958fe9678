"""Asking the network's own DNS servers, the way the network itself would see it.

    resolve_via(host, servers, *, timeout_s, network=None) -> list[str]   A and AAAA

Names are resolved through the network's DNS servers (`network.venue_dns`), queried directly
with dnspython on sockets of our own, never the system resolver, which may be a DoT/DoH
resolver that cannot see the portal. Queries leave from the network's own address and, where
the kernel permits, are bound to its interface (SO_BINDTODEVICE), so a VPN's routes cannot
carry them. Used in the daemon itself for pinning a portal's names (loaded at the first
lookup; no HTTP or TLS here) and by portal.edges.http_probe for its probes.

A server entry is "ADDR", "ADDR:PORT" or "[V6ADDR]:PORT" (portal.core.inet; ports other than 53
are for tests).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from portal.core.inet import parse_host_port
from portal.core.model import Network
from portal.errors import InvalidAddress

log = logging.getLogger("portal.http_probe")

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)  # Linux value; absent on some builds

_NO_ROUTE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN}
_BIND = {errno.EADDRNOTAVAIL, errno.ENODEV}


class _Failure(Exception):
    """Internal to the edges: a step failed with a known error code (never leaves them)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


# --- addresses and sockets ---------------------------------------------------------------------


def _servers(texts: Iterable[str]) -> list[tuple[str, int]]:
    servers = []
    for text in texts:
        try:
            servers.append(parse_host_port(text))
        except InvalidAddress:
            log.info("DNS server %r is not an address, ignoring", text)
    return servers


def _is_v6(address: str) -> bool:
    return ":" in address


def _source_for(network: Network, destination: str) -> str | None:
    """The network's own address of the destination's family (not link-local), or None."""
    want_v6 = _is_v6(destination)
    for text in network.addresses:
        address = text.split("/", 1)[0]
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if (ip.version == 6) == want_v6 and not ip.is_link_local:
            return address
    return None


def _device_option(interface: str) -> list[tuple[int, int, bytes]]:
    """[SO_BINDTODEVICE option] when the kernel lets us bind to `interface`, else [].

    Unprivileged binding is allowed since Linux 5.7; an older kernel or a seccomp filter
    answers EPERM and we go without (the source address still picks the network's route in
    the common case). A missing interface is a failure: the network is gone.
    """
    if not interface:
        return []
    name = interface.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as test:
        try:
            test.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, name)
        except PermissionError:
            log.debug("may not bind sockets to %s, probing by source address only", interface)
            return []
        except OSError as exc:
            raise _Failure("bind-error", f"interface {interface}: {exc.strerror}") from exc
    return [(socket.SOL_SOCKET, SO_BINDTODEVICE, name)]


def _os_code(exc: BaseException, tls_error: type[BaseException] | None = None) -> str | None:
    """The error code for an OSError anywhere in the exception's cause chain. `tls_error`:
    ssl.SSLError, from callers that speak TLS (this module does not, and never imports ssl)."""
    seen: BaseException | None = exc
    while seen is not None:
        if tls_error is not None and isinstance(seen, tls_error):
            return "tls-error"
        if isinstance(seen, ConnectionRefusedError):
            return "connect-refused"
        if isinstance(seen, OSError) and seen.errno is not None:
            if seen.errno in _NO_ROUTE:
                return "no-route"
            if seen.errno in _BIND:
                return "bind-error"
        seen = seen.__cause__ or seen.__context__
    return None


# --- DNS through the venue's servers -----------------------------------------------------------


async def _udp_query(
    query: dns.message.Message,
    server: tuple[str, int],
    *,
    timeout_s: float,
    source: str | None,
    device: list[tuple[int, int, bytes]],
) -> dns.message.Message:
    """One UDP exchange on a socket we own, so it can be bound to the network's interface."""
    host, port = server
    family = socket.AF_INET6 if _is_v6(host) else socket.AF_INET
    loop = asyncio.get_running_loop()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for level, option, value in device:
            sock.setsockopt(level, option, value)
        if source is not None:
            sock.bind((source, 0))
        # Connected UDP: the kernel drops datagrams from anyone but the server, and an ICMP
        # "port unreachable" comes back as ECONNREFUSED at once instead of a timeout.
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, query.to_wire())
        async with asyncio.timeout(timeout_s):
            while True:
                data = await loop.sock_recv(sock, 65535)
                try:
                    reply = dns.message.from_wire(data)
                except dns.exception.DNSException:
                    continue  # garbage is not an answer; keep waiting for the real one
                if query.is_response(reply):
                    break
    if reply.flags & dns.flags.TC:
        # RFC 7766: retry a truncated answer over TCP (rare for the few names we look up).
        from dns.asyncquery import tcp  # loaded only for this rare case

        reply = await tcp(query, host, timeout=timeout_s, port=port, source=source)
    return reply


async def _lookup(
    name: str,
    rdtype: dns.rdatatype.RdataType,
    servers: Sequence[tuple[str, int]],
    *,
    deadline: float,
    network: Network | None,
    device: list[tuple[int, int, bytes]],
) -> list[str]:
    """Addresses of `name` from the first server that answers; raise _Failure otherwise."""
    if not servers:
        raise _Failure("no-dns", "the network has no DNS servers")
    failure = _Failure("dns-error")
    try:
        query = dns.message.make_query(name, rdtype)
    except (dns.exception.DNSException, ValueError) as exc:
        raise _Failure("bad-url", f"{name!r} is not a DNS name: {exc}") from exc
    for index, server in enumerate(servers):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Failure("dns-timeout", f"no answer for {name}")
        # A dead first server must leave time for the others: each gets an equal share.
        share = remaining / (len(servers) - index)
        source = _source_for(network, server[0]) if network is not None else None
        try:
            reply = await _udp_query(query, server, timeout_s=share, source=source, device=device)
        except (TimeoutError, dns.exception.Timeout):  # the latter from the TCP retry
            failure = _Failure("dns-timeout", f"{server[0]} did not answer for {name}")
            continue
        except (OSError, dns.exception.DNSException) as exc:
            code = _os_code(exc) if isinstance(exc, OSError) else None
            failure = _Failure(code or "dns-error", f"{server[0]}: {exc}")
            continue
        rcode = reply.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            # An authoritative "no such name": asking the next server of the venue won't help.
            raise _Failure("dns-nxdomain", f"{name} does not exist at {server[0]}")
        if rcode != dns.rcode.NOERROR:
            failure = _Failure("dns-error", f"{server[0]} answered {dns.rcode.to_text(rcode)}")
            continue
        found = [rr.to_text() for rrset in reply.answer if rrset.rdtype == rdtype for rr in rrset]
        if not found:
            raise _Failure("dns-nodata", f"{name} has no {dns.rdatatype.to_text(rdtype)} record")
        return found
    raise failure


async def resolve_via(
    host: str,
    servers: Sequence[str],
    *,
    timeout_s: float,
    network: Network | None = None,
) -> list[str]:
    """A and AAAA records of `host` from the given DNS servers, A first; [] when none answer.

    For `portal add DOMAIN` without an address and for pinning a portal's names: the daemon
    passes the network's DNS servers, and the network itself so that the queries leave from
    its address and interface like the probes do. Never raises.
    """
    parsed = _servers(servers)
    deadline = time.monotonic() + timeout_s

    async def one(rdtype: dns.rdatatype.RdataType) -> list[str]:
        try:
            device = _device_option(network.interface) if network is not None else []
            return await _lookup(
                host, rdtype, parsed, deadline=deadline, network=network, device=device
            )
        except _Failure as failure:
            log.debug(
                "looking up %s %s failed: %s %s", host, rdtype.name, failure.code, failure.detail
            )
            return []

    v4, v6 = await asyncio.gather(one(dns.rdatatype.A), one(dns.rdatatype.AAAA))
    return v4 + v6
