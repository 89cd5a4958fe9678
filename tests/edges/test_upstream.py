"""The forwarder against real loopback upstreams made with dnspython.

What must hold: each answer reaches the query it answers, with the client's ID, also when many
queries share a socket; the queries in flight on one socket have distinct random IDs; a socket
changes port after SOCKET_MAX_USES queries or SOCKET_MAX_AGE_S seconds; answers with a wrong ID
or question, or arriving after their query expired, are ignored; a refusing, silent or failing
upstream passes the query to the next one, within the total bound; close() leaves no socket open.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable

import dns.message
import dns.rcode
import dns.rrset
import pytest

from portal.core.model import Upstream
from portal.edges import upstream as up
from portal.edges.reactor import ThreadReactor
from portal.edges.upstream import Forwarder

Reply = Callable[[dns.message.Message, int], list[bytes]]


class FakeUpstream:
    """Answers every query with 192.0.2.1 unless `reply` says otherwise; records source ports
    and IDs."""

    def __init__(self, reply: Reply | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.ports: list[int] = []
        self.ids: list[int] = []
        self.reply = reply or (lambda q, n: [answer(q)])

    @property
    def server(self) -> Upstream:
        return Upstream("127.0.0.1", self.sock.getsockname()[1])

    def readable(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except BlockingIOError:
                return
            self.ports.append(peer[1])
            q = dns.message.from_wire(data)
            self.ids.append(q.id)
            for packet in self.reply(q, len(self.ports)):
                self.sock.sendto(packet, peer)


def answer(q: dns.message.Message, addr: str = "192.0.2.1") -> bytes:
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", addr))
    return bytes(r.to_wire())


def query(name: str) -> tuple[bytes, bytes]:
    wire = dns.message.make_query(name, "A", use_edns=False).to_wire()
    return wire, wire[12:]


@pytest.fixture
async def fake() -> AsyncIterator[Callable[..., FakeUpstream]]:
    loop = asyncio.get_running_loop()
    made: list[FakeUpstream] = []

    def make(reply: Reply | None = None) -> FakeUpstream:
        f = FakeUpstream(reply)
        loop.add_reader(f.sock.fileno(), f.readable)
        made.append(f)
        return f

    yield make
    for f in made:
        loop.remove_reader(f.sock.fileno())
        f.sock.close()


@pytest.fixture
async def reactor() -> AsyncIterator[ThreadReactor]:
    """The DNS thread, as the daemon runs the forwarder."""
    r = ThreadReactor()
    r.start()
    yield r
    await asyncio.to_thread(r.stop)


async def thread_caught_up(reactor: ThreadReactor) -> None:
    """Return once the DNS thread has run what this thread handed it so far (in order)."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    reactor.call_soon_threadsafe(lambda: loop.call_soon_threadsafe(done.set))
    await asyncio.wait_for(done.wait(), 5)


def addrs(wire: bytes | None) -> list[str]:
    assert wire is not None
    msg = dns.message.from_wire(wire)
    return [r.address for rrset in msg.answer for r in rrset]


async def test_sequential_queries_keep_the_client_id(
    fake: Callable[..., FakeUpstream],
    reactor: ThreadReactor,
) -> None:
    f = fake()
    fwd = Forwarder(reactor, [f.server])
    try:
        for i in range(5):
            data, question = query(f"n{i}.example")
            got = await fwd.forward(data, question)
            assert got is not None and got[:2] == data[:2]
            assert addrs(got) == ["192.0.2.1"]
        assert fwd.in_flight == 0
    finally:
        await fwd.aclose()


async def test_concurrent_queries_share_few_sockets_and_each_gets_its_own_answer(
    fake: Callable[..., FakeUpstream],
    reactor: ThreadReactor,
) -> None:
    """200 queries at once, answered in reverse order: every answer still reaches its query
    (the address encodes the name), over at most POOL_SOCKETS random ports, with no (port, ID)
    pair used twice while in flight."""
    held: list[tuple[bytes, tuple[str, int]]] = []

    f = FakeUpstream()

    def readable() -> None:
        while True:
            try:
                data, peer = f.sock.recvfrom(4096)
            except BlockingIOError:
                break
            q = dns.message.from_wire(data)
            f.ports.append(peer[1])
            f.ids.append(q.id)
            i = int(q.question[0].name.labels[0][1:])
            held.append((answer(q, f"10.0.{i // 256}.{i % 256}"), peer))
        if len(held) == 200:
            for packet, peer in reversed(held):
                f.sock.sendto(packet, peer)

    loop = asyncio.get_running_loop()
    loop.add_reader(f.sock.fileno(), readable)
    fwd = Forwarder(reactor, [f.server])
    try:
        results = await asyncio.gather(*(fwd.forward(*query(f"c{i}.example")) for i in range(200)))
        for i, r in enumerate(results):
            assert addrs(r) == [f"10.0.{i // 256}.{i % 256}"]
        ports = set(f.ports)
        assert 1 < len(ports) <= up.POOL_SOCKETS
        assert len(set(zip(f.ports, f.ids, strict=True))) == 200
        assert fwd.in_flight == 0
    finally:
        loop.remove_reader(f.sock.fileno())
        f.sock.close()
        await fwd.aclose()


async def test_port_changes_after_max_uses(
    fake: Callable[..., FakeUpstream],
    monkeypatch: pytest.MonkeyPatch,
    reactor: ThreadReactor,
) -> None:
    monkeypatch.setattr(up, "POOL_SOCKETS", 1)
    monkeypatch.setattr(up, "SOCKET_MAX_USES", 3)
    f = fake()
    fwd = Forwarder(reactor, [f.server])
    try:
        for i in range(7):
            assert await fwd.forward(*query(f"u{i}.example")) is not None
        # 3 + 3 + 1 queries: three sockets, three ports, in that order
        assert len(set(f.ports[0:3])) == 1 and len(set(f.ports[3:6])) == 1
        assert len({f.ports[0], f.ports[3], f.ports[6]}) == 3
        assert fwd._pools[f.server].open == 1  # the used-up ones are closed
    finally:
        await fwd.aclose()


async def test_port_changes_after_max_age(
    fake: Callable[..., FakeUpstream],
    monkeypatch: pytest.MonkeyPatch,
    reactor: ThreadReactor,
) -> None:
    monkeypatch.setattr(up, "POOL_SOCKETS", 1)
    f = fake()
    fwd = Forwarder(reactor, [f.server])
    try:
        assert await fwd.forward(*query("a.example")) is not None
        assert await fwd.forward(*query("b.example")) is not None
        monkeypatch.setattr(up, "SOCKET_MAX_AGE_S", 0.0)
        assert await fwd.forward(*query("c.example")) is not None
        assert f.ports[0] == f.ports[1] != f.ports[2]
    finally:
        await fwd.aclose()


async def test_an_answer_after_its_query_expired_is_ignored(
    fake: Callable[..., FakeUpstream],
    monkeypatch: pytest.MonkeyPatch,
    reactor: ThreadReactor,
) -> None:
    """The first query gets no answer in time; its late answer, arriving on the same socket
    while the next query waits there, must not answer that one."""
    monkeypatch.setattr(up, "POOL_SOCKETS", 1)
    monkeypatch.setattr(up, "UDP_TIMEOUT_S", 0.2)
    late: list[bytes] = []

    def reply(q: dns.message.Message, n: int) -> list[bytes]:
        if n == 1:
            late.append(answer(q, "198.51.100.66"))
            return []
        # the late answer first, then the right one
        return [late[0], answer(q)]

    f = fake(reply)
    fwd = Forwarder(reactor, [f.server])
    try:
        t0 = time.monotonic()
        assert await fwd.forward(*query("slow.example")) is None
        assert 0.15 < time.monotonic() - t0 < 1.0
        got = await fwd.forward(*query("next.example"))
        assert addrs(got) == ["192.0.2.1"]
        assert f.ports[1] == f.ports[0]  # the same socket saw the late answer
    finally:
        await fwd.aclose()


async def test_mismatched_answers_are_ignored_and_the_socket_stays_usable(
    fake: Callable[..., FakeUpstream],
    reactor: ThreadReactor,
) -> None:
    def reply(q: dns.message.Message, n: int) -> list[bytes]:
        wrong_id = dns.message.from_wire(answer(q, "198.51.100.1"))
        wrong_id.id = (q.id + 1) % 65536
        other = dns.message.make_query("evil.example", "A")
        other.id = q.id
        return [wrong_id.to_wire(), answer(other, "198.51.100.2"), b"\x00" * 5, answer(q)]

    f = fake(reply)
    fwd = Forwarder(reactor, [f.server])
    try:
        for name in ("m1.example", "m2.example"):
            assert addrs(await fwd.forward(*query(name))) == ["192.0.2.1"]
    finally:
        await fwd.aclose()


async def test_a_refused_port_passes_the_query_on_at_once(
    fake: Callable[..., FakeUpstream],
    reactor: ThreadReactor,
) -> None:
    """ICMP port unreachable (nothing listens upstream) moves the query to the next upstream
    without waiting for the timeout."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    dead = Upstream("127.0.0.1", closed.getsockname()[1])
    closed.close()
    f = fake()
    fwd = Forwarder(reactor, [dead, f.server])
    try:
        t0 = time.monotonic()
        assert addrs(await fwd.forward(*query("r.example"))) == ["192.0.2.1"]
        assert time.monotonic() - t0 < up.UDP_TIMEOUT_S / 2
        assert fwd._pools[dead].open == 0  # the refused socket is closed
    finally:
        await fwd.aclose()


async def test_a_silent_upstream_passes_the_query_on_after_its_timeout(
    fake: Callable[..., FakeUpstream],
    monkeypatch: pytest.MonkeyPatch,
    reactor: ThreadReactor,
) -> None:
    monkeypatch.setattr(up, "UDP_TIMEOUT_S", 0.2)
    silent, good = fake(lambda q, n: []), fake()
    fwd = Forwarder(reactor, [silent.server, good.server])
    try:
        t0 = time.monotonic()
        assert addrs(await fwd.forward(*query("s.example"))) == ["192.0.2.1"]
        assert 0.15 < time.monotonic() - t0 < 1.0
        assert len(silent.ports) == 1 and len(good.ports) == 1
    finally:
        await fwd.aclose()


async def test_no_answer_at_all_ends_within_the_total_bound(
    fake: Callable[..., FakeUpstream],
    monkeypatch: pytest.MonkeyPatch,
    reactor: ThreadReactor,
) -> None:
    """Three silent upstreams, 0.2 s each, 0.5 s in all: the third gets what is left."""
    monkeypatch.setattr(up, "UDP_TIMEOUT_S", 0.2)
    monkeypatch.setattr(up, "TOTAL_TIMEOUT_S", 0.5)
    servers = [fake(lambda q, n: []) for _ in range(3)]
    fwd = Forwarder(reactor, [s.server for s in servers])
    try:
        t0 = time.monotonic()
        assert await fwd.forward(*query("t.example")) is None
        took = time.monotonic() - t0
        assert 0.45 < took < 0.5 + up.TIMER_SLACK_S + 0.2
        assert [len(s.ports) for s in servers] == [1, 1, 1]
        assert fwd.in_flight == 0 and fwd.failed == 1
    finally:
        await fwd.aclose()


async def test_servfail_tries_the_next_upstream_and_is_kept_as_the_last_word(
    fake: Callable[..., FakeUpstream],
    reactor: ThreadReactor,
) -> None:
    def servfail(q: dns.message.Message, n: int) -> list[bytes]:
        r = dns.message.make_response(q)
        r.set_rcode(dns.rcode.SERVFAIL)
        return [r.to_wire()]

    failing, good = fake(servfail), fake()
    fwd = Forwarder(reactor, [failing.server, good.server])
    try:
        assert addrs(await fwd.forward(*query("f.example"))) == ["192.0.2.1"]
        fwd.set_upstreams([failing.server])
        data, question = query("g.example")
        got = await fwd.forward(data, question)
        assert got is not None and got[:2] == data[:2]
        assert dns.message.from_wire(got).rcode() == dns.rcode.SERVFAIL
    finally:
        await fwd.aclose()


async def test_the_callback_api_calls_back_once_with_the_context(
    fake: Callable[..., FakeUpstream],
    reactor: ThreadReactor,
) -> None:
    f = fake()
    fwd = Forwarder(reactor, [f.server])
    got: list[tuple[object, bytes | None]] = []
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def callback(context: object, answer: bytes | None) -> None:
        got.append((context, answer))  # in the DNS thread, which owns the callback API
        loop.call_soon_threadsafe(done.set)

    async def in_thread(fn: Callable[[], object]) -> object:
        result: asyncio.Future[object] = loop.create_future()

        def run() -> None:
            value = fn()
            loop.call_soon_threadsafe(result.set_result, value)

        reactor.call_soon_threadsafe(run)
        return await asyncio.wait_for(result, 2)

    try:
        await in_thread(lambda: fwd.start(*query("cb.example"), callback, "ctx"))
        await asyncio.wait_for(done.wait(), 2)
        await asyncio.sleep(0.05)
        assert len(got) == 1 and got[0][0] == "ctx" and addrs(got[0][1]) == ["192.0.2.1"]

        def start_with_nowhere_to_send() -> object:
            fwd.start(*query("none.example"), callback, "empty", upstreams=())
            return got[-1]  # called back at once, within start()

        assert await in_thread(start_with_nowhere_to_send) == ("empty", None)
    finally:
        await fwd.aclose()


async def test_close_leaves_no_socket_open_and_answers_what_was_in_flight(
    fake: Callable[..., FakeUpstream],
    reactor: ThreadReactor,
) -> None:
    f = fake()
    silent = fake(lambda q, n: [])
    fwd = Forwarder(reactor, [f.server])
    await asyncio.gather(*(fwd.forward(*query(f"z{i}.example")) for i in range(40)))
    pool = fwd._pools[f.server]
    assert 1 <= pool.open <= up.POOL_SOCKETS
    waiting = asyncio.ensure_future(fwd.forward(*query("w.example"), upstreams=[silent.server]))
    await asyncio.sleep(0.05)
    await fwd.aclose()
    assert await asyncio.wait_for(waiting, 1) is None
    assert pool.open == 0 and fwd.in_flight == 0


async def test_dropping_an_upstream_closes_its_sockets(
    fake: Callable[..., FakeUpstream], reactor: ThreadReactor
) -> None:
    a, b = fake(), fake()
    fwd = Forwarder(reactor, [a.server])
    try:
        assert await fwd.forward(*query("x.example")) is not None
        pool = fwd._pools[a.server]
        fwd.set_upstreams([b.server])  # from this thread: handed to the DNS thread
        await thread_caught_up(reactor)
        assert pool.open == 0
        assert await fwd.forward(*query("y.example")) is not None
        assert b.ports and len(a.ports) == 1
    finally:
        await fwd.aclose()


def test_ids_and_picks_are_random_across_buffer_refills() -> None:
    """The buffered CSPRNG: 16-bit values over several 4 KiB refills, no repeats of a run."""
    r = up._Random()
    values = [r.u16() for _ in range(6000)]  # about three refills
    assert all(0 <= v < 65536 for v in values)
    assert len(set(values)) > 5500  # 6000 draws from 65536: ~270 repeats expected
    assert values[:100] != values[2048:2148]  # a refill reads new bytes
    assert {r.below(16) for _ in range(2000)} == set(range(16))
