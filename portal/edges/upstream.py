"""Forwarding queries to upstream resolvers, with spoofing resistance.

Each forwarded query gets a fresh random 16-bit ID and leaves from a UDP socket that carries no
other query at the same time, bound to a random source port picked by the kernel; an answer is
accepted only from the upstream it was sent to, with that ID and the same question (RFC 5452).
The networks portal serves are untrusted, so a fixed port or ID would invite spoofed answers.

Opening, connecting, registering and closing a socket for every query cost more than the rest
of the forward (bench/: 3× dnsmasq's CPU per forwarded query). So a socket that brought back a
matching answer goes back to a small per-upstream pool and is reused, one query at a time, by a
later query picked at random among the idle ones; after SOCKET_MAX_USES queries or
SOCKET_MAX_AGE_S seconds it is closed and a new one (a new random port) takes its place. A socket
whose query timed out or failed is closed at once (a late answer must not meet the next query).
Like dnsmasq's pool of random ports, this keeps port + ID entropy for every query in flight.

A truncated answer is retried over TCP. When no upstream answers within the bound, the caller
gets None and replies SERVFAIL.

Decides nothing about which names are forwarded: that is portal.core.answer.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import struct
import time
from collections.abc import Sequence

from portal.core.model import Upstream
from portal.core.wire import RCODE_REFUSED, RCODE_SERVFAIL, rcode_of, response_matches, with_id

log = logging.getLogger("portal.upstream")

UDP_TIMEOUT_S = 1.5  # per upstream attempt
TCP_TIMEOUT_S = 3.0
TOTAL_TIMEOUT_S = 4.0  # the whole forward, all upstreams included: then SERVFAIL
POOL_MAX_IDLE = 256  # idle sockets kept per upstream: enough for a burst of queries in flight
SOCKET_MAX_USES = 100  # queries one socket carries, one at a time, before its port changes
SOCKET_MAX_AGE_S = 10.0  # ... or seconds since it was opened


class Forwarder:
    def __init__(self, upstreams: Sequence[Upstream] = ()) -> None:
        self.upstreams: tuple[Upstream, ...] = tuple(upstreams)
        self.sent = 0
        self.failed = 0
        self._pools: dict[Upstream, _UdpPool] = {}

    def set_upstreams(self, upstreams: Sequence[Upstream]) -> None:
        self.upstreams = tuple(upstreams)
        # sockets of upstreams we no longer use are closed; queries in flight keep theirs
        for server in [s for s in self._pools if s not in self.upstreams]:
            self._pools.pop(server).close()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def _pool(self, server: Upstream) -> _UdpPool:
        pool = self._pools.get(server)
        if pool is None:
            pool = self._pools[server] = _UdpPool(server)
        return pool

    async def forward(
        self,
        data: bytes,
        question: bytes,
        *,
        upstreams: Sequence[Upstream] | None = None,
        tcp: bool = False,
    ) -> bytes | None:
        """Forward the client's query; return the answer with the client's ID, or None."""
        servers = tuple(upstreams) if upstreams is not None else self.upstreams
        if not servers:
            return None
        client_id = struct.unpack_from("!H", data, 0)[0]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TOTAL_TIMEOUT_S
        fallback: bytes | None = None
        for server in servers:
            left = deadline - loop.time()
            if left <= 0:
                break
            self.sent += 1
            qid = secrets.randbits(16)
            query = with_id(data, qid)
            try:
                if tcp:
                    answer = await _tcp_exchange(
                        server, query, qid, question, min(TCP_TIMEOUT_S, left)
                    )
                else:
                    answer = await self._pool(server).exchange(
                        query, qid, question, min(UDP_TIMEOUT_S, left)
                    )
                    if answer is not None and answer[2] & 0x02:  # TC: retry over TCP (RFC 7766)
                        left = deadline - loop.time()
                        if left > 0:
                            answer = (
                                await _tcp_exchange(
                                    server, query, qid, question, min(TCP_TIMEOUT_S, left)
                                )
                                or answer
                            )
            except OSError as exc:
                log.debug("upstream %s: %s, trying the next", server, exc)
                answer = None
            if answer is None:
                continue
            if rcode_of(answer) in (RCODE_SERVFAIL, RCODE_REFUSED):
                fallback = fallback or answer  # another upstream may do better
                continue
            return with_id(answer, client_id)
        if fallback is not None:
            return with_id(fallback, client_id)
        self.failed += 1
        return None


def _expire(fut: asyncio.Future[bytes]) -> None:
    if not fut.done():
        fut.set_result(b"")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class _Conn:
    """One pooled UDP socket, connected to its upstream (the kernel drops other sources)."""

    __slots__ = ("sock", "fd", "uses", "opened_at", "waiter", "qid", "question")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.uses = 0
        self.opened_at = time.monotonic()
        self.waiter: asyncio.Future[bytes] | None = None
        self.qid = -1
        self.question = b""


class _UdpPool:
    """Idle connected sockets for one upstream; each carries one query at a time."""

    def __init__(self, server: Upstream) -> None:
        self.server = server
        self.idle: list[_Conn] = []
        self.open = 0
        self.closed = False

    async def exchange(
        self, query: bytes, qid: int, question: bytes, timeout_s: float
    ) -> bytes | None:
        loop = asyncio.get_running_loop()
        conn = self._take(loop)
        fut: asyncio.Future[bytes] = loop.create_future()
        conn.waiter, conn.qid, conn.question = fut, qid, question
        conn.uses += 1
        ok = False
        try:
            conn.sock.send(query)
            handle = loop.call_later(timeout_s, _expire, fut)
            try:
                answer = await fut
            finally:
                handle.cancel()
            ok = bool(answer)
        finally:
            conn.waiter = None
            if ok:
                self._give_back(loop, conn)
            else:  # timeout, error or cancellation: a late answer must never meet a new query
                self._close(loop, conn)
        return answer or None

    def _take(self, loop: asyncio.AbstractEventLoop) -> _Conn:
        now = time.monotonic()
        while self.idle:
            # a random idle socket: which port the next query uses is not predictable
            i = secrets.randbelow(len(self.idle))
            conn = self.idle[i]
            self.idle[i] = self.idle[-1]
            self.idle.pop()
            if conn.uses < SOCKET_MAX_USES and now - conn.opened_at < SOCKET_MAX_AGE_S:
                return conn
            self._close(loop, conn)
        sock = socket.socket(_family(self.server.host), socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            # connect(): the kernel picks a random ephemeral port and drops datagrams from others
            sock.connect((self.server.host, self.server.port))
            conn = _Conn(sock)
            loop.add_reader(conn.fd, self._readable, conn)
        except BaseException:
            sock.close()
            raise
        self.open += 1
        return conn

    def _give_back(self, loop: asyncio.AbstractEventLoop, conn: _Conn) -> None:
        if not self.closed and len(self.idle) < POOL_MAX_IDLE and conn.uses < SOCKET_MAX_USES:
            self.idle.append(conn)
        else:
            self._close(loop, conn)

    def _close(self, loop: asyncio.AbstractEventLoop | None, conn: _Conn) -> None:
        if conn.fd < 0:
            return
        if loop is not None:
            loop.remove_reader(conn.fd)
        conn.sock.close()
        conn.fd = -1
        self.open -= 1

    def close(self) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self.closed = True  # sockets still carrying a query are closed when it ends
        for conn in self.idle:
            self._close(loop, conn)
        self.idle.clear()

    def _readable(self, conn: _Conn) -> None:
        while True:
            try:
                packet = conn.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ECONNREFUSED from an ICMP port unreachable
                if conn.waiter is not None and not conn.waiter.done():
                    conn.waiter.set_exception(exc)
                return
            fut = conn.waiter
            if fut is None:  # an idle socket: nobody asked, drop it
                log.debug(
                    "upstream %s: unexpected datagram on an idle socket, ignoring", self.server
                )
                continue
            # connect() already restricts the source; check ID and question too
            if response_matches(packet, conn.qid, conn.question):
                if not fut.done():
                    fut.set_result(packet)
                return
            log.debug("upstream %s: mismatched answer, ignoring", self.server)


async def _tcp_exchange(
    server: Upstream, query: bytes, qid: int, question: bytes, timeout_s: float
) -> bytes | None:
    async def exchange() -> bytes | None:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(struct.pack("!H", len(query)) + query)
            await writer.drain()
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                packet = await reader.readexactly(length)
                if response_matches(packet, qid, question):
                    return packet
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(exchange(), timeout_s)
    except (TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
        log.debug("upstream %s over TCP: %s", server, exc or "timeout")
        return None
