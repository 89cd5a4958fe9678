"""The forwarder's UDP socket pool against a real loopback upstream made with dnspython.

What must hold: concurrent queries never share a socket (each has its own random port), a socket
is reused only after a matching answer, never after a timeout, and changes port after
SOCKET_MAX_USES queries; answers with a wrong ID or question are ignored; close() leaves no
socket open.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import dns.message
import dns.rrset
import pytest

from portal.core.model import Upstream
from portal.edges import upstream as up
from portal.edges.upstream import Forwarder

Reply = Callable[[dns.message.Message, int], list[bytes]]


class FakeUpstream:
    """Answers every query with 192.0.2.1 unless `reply` says otherwise; records source ports."""

    def __init__(self, reply: Reply | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.ports: list[int] = []
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
            for packet in self.reply(dns.message.from_wire(data), len(self.ports)):
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


def addrs(wire: bytes | None) -> list[str]:
    assert wire is not None
    msg = dns.message.from_wire(wire)
    return [r.address for rrset in msg.answer for r in rrset]


async def test_sequential_queries_reuse_a_socket_and_answers_keep_the_client_id(
    fake: Callable[..., FakeUpstream],
) -> None:
    f = fake()
    fwd = Forwarder([f.server])
    try:
        for i in range(5):
            data, question = query(f"n{i}.example")
            got = await fwd.forward(data, question)
            assert got is not None and got[:2] == data[:2]
            assert addrs(got) == ["192.0.2.1"]
        assert len(set(f.ports)) == 1  # one socket carried all five, one after the other
    finally:
        fwd.close()


async def test_concurrent_queries_never_share_a_port(fake: Callable[..., FakeUpstream]) -> None:
    f = fake()
    fwd = Forwarder([f.server])
    try:
        results = await asyncio.gather(*(fwd.forward(*query(f"c{i}.example")) for i in range(30)))
        assert all(r is not None for r in results)
        assert len(set(f.ports)) == 30
    finally:
        fwd.close()


async def test_port_changes_after_max_uses(
    fake: Callable[..., FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(up, "SOCKET_MAX_USES", 3)
    f = fake()
    fwd = Forwarder([f.server])
    try:
        for i in range(7):
            assert await fwd.forward(*query(f"u{i}.example")) is not None
        # 3 + 3 + 1 queries: three sockets, three ports, in that order
        assert len(set(f.ports[0:3])) == 1 and len(set(f.ports[3:6])) == 1
        assert len({f.ports[0], f.ports[3], f.ports[6]}) == 3
    finally:
        fwd.close()


async def test_port_changes_after_max_age(
    fake: Callable[..., FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    f = fake()
    fwd = Forwarder([f.server])
    try:
        assert await fwd.forward(*query("a.example")) is not None
        monkeypatch.setattr(up, "SOCKET_MAX_AGE_S", 0.0)
        assert await fwd.forward(*query("b.example")) is not None
        assert f.ports[0] != f.ports[1]
    finally:
        fwd.close()


async def test_a_timed_out_socket_is_never_reused(
    fake: Callable[..., FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first query gets no answer in time; its late answer must not answer the second."""
    monkeypatch.setattr(up, "UDP_TIMEOUT_S", 0.2)
    late: list[tuple[bytes, int]] = []

    def reply(q: dns.message.Message, n: int) -> list[bytes]:
        if n == 1:
            late.append((answer(q, "198.51.100.66"), 0))
            return []
        return [answer(q)]

    f = fake(reply)
    fwd = Forwarder([f.server])
    try:
        assert await fwd.forward(*query("slow.example")) is None
        # the late answer arrives now, at the first socket's port (closed: the kernel drops it)
        f.sock.sendto(late[0][0], ("127.0.0.1", f.ports[0]))
        got = await fwd.forward(*query("slow.example"))
        assert addrs(got) == ["192.0.2.1"]
        assert f.ports[1] != f.ports[0]
    finally:
        fwd.close()


async def test_mismatched_answers_are_ignored_and_the_socket_stays_usable(
    fake: Callable[..., FakeUpstream],
) -> None:
    def reply(q: dns.message.Message, n: int) -> list[bytes]:
        wrong_id = dns.message.from_wire(answer(q, "198.51.100.1"))
        wrong_id.id = (q.id + 1) % 65536
        other = dns.message.make_query("evil.example", "A")
        other.id = q.id
        return [wrong_id.to_wire(), answer(other, "198.51.100.2"), answer(q)]

    f = fake(reply)
    fwd = Forwarder([f.server])
    try:
        for name in ("m1.example", "m2.example"):
            assert addrs(await fwd.forward(*query(name))) == ["192.0.2.1"]
    finally:
        fwd.close()


async def test_close_leaves_no_socket_open(fake: Callable[..., FakeUpstream]) -> None:
    f = fake()
    fwd = Forwarder([f.server])
    await asyncio.gather(*(fwd.forward(*query(f"z{i}.example")) for i in range(10)))
    pool = fwd._pools[f.server]
    assert pool.open == 10
    fwd.close()
    assert pool.open == 0 and not pool.idle


async def test_dropping_an_upstream_closes_its_sockets(fake: Callable[..., FakeUpstream]) -> None:
    a, b = fake(), fake()
    fwd = Forwarder([a.server])
    try:
        assert await fwd.forward(*query("x.example")) is not None
        pool = fwd._pools[a.server]
        fwd.set_upstreams([b.server])
        assert pool.open == 0
        assert await fwd.forward(*query("y.example")) is not None
        assert b.ports and len(a.ports) == 1
    finally:
        fwd.close()
