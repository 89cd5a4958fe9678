"""Asking the network's own DNS servers, the way the network itself would see it.

    resolve_via(host, servers, *, timeout_s, network=None) -> list[str]   A, then AAAA

Names are resolved through the network's DNS servers (`network.venue_dns`), queried directly
on sockets of our own, never the system resolver, which may be a DoT/DoH resolver that cannot
see the portal. Queries leave from the network's own address and, where the kernel permits,
are bound to its interface (SO_BINDTODEVICE), so a VPN's routes cannot carry them. Each query
has a random ID and its own connected socket on a port the kernel picks at random; an answer
counts only when it comes from that server (the connected socket), with that ID and the same
question (RFC 5452 §9.1); anything else is ignored while the real answer may still come.

A and AAAA are asked at once and the A answer is returned without waiting for the AAAA one
longer than AAAA_AFTER_A_S (RFC 8305 §3's resolution delay): a venue DNS that drops AAAA
queries, as some portals' do, costs that moment and not the whole timeout.

The packets are built and read by portal.core.packet (no dnspython: the daemon looks names up
here when it pins a portal's sign-in host, and dnspython's modules would stay resident, about
5 MiB). Used by the daemon (pinning, `portal add NAME`), the sign-in proxy and the probes
(portal.edges.http_probe).

A server entry is "ADDR", "ADDR:PORT" or "[V6ADDR]:PORT" (portal.core.inet; ports other than 53
are for tests). It must not decide what an answer means for the portal's state, and never asks
the system's resolver.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Iterable, Sequence

from portal.core.inet import parse_host_port
from portal.core.model import Network
from portal.core.packet import (
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    TYPE_A,
    TYPE_AAAA,
    Reply,
    build_query,
    parse_reply,
)
from portal.errors import InvalidAddress

log = logging.getLogger("portal.http_probe")

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)  # Linux value; absent on some builds
# How long the AAAA answer may come after the A answer (RFC 8305 §3 recommends 50 ms).
AAAA_AFTER_A_S = 0.05
TYPE_NAMES = {TYPE_A: "A", TYPE_AAAA: "AAAA"}

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


def _socket(
    server: tuple[str, int],
    kind: socket.SocketKind,
    *,
    source: str | None,
    device: list[tuple[int, int, bytes]],
) -> socket.socket:
    """A non-blocking socket toward `server`, bound to the network's interface and address."""
    family = socket.AF_INET6 if _is_v6(server[0]) else socket.AF_INET
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK)
    try:
        for level, option, value in device:
            sock.setsockopt(level, option, value)
        if source is not None:
            sock.bind((source, 0))  # port 0: a random one of the kernel's ephemeral range
    except BaseException:
        sock.close()
        raise
    return sock


def _random_id() -> int:
    return int.from_bytes(os.urandom(2), "big")


# --- DNS through the venue's servers -----------------------------------------------------------


async def _udp_exchange(
    query: bytes,
    qid: int,
    server: tuple[str, int],
    *,
    timeout_s: float,
    source: str | None,
    device: list[tuple[int, int, bytes]],
) -> Reply:
    """One UDP exchange on a socket of its own; a truncated answer is asked again over TCP."""
    loop = asyncio.get_running_loop()
    question = query[12:]
    reply: Reply | None = None
    async with asyncio.timeout(timeout_s):
        with _socket(server, socket.SOCK_DGRAM, source=source, device=device) as sock:
            # Connected UDP: the kernel drops datagrams from anyone but the server, and an ICMP
            # "port unreachable" comes back as ECONNREFUSED at once instead of a timeout.
            await loop.sock_connect(sock, server)
            await loop.sock_sendall(sock, query)
            while reply is None:
                data = await loop.sock_recv(sock, 65535)
                reply = parse_reply(data, qid, question)  # None: not our answer, keep waiting
        if reply.truncated:
            # RFC 7766: ask again over TCP (rare for the few names looked up here), a new ID
            qid = _random_id()
            query = struct.pack("!H", qid) + query[2:]
            reply = await _tcp_exchange(query, qid, server, source=source, device=device)
    return reply


async def _tcp_exchange(
    query: bytes,
    qid: int,
    server: tuple[str, int],
    *,
    source: str | None,
    device: list[tuple[int, int, bytes]],
) -> Reply:
    loop = asyncio.get_running_loop()
    with _socket(server, socket.SOCK_STREAM, source=source, device=device) as sock:
        await loop.sock_connect(sock, server)
        await loop.sock_sendall(sock, struct.pack("!H", len(query)) + query)
        buffer = b""
        while True:
            while len(buffer) < 2 or len(buffer) < 2 + struct.unpack_from("!H", buffer)[0]:
                chunk = await loop.sock_recv(sock, 65535)
                if not chunk:
                    raise ConnectionResetError(errno.ECONNRESET, "closed before answering")
                buffer += chunk
            size = struct.unpack_from("!H", buffer)[0]
            message, buffer = buffer[2 : 2 + size], buffer[2 + size :]
            reply = parse_reply(message, qid, query[12:])
            if reply is not None:
                return reply


async def _lookup(
    name: str,
    qtype: int,
    servers: Sequence[tuple[str, int]],
    *,
    deadline: float,
    network: Network | None,
    device: list[tuple[int, int, bytes]],
) -> list[str]:
    """Addresses of `name` from the first server that answers; raise _Failure otherwise."""
    if not servers:
        raise _Failure("no-dns", "the network has no DNS servers")
    kind = TYPE_NAMES.get(qtype, str(qtype))
    failure = _Failure("dns-error")
    for index, server in enumerate(servers):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Failure("dns-timeout", f"no answer for {name}")
        # A dead first server must leave time for the others: each gets an equal share.
        share = remaining / (len(servers) - index)
        source = _source_for(network, server[0]) if network is not None else None
        qid = _random_id()
        query = build_query(name, qtype, qid)
        if query is None:
            raise _Failure("bad-url", f"{name!r} is not a DNS name")
        try:
            reply = await _udp_exchange(
                query, qid, server, timeout_s=share, source=source, device=device
            )
        except TimeoutError:
            failure = _Failure("dns-timeout", f"{server[0]} did not answer for {name}")
            continue
        except OSError as exc:
            failure = _Failure(_os_code(exc) or "dns-error", f"{server[0]}: {exc}")
            continue
        if reply.rcode == RCODE_NXDOMAIN:
            # An authoritative "no such name": asking the next server of the venue won't help.
            raise _Failure("dns-nxdomain", f"{name} does not exist at {server[0]}")
        if reply.rcode != RCODE_NOERROR:
            failure = _Failure("dns-error", f"{server[0]} answered rcode {reply.rcode}")
            continue
        if not reply.addresses:
            raise _Failure("dns-nodata", f"{name} has no {kind} record")
        return list(reply.addresses)
    raise failure


async def resolve_via(
    host: str,
    servers: Sequence[str],
    *,
    timeout_s: float,
    network: Network | None = None,
) -> list[str]:
    """A and AAAA records of `host` from the given DNS servers, A first; [] when none answer.

    Both are asked at once; once the A answer is in, the AAAA answer gets AAAA_AFTER_A_S more
    (a venue that drops AAAA costs that, not `timeout_s`); without A records it gets the whole
    time. For pinning a portal's names, `portal add DOMAIN` without an address and the sign-in
    proxy: the caller passes the network's DNS servers, and the network itself so that the
    queries leave from its address and interface like the probes do. Never raises.
    """
    parsed = _servers(servers)
    deadline = time.monotonic() + timeout_s
    try:
        device = _device_option(network.interface) if network is not None else []
    except _Failure as failure:
        log.debug("looking up %s failed: %s %s", host, failure.code, failure.detail)
        return []

    async def one(qtype: int) -> list[str]:
        try:
            return await _lookup(
                host, qtype, parsed, deadline=deadline, network=network, device=device
            )
        except _Failure as failure:
            log.debug(
                "looking up %s %s failed: %s %s",
                host,
                TYPE_NAMES[qtype],
                failure.code,
                failure.detail,
            )
            return []

    v4_task = asyncio.ensure_future(one(TYPE_A))
    v6_task = asyncio.ensure_future(one(TYPE_AAAA))
    try:
        v4 = await v4_task
        if v4:
            done, _ = await asyncio.wait({v6_task}, timeout=AAAA_AFTER_A_S)
            if not done:
                log.debug("looking up %s: no AAAA answer soon after the A answer", host)
                return v4
        return v4 + await v6_task
    finally:
        v6_task.cancel()  # also when the caller is cancelled: no lookup outlives its caller
        v4_task.cancel()
