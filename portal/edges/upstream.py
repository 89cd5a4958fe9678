"""Forwarding queries to upstream resolvers, with spoofing resistance.

Every forwarded query gets a fresh random 16-bit ID and leaves from one of a few UDP sockets per
upstream, each connected to that upstream (the kernel drops datagrams from other sources) and
bound to a random port the kernel picks. The socket is chosen at random for each query, and it
is replaced by a new one (a new random port) after SOCKET_MAX_USES queries or SOCKET_MAX_AGE_S
seconds. An answer is accepted only on the socket its query left from, with that query's ID and
the same question (RFC 5452 §9.1).

What a spoofer has to hit is the same as with one socket per query: a blind answer succeeds only
if its (port, ID) pair belongs to a query in flight, and there is exactly one such pair per
query in flight either way; the ports are random and change over time, the IDs are random and
unique per socket. Sharing a socket between queries in flight (as dnsmasq does with its pool of
random sockets) lets one wakeup read many answers, where a socket per query costs an epoll event,
a registration and a close each (bench/: that was the forwarding path's largest cost).

There are no tasks, futures or timers per query: a query is a small `_Flight`, answers arrive in
the sockets' read callbacks, and one timer per forwarder expires the attempts that get no
answer, in the order they were sent. A truncated answer is retried over TCP (the only part that
runs as a task, and a rare one). An upstream that answers SERVFAIL or REFUSED, or none at all
within UDP_TIMEOUT_S, passes the query to the next upstream; when none answers within
TOTAL_TIMEOUT_S, the caller gets None and replies SERVFAIL.

It runs in the DNS thread, its `reactor` (portal.edges.reactor, whose table says what that
thread owns): every UDP socket, the queries in flight and the timer. The awaitable `forward()`
and `aclose()` are called from the asyncio loop and hand the work over; TCP forwarding runs on
that loop. The UDP path needs no asyncio: the daemon forwards its first queries before asyncio
is imported (portal/early.py), so this module imports it only in its coroutines.

Decides nothing about which names are forwarded: that is portal.core.answer.
"""

from __future__ import annotations

import errno
import functools
import heapq
import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from portal.core.model import Upstream
from portal.core.packet import RCODE_REFUSED, RCODE_SERVFAIL, rcode_of, response_matches, with_id
from portal.edges.reactor import ThreadReactor, Timer
from portal.edges.udp_batch import recv_data

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("portal.upstream")

UDP_TIMEOUT_S = 1.5  # per upstream attempt
TCP_TIMEOUT_S = 3.0
TOTAL_TIMEOUT_S = 4.0  # the whole forward, all upstreams included: then SERVFAIL
POOL_SOCKETS = 16  # sockets per upstream, each carrying any number of queries at once (2^k)
SOCKET_MAX_USES = 100  # queries one socket carries before its port changes
SOCKET_MAX_AGE_S = 10.0  # ... or seconds since it was opened
TIMER_SLACK_S = 0.05  # attempts expiring this close together are expired in one wakeup
READ_BATCH = 64  # answers read per wakeup and socket before yielding to the loop (fairness)

# done(context, answer): answer carries the client's ID, or is None (the caller's SERVFAIL)
Done = Callable[[Any, "bytes | None"], None]


class Forwarder:
    def __init__(self, reactor: ThreadReactor, upstreams: Sequence[Upstream] = ()) -> None:
        self.reactor = reactor
        self.upstreams: tuple[Upstream, ...] = tuple(upstreams)
        self.failed = 0
        self.in_flight = 0
        self._pools: dict[Upstream, _UdpPool] = {}
        # (expiry, attempt, flight): attempts of the full UDP_TIMEOUT_S, so in expiry order
        self._queue: deque[tuple[float, int, _Flight]] = deque()
        # attempts cut short by the total bound (rare): a heap
        self._short: list[tuple[float, int, _Flight]] = []
        self._timer: Timer | None = None
        self._timer_at = 0.0
        self._attempts = 0  # a serial per attempt: queue entries of earlier attempts are stale

    def set_upstreams(self, upstreams: Sequence[Upstream]) -> None:
        self.upstreams = tuple(upstreams)
        if self.reactor.in_thread():
            self._drop_unused_pools()
        else:
            self.reactor.call_soon_threadsafe(self._drop_unused_pools)

    def _drop_unused_pools(self) -> None:
        # sockets of upstreams we no longer use are closed; queries in flight keep theirs
        for server in [s for s in self._pools if s not in self.upstreams]:
            self._pools.pop(server).close()

    async def aclose(self) -> None:
        """close() in the DNS thread, from the asyncio loop; returns when it is done."""
        import asyncio  # loaded already: the caller runs on its loop

        loop = asyncio.get_running_loop()
        closed = loop.create_future()

        def close_then_tell() -> None:
            try:
                self.close()
            finally:
                loop.call_soon_threadsafe(_resolve, closed, None)

        if self.reactor.alive():
            self.reactor.call_soon_threadsafe(close_then_tell)
            await closed
        else:
            self.close()  # the thread never started or has stopped: nothing else runs it

    def close(self) -> None:
        """Close every socket; queries still in flight get None. In the DNS thread."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending = [f for _, n, f in [*self._queue, *self._short] if f.attempt == n and f.sock]
        self._queue.clear()
        self._short.clear()
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        for flight in pending:
            sock, flight.sock = flight.sock, None
            if sock is not None:
                sock.done_with(flight.qid)  # the last one closes its socket
            self._finish(flight, None)

    # -- the callback API (the stub's UDP path) ---------------------------------------------

    def start(
        self,
        data: bytes,
        question: bytes,
        done: Done,
        context: Any = None,
        *,
        upstreams: Sequence[Upstream] | None = None,
    ) -> None:
        """Forward the client's query over UDP; `done(context, answer)` is called exactly once:
        later from the event loop, or at once when no upstream can be sent to."""
        servers = tuple(upstreams) if upstreams is not None else self.upstreams
        now = self.reactor.time()
        flight = _Flight(data, question, servers, done, context, now + TOTAL_TIMEOUT_S)
        self.in_flight += 1
        self._attempt(flight, now)

    # -- the awaitable API (TCP clients, tests) ---------------------------------------------

    async def forward(
        self,
        data: bytes,
        question: bytes,
        *,
        upstreams: Sequence[Upstream] | None = None,
        tcp: bool = False,
    ) -> bytes | None:
        """Forward the client's query; return the answer with the client's ID, or None."""
        if tcp:
            servers = tuple(upstreams) if upstreams is not None else self.upstreams
            return await self._forward_tcp(data, question, servers)
        import asyncio

        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes | None] = loop.create_future()

        def done(_: object, answer: bytes | None) -> None:
            loop.call_soon_threadsafe(_resolve, fut, answer)

        # in the UDP side's thread, wherever that is
        start = functools.partial(self.start, data, question, done, None, upstreams=upstreams)
        self.reactor.call_soon_threadsafe(start)
        return await fut

    async def _forward_tcp(
        self, data: bytes, question: bytes, servers: tuple[Upstream, ...]
    ) -> bytes | None:
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = loop.time() + TOTAL_TIMEOUT_S
        fallback: bytes | None = None
        for server in servers:
            left = deadline - loop.time()
            if left <= 0:
                break
            qid = _random.u16()
            answer = await _tcp_exchange(
                server, with_id(data, qid), qid, question, min(TCP_TIMEOUT_S, left)
            )
            if answer is None:
                continue
            if rcode_of(answer) in (RCODE_SERVFAIL, RCODE_REFUSED):
                fallback = fallback or answer  # another upstream may do better
                continue
            return with_id(answer, _id_of(data))
        if fallback is not None:
            return with_id(fallback, _id_of(data))
        self.failed += 1
        return None

    # -- one query's way through the upstreams ----------------------------------------------

    def _attempt(self, flight: _Flight, now: float | None = None) -> None:
        """Send to the next upstream that is left, or finish with the best answer so far."""
        r = self.reactor
        if now is None:
            now = r.time()
        while flight.index < len(flight.servers):
            left = flight.deadline - now
            if left <= 0.001:
                break
            server = flight.servers[flight.index]
            pool = self._pools.get(server)
            if pool is None:
                pool = self._pools[server] = _UdpPool(server, self)
            try:
                sock = pool.pick(r)
                qid = sock.new_id()
                sock.sock.send(with_id(flight.data, qid))
            except OSError as exc:
                log.debug("upstream %s: %s, trying the next", server, exc)
                flight.index += 1
                continue
            sock.flights[qid] = flight
            flight.sock, flight.qid = sock, qid
            self._attempts += 1
            flight.attempt = n = self._attempts
            if left >= UDP_TIMEOUT_S:
                expiry = now + UDP_TIMEOUT_S
                self._queue.append((expiry, n, flight))
            else:
                expiry = now + left
                heapq.heappush(self._short, (expiry, n, flight))
            if self._timer is None or expiry < self._timer_at:
                self._arm(expiry)
            return
        self._finish(flight, flight.fallback)

    def _answered(self, sock: _Sock, flight: _Flight, packet: bytes) -> None:
        flight.sock = None
        sock.done_with(flight.qid)
        if packet[2] & 0x02:  # TC: retry over TCP (RFC 7766), on the asyncio loop
            left = flight.deadline - self.reactor.time()
            server = flight.servers[flight.index]
            qid = _random.u16()
            retry = _tcp_exchange(
                server, with_id(flight.data, qid), qid, flight.question, min(TCP_TIMEOUT_S, left)
            )
            self.reactor.run_coroutine(retry, lambda answer: self._result(flight, answer or packet))
            return
        self._result(flight, packet)

    def _result(self, flight: _Flight, answer: bytes) -> None:
        if rcode_of(answer) in (RCODE_SERVFAIL, RCODE_REFUSED):
            flight.fallback = flight.fallback or answer  # another upstream may do better
            self._next(flight)
            return
        self._finish(flight, answer)

    def _next(self, flight: _Flight) -> None:
        flight.index += 1
        self._attempt(flight)

    def _finish(self, flight: _Flight, answer: bytes | None) -> None:
        self.in_flight -= 1
        if answer is None:
            self.failed += 1
        else:
            answer = with_id(answer, _id_of(flight.data))
        done, context = flight.done, flight.context
        flight.data = flight.question = b""  # the queue may hold the shell a while longer
        flight.context = flight.fallback = None
        try:
            done(context, answer)
        except Exception:  # one query's callback never breaks the others
            log.exception("internal error delivering a forwarded answer, ignoring")
        self._prune()

    def _prune(self) -> None:
        """Drop finished or moved-on attempts from the queue's head, so that with an upstream
        that answers, the queue holds about what is in flight, not everything of the last
        UDP_TIMEOUT_S."""
        q = self._queue
        while q:
            _, n, flight = q[0]
            if flight.attempt == n and flight.sock is not None:
                return
            q.popleft()

    # -- expiry ----------------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.reactor.call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer = None
        limit = self.reactor.time() + TIMER_SLACK_S
        expired: list[_Flight] = []
        q, short = self._queue, self._short
        while q and q[0][0] <= limit:
            _, n, flight = q.popleft()
            if flight.attempt == n and flight.sock is not None:
                expired.append(flight)
        while short and short[0][0] <= limit:
            _, n, flight = heapq.heappop(short)
            if flight.attempt == n and flight.sock is not None:
                expired.append(flight)
        for flight in expired:
            sock, flight.sock = flight.sock, None
            assert sock is not None
            log.debug("upstream %s: no answer in time", sock.pool.server)
            sock.done_with(flight.qid)
            self._next(flight)
        self._prune()
        if self._timer is None and (q or short):
            head = min(q[0][0] if q else short[0][0], short[0][0] if short else q[0][0])
            self._arm(max(head, limit))

    def _failed(self, sock: _Sock, exc: OSError) -> None:
        """The socket's upstream refused (ICMP port unreachable) or the route went away: every
        query on it moves on to the next upstream."""
        log.debug("upstream %s: %s, trying the next", sock.pool.server, exc)
        sock.pool.retire(sock)
        for qid, flight in list(sock.flights.items()):
            flight.sock = None
            sock.done_with(qid)
            self._next(flight)


class _Random:
    """Cryptographically random 16-bit numbers from os.urandom, read 4 KiB at a time: the
    `secrets` module makes a getrandom() system call for every number, and a forwarded query
    needs two (bench/: 4 % of the forwarding path); importing it also loads OpenSSL's libcrypto
    through hashlib (3.8 MiB resident in the daemon)."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def u16(self) -> int:
        pos = self._pos
        if pos + 2 > len(self._buf):
            self._buf = os.urandom(4096)
            pos = 0
        self._pos = pos + 2
        return (self._buf[pos] << 8) | self._buf[pos + 1]

    def below(self, n: int) -> int:
        """Uniform in [0, n) for n dividing 65536 (POOL_SOCKETS is a power of two)."""
        return self.u16() % n


_random = _Random()


def _resolve(fut: asyncio.Future[bytes | None], answer: bytes | None) -> None:
    if not fut.done():
        fut.set_result(answer)


def _id_of(data: bytes) -> int:
    return (data[0] << 8) | data[1]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class _Flight:
    """One forwarded query, from the client's datagram to its answer."""

    __slots__ = (
        "data",
        "question",
        "servers",
        "index",
        "done",
        "context",
        "deadline",
        "sock",
        "qid",
        "attempt",
        "fallback",
    )

    def __init__(
        self,
        data: bytes,
        question: bytes,
        servers: tuple[Upstream, ...],
        done: Done,
        context: Any,
        deadline: float,
    ) -> None:
        self.data = data
        self.question = question
        self.servers = servers
        self.index = 0
        self.done = done
        self.context = context
        self.deadline = deadline
        self.sock: _Sock | None = None  # the socket the current attempt waits on
        self.qid = -1
        self.attempt = 0
        self.fallback: bytes | None = None


class _Sock:
    """One UDP socket connected to its upstream, with the queries in flight on it by ID."""

    __slots__ = ("pool", "sock", "fd", "uses", "opened_at", "flights", "retired")

    def __init__(self, pool: _UdpPool, sock: socket.socket) -> None:
        self.pool = pool
        self.sock = sock
        self.fd = sock.fileno()
        self.uses = 0
        self.opened_at = time.monotonic()
        self.flights: dict[int, _Flight] = {}
        self.retired = False

    def new_id(self) -> int:
        flights = self.flights
        while True:
            qid = _random.u16()
            if qid not in flights:
                return qid

    def done_with(self, qid: int) -> None:
        self.flights.pop(qid, None)
        if self.retired and not self.flights:
            self.pool.close_socket(self)


class _UdpPool:
    """The sockets for one upstream."""

    def __init__(self, server: Upstream, forwarder: Forwarder) -> None:
        self.server = server
        self.forwarder = forwarder
        self.slots: list[_Sock | None] = [None] * POOL_SOCKETS
        self.open = 0  # sockets open, retired ones included

    def pick(self, reactor: ThreadReactor) -> _Sock:
        # a random socket: which port the next query uses is not predictable
        i = _random.below(POOL_SOCKETS)
        sock = self.slots[i]
        if (
            sock is None
            or sock.uses >= SOCKET_MAX_USES
            or time.monotonic() - sock.opened_at >= SOCKET_MAX_AGE_S
        ):
            if sock is not None:
                self.retire(sock)
            sock = self.slots[i] = self._open(reactor)
        sock.uses += 1
        return sock

    def _open(self, reactor: ThreadReactor) -> _Sock:
        raw = socket.socket(_family(self.server.host), socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            # connect(): the kernel picks a random ephemeral port and drops datagrams from others
            raw.connect((self.server.host, self.server.port))
            sock = _Sock(self, raw)
            reactor.add_reader(sock.fd, self._readable, sock)
        except BaseException:
            raw.close()
            raise
        self.open += 1
        return sock

    def retire(self, sock: _Sock) -> None:
        """No new queries on this socket; it closes once its last query is answered or
        expired (a late answer must never meet a later query on a reused port)."""
        if not sock.retired:
            sock.retired = True
            for i, s in enumerate(self.slots):
                if s is sock:
                    self.slots[i] = None
        if not sock.flights:
            self.close_socket(sock)

    def close_socket(self, sock: _Sock) -> None:
        if sock.fd < 0:
            return
        self.forwarder.reactor.remove_reader(sock.fd)
        sock.sock.close()
        sock.fd = -1
        self.open -= 1

    def close(self) -> None:
        for sock in [s for s in self.slots if s is not None]:
            self.retire(sock)

    def _readable(self, sock: _Sock) -> None:
        flights = sock.flights
        # At most as many as are expected: no read that would only say EAGAIN (an exception in
        # the pure-Python path); a stray datagram beyond them wakes the loop again.
        packets, error = recv_data(sock.sock, max(1, min(READ_BATCH, len(flights))))
        for packet in packets:
            flight = flights.get(_id_of(packet)) if len(packet) >= 12 else None
            # connect() already restricts the source; check the ID's query and question too
            if flight is None or not response_matches(packet, flight.qid, flight.question):
                log.debug("upstream %s: unexpected or mismatched answer, ignoring", self.server)
                continue
            self.forwarder._answered(sock, flight, packet)
        if error is None:
            return
        if error.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
            self.forwarder._failed(sock, error)  # an ICMP error: the upstream is not there
        else:
            log.debug("upstream %s: %s, ignoring", self.server, error)


async def _tcp_exchange(
    server: Upstream, query: bytes, qid: int, question: bytes, timeout_s: float
) -> bytes | None:
    import asyncio

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
