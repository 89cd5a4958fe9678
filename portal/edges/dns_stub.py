"""The local DNS stub: UDP and TCP sockets on loopback, bytes in, bytes out.

Reads datagrams straight from the socket (asyncio's datagram transport allocates a 256 KiB
buffer per read), asks portal.core.answer what to do with each (`Answers.decide`: parsed once,
decided once) and sends what it says: a reply, or the query to the upstreams it names. Never
awaits D-Bus or disk: the overrides and the portal's routes arrive as one ready `Answers`,
swapped whole (`set_entries`, `set_portal_routes`). Hostile input is logged at debug level and
dropped or answered FORMERR; nothing here raises out of a read callback.

On a network that was captive, the daemon arms an alarm (`set_watch`, core/expiry.py
AnswerWatch): the DNS thread shows it every UDP answer it relays from the user's resolvers, and
when it fires (a burst of failing or hijacked answers) hands one callback to the asyncio loop.
Unarmed, it costs one attribute read per forwarded answer.

The UDP side runs in the DNS thread and TCP clients on the asyncio loop; which thread owns what
is the table in portal/edges/reactor.py. The UDP side can be served before asyncio is imported
(`serve_udp()`, portal/early.py): this module imports asyncio only in its coroutines.
"""

from __future__ import annotations

import functools
import logging
import resource
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from portal.core.answer import Answers, Forward, LocalEntry, relay
from portal.core.inet import format_host_port, is_loopback
from portal.core.model import Upstream
from portal.core.packet import RCODE_SERVFAIL, build_error
from portal.edges import udp_batch
from portal.edges.udp_batch import recv_many, send_many, serve_cached
from portal.edges.upstream import Forwarder

if TYPE_CHECKING:
    import asyncio

    from portal.core.expiry import AnswerWatch

log = logging.getLogger("portal.dns")

TCP_IDLE_TIMEOUT_S = 10.0  # RFC 7766 §6.2.3 suggests seconds, not minutes, for idle clients
TCP_MAX_CLIENTS = 64
# At close, how long TCP clients that sent a query may take to get their answer.
TCP_DRAIN_S = 2.0
MAX_PENDING_FORWARDS = 1024  # forwarded UDP queries in flight; beyond that, SERVFAIL at once
FD_RESERVE = 128  # descriptors kept for everything else: TCP clients, the bus, saving the state
# One client socket's share of them: a burst from one socket (a runaway app, a flood to a dead
# domain) gets SERVFAIL for its excess instead of taking every slot from everyone else.
MAX_PENDING_PER_CLIENT = 128
UDP_RCVBUF = 1 << 20
UDP_BATCH = 64  # datagrams read per wakeup before yielding to the loop (fairness)


def bind_sockets(listen: Iterable[tuple[str, int]]) -> list[socket.socket]:
    """One UDP and one TCP socket per address."""
    socks: list[socket.socket] = []
    try:
        for host, port in listen:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            u = socket.socket(fam, socket.SOCK_DGRAM)
            socks.append(u)
            # room for bursts (the kernel caps it at net.core.rmem_max)
            u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            u.bind((host, port))
            t = socket.socket(fam, socket.SOCK_STREAM)
            socks.append(t)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind((host, port))
            t.listen(128)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


class DnsStub:
    """Serves `sockets` (UDP and TCP, bound already); forwards through `forwarder`, whose reactor
    is the DNS thread this stub starts."""

    def __init__(self, sockets: list[socket.socket], forwarder: Forwarder) -> None:
        self.sockets = sockets
        self.forwarder = forwarder
        self.reactor = forwarder.reactor
        # the overrides, the routes and the answers built from them: swapped as one (the DNS
        # thread reads it)
        self._answers = Answers()
        # its cache's table, for the C wait (udp_batch.serve_cached), which reads it per wakeup
        self._table_ref: list[dict[bytes, tuple[bytes, float | None]]] = [self._answers.cache.table]
        self._servers: list[asyncio.Server] = []
        self._tcp_clients = 0
        self._tcp_tasks: set[asyncio.Task[Any]] = set()  # one per connected client
        self._tcp_idle: set[asyncio.Task[Any]] = set()  # those waiting for their next query
        self._pending: dict[tuple[Any, ...], int] = {}  # client address → forwards in flight
        # replies of the DNS thread's current round, all to one socket, sent by _flush()
        self._out: list[tuple[bytes, Any]] = []
        self._out_sock: socket.socket | None = None
        self.max_pending = forward_limit()
        # the DNS alarm and what to call (on the loop) when it fires: swapped as one
        self._watch: tuple[AnswerWatch, Callable[[str], None]] | None = None

    @property
    def entries(self) -> Mapping[str, LocalEntry]:
        return self._answers.entries

    @property
    def portal_routes(self) -> Mapping[str, tuple[Upstream, ...]]:
        return self._answers.routes

    def set_entries(self, entries: Mapping[str, LocalEntry]) -> None:
        self._use(self._answers.with_entries(entries))

    def set_portal_routes(self, routes: Mapping[str, tuple[Upstream, ...]]) -> None:
        """While a portal is up, names under these domains go to the venue's DNS."""
        self._use(self._answers.with_routes(dict(routes)))

    def _use(self, answers: Answers) -> None:
        self._answers = answers
        self._table_ref[0] = answers.cache.table  # from the DNS thread's next wakeup on

    def set_watch(self, watch: AnswerWatch | None, on_alarm: Callable[[str], None]) -> None:
        """Arm `watch` (None: disarm). When it fires, `on_alarm(reason)` runs on the asyncio
        loop that started the stub. The watch is the DNS thread's from here on."""
        self._watch = None if watch is None else (watch, on_alarm)

    def listen_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every UDP socket, as bound."""
        return [s.getsockname()[:2] for s in self.sockets if s.type == socket.SOCK_DGRAM]

    def addresses(self) -> list[str]:
        return [format_host_port(host, port) for host, port in self.listen_addresses()]

    def serve_udp(self) -> None:
        """Start the DNS thread on the UDP sockets; no asyncio loop needed (start() attaches
        it). Once only."""
        udp = [s for s in self.sockets if s.type == socket.SOCK_DGRAM]
        r = self.reactor
        for s in udp:
            # blocking, for the thread's plain recvfrom(); every other read says MSG_DONTWAIT
            s.setblocking(True)
            r.add_reader(s.fileno(), self._on_udp, s)
        if len(udp) == 1 and udp_batch.NATIVE:
            # the C wait answers what the cache holds; the rest comes here
            solo = udp[0]
            wait = functools.partial(serve_cached, solo, UDP_BATCH, self._table_ref)
            r.serve_solo(solo, functools.partial(self._on_datagram, solo), wait)
        elif len(udp) == 1:
            r.serve_solo(udp[0], functools.partial(self._on_solo, udp[0]))
        forwarder = self.forwarder
        r.busy = lambda: forwarder.in_flight > 0
        r.after = self._flush
        r.start_thread()

    async def start(self, on_fatal: Any = None) -> None:
        """Serve: TCP on the loop, UDP in the DNS thread (started here unless serve_udp() did
        it already). `on_fatal(exc)` is called on the loop if that thread ever dies."""
        import asyncio

        for s in self.sockets:
            if s.type != socket.SOCK_DGRAM:
                s.setblocking(False)
                server = await asyncio.start_server(self._on_tcp, sock=s, limit=70000)
                self._servers.append(server)
        r = self.reactor
        r.on_fatal = on_fatal
        if not r.started():
            self.serve_udp()
        r.attach(asyncio.get_running_loop())

    async def close(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        # Stop accepting before closing the servers: asyncio (3.11) fails the transport of a
        # connection accepted in the same loop turn as Server.close() (its server is gone by the
        # time it attaches), and that client sees a reset with its query unread. New
        # connections wait in the listening socket, which systemd keeps, for the next daemon.
        for s in self.sockets:
            if s.type != socket.SOCK_DGRAM:
                loop.remove_reader(s.fileno())
        await self._drain_tcp()
        for server in self._servers:
            server.close()
        # forwards in flight get their SERVFAIL from the thread, then it stops
        await self.forwarder.aclose()
        await asyncio.to_thread(self.reactor.stop)
        for s in self.sockets:
            s.close()

    # -- UDP (in the DNS thread) -------------------------------------------------------------

    def _on_udp(self, sock: socket.socket) -> None:
        """Read what waits (one recvmmsg() where portal._udpbatch is built) and handle each;
        the replies go out together when the DNS thread's round ends (`_flush`)."""
        datagrams, error = recv_many(sock, UDP_BATCH)
        for data, addr in datagrams:
            self._on_datagram(sock, data, addr)
        if error is not None:
            log.debug("udp receive failed: %s, ignoring", error)

    def _on_solo(self, sock: socket.socket, data: bytes, addr: Any) -> None:
        """The thread's blocking read returned a datagram: answer it at once (nothing else
        waits for the thread), then read what else has queued up without blocking (under load
        one wakeup serves many, as in _on_udp). An answer already built goes straight out."""
        reply = self._answers.cached(data, time.time(), addr[0])
        if reply is not None:
            _sendto(sock, reply, addr)
        else:
            self._on_datagram(sock, data, addr)
            self._flush()
        self._on_udp(sock)

    def _reply(self, sock: socket.socket, data: bytes, addr: Any) -> None:
        """Queue a reply; the DNS thread sends the queue at the end of its round."""
        if sock is not self._out_sock:
            self._flush()
            self._out_sock = sock
        self._out.append((data, addr))

    def _flush(self) -> None:
        """Send the queued replies: one sendmmsg() for a round's worth where the C extension
        is built, one sendto() each otherwise. A reply the kernel refuses (a full buffer under
        a flood) is dropped: the client asks again."""
        out = self._out
        if not out:
            return
        self._out = []
        sock = self._out_sock
        assert sock is not None
        if len(out) == 1:
            _sendto(sock, *out[0])
            return
        sent = send_many(sock, out)
        if sent < len(out):
            log.debug("%d of %d replies refused by the kernel, ignoring", len(out) - sent, len(out))

    def _on_datagram(self, sock: socket.socket, data: bytes, addr: Any) -> None:
        if addr == self.reactor.waker_address:
            return  # the DNS thread's wake-up: its reactor runs what it was woken for
        try:
            self._handle_udp(sock, data, addr)
        except Exception:  # the stub never dies of one packet
            log.exception("internal error on a packet from %s, ignoring", addr[0])

    def _handle_udp(self, sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
        client = addr[0]
        decision = self._answers.decide(data, time.time(), client)
        if isinstance(decision, bytes):
            if not client.startswith("127.") and not is_loopback(client):
                log.debug("query from non-loopback %s, refusing", client)
            self._reply(sock, decision, addr)
        elif isinstance(decision, Forward):
            self._forward(sock, data, decision, addr)
        else:
            log.debug("undecodable packet from %s (%d bytes), ignoring", client, len(data))

    def _forward(
        self, sock: socket.socket, data: bytes, forward: Forward, addr: tuple[str, int]
    ) -> None:
        q = forward.query
        mine = self._pending.get(addr, 0)  # addr: the client socket's address tuple
        if self.forwarder.in_flight >= self.max_pending or mine >= MAX_PENDING_PER_CLIENT:
            log.debug("too many forwards in flight (%s has %d), answering SERVFAIL", addr[0], mine)
            self._reply(sock, build_error(q, RCODE_SERVFAIL), addr)
            return
        self._pending[addr] = mine + 1
        self.forwarder.start(
            data, q.question, self._forwarded, (sock, forward, addr), upstreams=forward.upstreams
        )

    def _forwarded(
        self, context: tuple[socket.socket, Forward, tuple[str, int]], answer: bytes | None
    ) -> None:
        sock, forward, addr = context
        left = self._pending.pop(addr, 1) - 1
        if left > 0:
            self._pending[addr] = left
        self._reply(sock, relay(forward.query, answer), addr)
        watched = self._watch
        if watched is not None and forward.upstreams is None:
            watch, on_alarm = watched
            if watch.note(answer, time.monotonic(), len(forward.query.question)):
                loop = self.reactor.main_loop
                if loop is not None:
                    loop.call_soon_threadsafe(on_alarm, watch.reason)

    # -- TCP (on the asyncio loop) -----------------------------------------------------------

    async def _drain_tcp(self) -> None:
        """Answer what accepted TCP clients already sent, then close them (no longer accepting).

        A client this process accepted and did not answer would see its connection reset
        (closed with its query unread). Idle clients (waiting for their next query, nothing
        buffered: a loop turn of 10 ms lets anything that arrived wake them) are closed
        cleanly. Costs 10 ms at stop when no client is connected.
        """
        import asyncio

        deadline = asyncio.get_running_loop().time() + TCP_DRAIN_S
        while True:
            # At least one turn: a connection accepted just before the server closed has its
            # handler scheduled, not yet started.
            await asyncio.sleep(0.01)
            if not self._tcp_tasks - self._tcp_idle:
                break
            if asyncio.get_running_loop().time() > deadline:
                log.warning(
                    "closing %d tcp client(s) still waiting for an answer",
                    len(self._tcp_tasks - self._tcp_idle),
                )
                break
        for task in list(self._tcp_tasks):
            task.cancel()
        await asyncio.gather(*self._tcp_tasks, return_exceptions=True)

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import asyncio

        peer = writer.get_extra_info("peername")
        host = peer[0] if peer else ""
        if not is_loopback(host) or self._tcp_clients >= TCP_MAX_CLIENTS:
            log.debug("tcp client %s refused (non-loopback or too many clients)", host)
            writer.close()
            return
        self._tcp_clients += 1
        me = asyncio.current_task()
        assert me is not None
        self._tcp_tasks.add(me)
        try:
            while True:
                try:
                    self._tcp_idle.add(me)
                    try:
                        head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT_S)
                    finally:
                        self._tcp_idle.discard(me)
                    (length,) = struct.unpack("!H", head)
                    data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT_S)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                reply = await self._answer_tcp(data, host)
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except Exception:
            log.exception("internal error on a tcp client, closing it")
        finally:
            self._tcp_clients -= 1
            self._tcp_tasks.discard(me)
            writer.close()

    async def _answer_tcp(self, data: bytes, client: str) -> bytes | None:
        decision = self._answers.decide(data, time.time(), client, tcp=True)
        if not isinstance(decision, Forward):
            return decision
        q = decision.query
        try:
            answer = await self.forwarder.forward(
                data, q.question, upstreams=decision.upstreams, tcp=True
            )
        except Exception:
            log.exception("forwarding %s failed, answering SERVFAIL", q.name)
            answer = None
        return relay(q, answer)


def forward_limit() -> int:
    """How many UDP forwards may be in flight. Queries share the forwarder's sockets, but a
    socket taken out of use stays open until its last query is answered or expires, and
    systemd's default soft limit is 1024 descriptors: a burst to a dead domain must never take
    every descriptor, or saving the state ("Too many open files") or accepting a TCP client
    would fail. So stay within half of what is left after a reserve."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_PENDING_FORWARDS
    return max(MAX_PENDING_PER_CLIENT, min(MAX_PENDING_FORWARDS, (soft - FD_RESERVE) // 2))


def _sendto(sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
    try:
        sock.sendto(data, socket.MSG_DONTWAIT, addr)
    except OSError as exc:  # e.g. a full socket buffer under a flood: the client retries
        log.debug("reply to %s failed: %s, ignoring", addr[0], exc)
