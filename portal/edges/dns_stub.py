"""The local DNS stub: UDP and TCP sockets on loopback, bytes in, bytes out.

Reads datagrams straight from the socket (asyncio's datagram transport allocates a 256 KiB
buffer per read), asks portal.core.answer what to do, and replies or forwards. Never awaits D-Bus
or disk: the overrides arrive as a ready mapping through `set_entries()`. Loopback clients only.
Hostile input is logged at debug level and dropped or answered FORMERR; nothing here raises out
of a read callback.

In the daemon (`threaded=True`) the UDP side — the listening sockets, the forwarder's sockets and
its timer — runs in a thread of its own (portal.edges.reactor.ThreadReactor), which answers a
query straight from a blocking read; TCP clients stay on the asyncio loop. The two threads share
only what is swapped whole: the overrides with their answer cache (one tuple) and the portal
routes (one dict).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import resource
import socket
import struct
import time
from collections.abc import Iterable, Mapping
from typing import Any

from portal.core.answer import (
    AnswerCache,
    Forward,
    LocalEntry,
    Unparsed,
    decide,
    decide_query,
    refuse,
)
from portal.core.model import Upstream
from portal.core.packet import (
    RCODE_FORMERR,
    RCODE_SERVFAIL,
    Query,
    build_error,
    build_header_error,
    parse_query,
)
from portal.edges.reactor import ThreadReactor
from portal.edges.upstream import Forwarder

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


def is_loopback(host: str) -> bool:
    # the common cases without ipaddress, which costs more than answering the query
    if host.startswith("127.") or host == "::1":
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def parse_listen(text: str, default_port: int = 53) -> tuple[str, int]:
    """'127.0.0.153', '127.0.0.153:5353', '[::1]:53' → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host, port = text, default_port
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    return host, port


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
    def __init__(
        self, sockets: list[socket.socket], forwarder: Forwarder, *, threaded: bool = False
    ) -> None:
        self.sockets = sockets
        self.forwarder = forwarder
        self.threaded = threaded
        # the overrides and the answers built from them, swapped as one (another thread reads)
        self._table: tuple[Mapping[str, LocalEntry], AnswerCache] = ({}, AnswerCache())
        self.reactor: ThreadReactor | None = None
        self._waker: Any = None  # the reactor's wake-up datagrams come from this address
        self.portal_routes: dict[str, tuple[Upstream, ...]] = {}  # domain → venue DNS
        self._servers: list[asyncio.Server] = []
        self._tcp_clients = 0
        self._tcp_tasks: set[asyncio.Task[Any]] = set()  # one per connected client
        self._tcp_idle: set[asyncio.Task[Any]] = set()  # those waiting for their next query
        self._pending: dict[tuple[Any, ...], int] = {}  # client address → forwards in flight
        self.max_pending = forward_limit()
        self.answered_local = 0
        self.forwarded = 0
        self.dropped = 0

    @property
    def entries(self) -> Mapping[str, LocalEntry]:
        return self._table[0]

    def set_entries(self, entries: Mapping[str, LocalEntry]) -> None:
        # answers built from the old overrides go with them, in the same swap
        self._table = (entries, AnswerCache())

    def set_portal_routes(self, routes: Mapping[str, tuple[Upstream, ...]]) -> None:
        """While a portal is up, names under these domains go to the venue's DNS."""
        self.portal_routes = dict(routes)

    def addresses(self) -> list[str]:
        out = []
        for s in self.sockets:
            if s.type == socket.SOCK_DGRAM:
                host, port = s.getsockname()[:2]
                out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return out

    async def start(self, on_fatal: Any = None) -> None:
        """Serve. `on_fatal(exc)` is called on the loop if the UDP thread ever dies."""
        loop = asyncio.get_running_loop()
        udp = [s for s in self.sockets if s.type == socket.SOCK_DGRAM]
        for s in self.sockets:
            if s.type != socket.SOCK_DGRAM:
                s.setblocking(False)
                server = await asyncio.start_server(self._on_tcp, sock=s, limit=70000)
                self._servers.append(server)
        if not self.threaded or not udp:
            for s in udp:
                s.setblocking(False)
                loop.add_reader(s.fileno(), self._on_udp, s)
            return
        first = udp[0]
        r = ThreadReactor(loop, first.getsockname(), first.family)
        self.reactor, self._waker = r, r.waker_address
        for s in udp:
            # blocking, for the thread's plain recvfrom(); every other read says MSG_DONTWAIT
            s.setblocking(True)
            r.add_reader(s.fileno(), self._on_udp, s)
        if len(udp) == 1:
            r.solo = first
            r.on_solo = functools.partial(self._on_solo, first)
        forwarder = self.forwarder
        r.busy = lambda: forwarder.in_flight > 0
        r.on_fatal = on_fatal
        forwarder.reactor = r
        r.start()

    async def close(self) -> None:
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
        if self.reactor is not None:
            # forwards in flight get their SERVFAIL from the thread, then it stops
            self.reactor.call_soon_threadsafe(self.forwarder.close)
            await asyncio.to_thread(self.reactor.stop)
        else:
            for s in self.sockets:
                if s.type == socket.SOCK_DGRAM:
                    loop.remove_reader(s.fileno())
            self.forwarder.close()
        for s in self.sockets:
            s.close()

    # -- UDP ---------------------------------------------------------------------------------

    def _on_udp(self, sock: socket.socket) -> None:
        for _ in range(UDP_BATCH):
            try:
                data, addr = sock.recvfrom(65535, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("udp receive failed: %s, ignoring", exc)
                return
            self._on_datagram(sock, data, addr)

    def _on_solo(self, sock: socket.socket, data: bytes, addr: Any) -> None:
        """The thread's blocking read returned a datagram: answer it, then read what else has
        queued up without blocking (under load one wakeup serves many, as in _on_udp)."""
        self._on_datagram(sock, data, addr)
        self._on_udp(sock)

    def _on_datagram(self, sock: socket.socket, data: bytes, addr: Any) -> None:
        if addr == self._waker:
            return  # the UDP thread's wake-up: its reactor runs what it was woken for
        try:
            self._handle_udp(sock, data, addr)
        except Exception:  # the stub never dies of one packet
            log.exception("internal error on a packet from %s, ignoring", addr[0])

    def _handle_udp(self, sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
        if not is_loopback(addr[0]):
            self.dropped += 1
            log.debug("query from non-loopback %s, refusing", addr[0])
            reply = refuse(data)
            if reply is not None:
                _sendto(sock, reply, addr)
            return
        entries, cache = self._table
        decision = cache.decide(data, entries, time.time())
        if isinstance(decision, bytes):
            self.answered_local += 1
            _sendto(sock, decision, addr)
        elif isinstance(decision, Forward):
            self._forward_or_refuse(sock, data, decision.query, addr)
        elif isinstance(decision, Unparsed):
            slow = self._slow_path(data, decision.rcode)
            if isinstance(slow, bytes):
                _sendto(sock, slow, addr)
            elif isinstance(slow, Query):
                # the slow path's forwards count against the same limits as the fast path's
                self._forward_or_refuse(sock, data, slow, addr)
        else:
            self.dropped += 1
            log.debug("undecodable packet from %s (%d bytes), ignoring", addr[0], len(data))

    def _forward_or_refuse(
        self, sock: socket.socket, data: bytes, q: Query, addr: tuple[str, int]
    ) -> None:
        mine = self._pending.get(addr, 0)  # addr: the client socket's address tuple
        if self.forwarder.in_flight >= self.max_pending or mine >= MAX_PENDING_PER_CLIENT:
            log.debug("too many forwards in flight (%s has %d), answering SERVFAIL", addr[0], mine)
            _sendto(sock, build_error(q, RCODE_SERVFAIL), addr)
            return
        self._pending[addr] = mine + 1
        self.forwarded += 1
        self.forwarder.start(
            data, q.question, self._forwarded, (sock, q, addr), upstreams=self._route(q.name)
        )

    def _forwarded(
        self, context: tuple[socket.socket, Query, tuple[str, int]], answer: bytes | None
    ) -> None:
        sock, q, addr = context
        left = self._pending.pop(addr, 1) - 1
        if left > 0:
            self._pending[addr] = left
        if answer is None:
            answer = build_error(q, RCODE_SERVFAIL)
        elif len(answer) > q.udp_payload:
            # Never send more than the client can take: header + question, TC set (RFC 1035 §4.2.1)
            answer = _truncate(answer, q)
        _sendto(sock, answer, addr)

    async def _forward_tcp(self, data: bytes, q: Query) -> bytes:
        self.forwarded += 1
        upstreams = self._route(q.name)
        try:
            answer = await self.forwarder.forward(data, q.question, upstreams=upstreams, tcp=True)
        except Exception:
            log.exception("forwarding %s failed, answering SERVFAIL", q.name)
            answer = None
        return build_error(q, RCODE_SERVFAIL) if answer is None else answer

    def _route(self, name: str) -> tuple[Upstream, ...] | None:
        if not self.portal_routes:
            return None
        labels = name.split(".")
        for i in range(len(labels)):
            venue = self.portal_routes.get(".".join(labels[i:]))
            if venue:
                return venue
        return None

    def _slow_path(self, data: bytes, rcode: int) -> bytes | Query | None:
        """Queries the fast path will not read (compression in the question, odd records):
        let dnspython try; otherwise answer the fast path's rcode with the header only."""
        if rcode == RCODE_FORMERR:
            q = _parse_with_dnspython(data)
            if q is not None:
                decision = decide_query(q, self.entries, time.time())
                return decision if isinstance(decision, bytes) else decision.query
        return build_header_error(data, rcode)

    # -- TCP ---------------------------------------------------------------------------------

    async def _drain_tcp(self) -> None:
        """Answer what accepted TCP clients already sent, then close them (no longer accepting).

        A client this process accepted and did not answer would see its connection reset
        (closed with its query unread). Idle clients (waiting for their next query, nothing
        buffered: a loop turn of 10 ms lets anything that arrived wake them) are closed
        cleanly. Costs 10 ms at stop when no client is connected.
        """
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
                reply = await self._answer_tcp(data)
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

    async def _answer_tcp(self, data: bytes) -> bytes | None:
        decision = decide(data, self.entries, time.time(), tcp=True)
        if isinstance(decision, bytes):
            self.answered_local += 1
            return decision
        if isinstance(decision, Forward):
            return await self._forward_tcp(data, decision.query)
        if isinstance(decision, Unparsed):
            reply = self._slow_path(data, decision.rcode)
            if isinstance(reply, Query):
                return await self._forward_tcp(data, reply)
            return reply
        return None


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


def _truncate(answer: bytes, q: Query) -> bytes:
    header = struct.unpack_from("!HHHHHH", answer, 0)
    flags = header[1] | 0x0200
    return struct.pack("!HHHHHH", header[0], flags, 1, 0, 0, 0) + q.question


def _parse_with_dnspython(data: bytes) -> Query | None:
    import dns.exception
    import dns.message
    import dns.rdatatype

    try:
        # The whole message, not question_only: the OPT record decides the answer's EDNS
        # (RFC 6891 §6.1.1: an OPT in the query means one in the answer; §6.1.3: BADVERS), and
        # trailing bytes are refused as the fast path refuses them.
        msg = dns.message.from_wire(data)
    except (dns.exception.DNSException, ValueError, IndexError, struct.error):
        return None
    # Only what the fast path accepts, spelled differently (compression in the question): one
    # question, no answer, authority or other additional records.
    if (
        len(msg.question) != 1
        or msg.flags & 0x8000
        or msg.answer
        or msg.authority
        or msg.additional
        or msg.tsig is not None
    ):
        return None
    rrset = msg.question[0]
    name = rrset.name.to_text(omit_final_dot=True).lower()
    if name == "@":
        name = ""
    try:
        wire_name = rrset.name.to_wire()
        if wire_name is None:
            return None
        question = wire_name + struct.pack("!HH", rrset.rdtype, rrset.rdclass)
    except Exception:
        return None
    parsed = parse_query(data[:4] + struct.pack("!HHHH", 1, 0, 0, 0) + question)
    if not isinstance(parsed, Query):
        return None
    # keep the EDNS view of the original if it had an OPT record
    return Query(
        id=parsed.id,
        flags=parsed.flags,
        name=name,
        qtype=parsed.qtype,
        qclass=parsed.qclass,
        question=question,
        edns=msg.edns >= 0,
        edns_version=max(msg.edns, 0),
        edns_do=bool(msg.ednsflags & 0x8000),
        udp_payload=max(512, min(msg.payload or 512, 1232)),
    )
