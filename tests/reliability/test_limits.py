"""Resource limits of the real stub: idle and slow TCP clients are timed out, the cap on
concurrent TCP connections holds, and a burst from one UDP client cannot starve the others.

The stub's TCP idle timeout is 10 s (RFC 7766 §6.2.3); one test waits for it, with idle, slow
and excess connections all observed in the same window so the suite pays it once.
"""

from __future__ import annotations

import os
import resource
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import dns.message
import dns.query
import dns.rcode
import pytest

from portal.edges.dns_stub import TCP_IDLE_TIMEOUT_S, TCP_MAX_CLIENTS
from tests.support.daemon import Daemon
from tests.support.dbus import PrivateBus
from tests.support.dns import FakeUpstream, answer_a, fake_upstream, read_tcp_message, tcp_exchange

OVERRIDE = "login.hotel.example"


def local_query(qid: int) -> bytes:
    q = dns.message.make_query(OVERRIDE, "A")
    q.id = qid
    return q.to_wire()


def answered(d: Daemon, name: str, *, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, "A")
    if tcp:
        return dns.query.tcp(q, d.host, port=d.port, timeout=8)
    # like a real stub resolver: a datagram lost in a full socket buffer is asked again
    for attempt in range(5):
        try:
            return dns.query.udp(q, d.host, port=d.port, timeout=1.0)
        except dns.exception.Timeout:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def addresses(msg: dns.message.Message) -> list[str]:
    return [r.to_text() for rrset in msg.answer for r in rrset]


def test_idle_slow_and_excess_tcp_clients(daemon: Daemon) -> None:
    assert daemon.cli("add", OVERRIDE, "10.0.0.1").returncode == 0
    # 63 clients that ask once and then idle, and one that trickles a query a byte a second:
    # the stub holds exactly TCP_MAX_CLIENTS connections
    idle: list[socket.socket] = []
    try:
        for i in range(TCP_MAX_CLIENTS - 1):
            s = socket.create_connection(daemon.listen, timeout=5)
            idle.append(s)
            wire = local_query(i)
            s.sendall(struct.pack("!H", len(wire)) + wire)
            reply = read_tcp_message(s)
            assert reply is not None and reply[:2] == wire[:2]  # counted by the stub by now
        slow = socket.create_connection(daemon.listen, timeout=5)
        idle.append(slow)
        wire = local_query(999)
        framed = struct.pack("!H", len(wire)) + wire
        slow.sendall(framed[:3])
        sent_all = threading.Event()

        def trickle() -> None:
            # one byte a second: the whole query would take ~35 s, far past the idle timeout
            for b in framed[3:]:
                time.sleep(1.0)
                try:
                    slow.sendall(bytes([b]))
                except OSError:  # cut off by the stub
                    return
            sent_all.set()

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        # the 65th connection is closed at once, without an answer
        assert tcp_exchange(daemon.listen, local_query(1000), timeout_s=5) is None
        # UDP is not affected by the TCP cap
        assert addresses(answered(daemon, OVERRIDE)) == ["10.0.0.1"]
        # every idle client is closed by the stub within the timeout (plus scheduling slack)
        start = time.monotonic()
        for s in idle[:-1]:
            s.settimeout(TCP_IDLE_TIMEOUT_S * 3)
            assert s.recv(1) == b"", "an idle client was not timed out"
        waited = time.monotonic() - start
        # the trickling client got no answer and was cut off long before it finished
        slow.settimeout(TCP_IDLE_TIMEOUT_S * 3)
        assert read_tcp_message(slow) is None
        assert not sent_all.is_set()
        t.join(60)
        assert not sent_all.is_set()
        print(f"idle clients closed after {waited:.1f} s")
        # with the slots free again, a new TCP client is served
        reply = tcp_exchange(daemon.listen, local_query(1001))
        assert reply is not None and reply[:2] == b"\x03\xe9"
    finally:
        for s in idle:
            s.close()
    assert "internal error" not in daemon.log()


def test_burst_from_one_client_leaves_others_served(daemon: Daemon) -> None:
    """20 000 local queries as fast as one socket can send them; meanwhile another client asks
    for an override and a forwarded name, UDP and TCP, and is answered (retrying a lost datagram
    as every stub resolver does)."""
    assert daemon.cli("add", OVERRIDE, "10.0.0.1").returncode == 0
    stop = threading.Event()
    sent = 0

    def flood() -> None:
        nonlocal sent
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            wire = local_query(7)
            while not stop.is_set() and sent < 20_000:
                try:
                    s.sendto(wire, daemon.listen)
                    sent += 1
                except BlockingIOError:
                    time.sleep(0.001)

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        while sent < 2000:  # the flood is on before we ask
            time.sleep(0.01)
        for _ in range(5):
            assert addresses(answered(daemon, OVERRIDE)) == ["10.0.0.1"]
            assert addresses(answered(daemon, "upstream.test")) == ["192.0.2.10"]
            assert addresses(answered(daemon, OVERRIDE, tcp=True)) == ["10.0.0.1"]
    finally:
        stop.set()
        t.join(30)
    assert sent >= 2000
    assert "internal error" not in daemon.log()


@pytest.fixture
def split_upstream() -> Iterator[FakeUpstream]:
    """Answers every name at once, except names starting with 'slow': never."""

    def behaviour(query: bytes) -> list[tuple[float, bytes]]:
        name = dns.message.from_wire(query).question[0].name.to_text()
        return [] if name.startswith("slow") else [(0.0, answer_a(query))]

    with fake_upstream(behaviour) as up:
        yield up


def slow_query(i: int, *, compressed: bool) -> bytes:
    if compressed:  # root label as a pointer to offset 0: the reader follows it
        label = f"slow{i}".encode()
        wire = struct.pack("!HHHHHH", i & 0xFF, 0x0100, 1, 0, 0, 0)
        return wire + bytes([len(label)]) + label + b"\x07example\xc0\x00\x00\x01\x00\x01"
    return dns.message.make_query(f"slow{i}.example", "A").to_wire()


def flood_slow_names(d: Daemon, n: int, *, compressed: bool = False) -> int:
    """Up to n queries for distinct names the upstream never answers, from one client socket,
    paced so the kernel drops none, until the stub answers one SERVFAIL (its limit is reached).
    Returns how many were sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for i in range(n):
            s.sendto(slow_query(i, compressed=compressed), d.listen)
            if i % 20 == 19:
                time.sleep(0.002)
                try:
                    reply = s.recv(4096)
                except BlockingIOError:
                    continue
                if reply[3] & 0xF == dns.rcode.SERVFAIL:
                    return i + 1
    return n


def test_forwarding_burst_from_one_client_does_not_starve_others(
    bus: PrivateBus, make_daemon: Callable[..., Daemon], split_upstream: FakeUpstream
) -> None:
    """A burst from one socket to a dead domain once took all 1024 forwarding slots, and every
    other client's forwarded queries got SERVFAIL until the burst timed out: now each client
    socket has its share (MAX_PENDING_PER_CLIENT)."""
    d = make_daemon(bus.address, upstreams=[split_upstream.upstream])
    sent = flood_slow_names(d, 1500)
    print(f"SERVFAIL after {sent} queries from one socket")
    msg = answered(d, "fast.example")
    assert msg.rcode() == dns.rcode.NOERROR and addresses(msg) == ["192.0.2.53"]


def test_compressed_question_forwards_are_bounded_too(
    bus: PrivateBus, make_daemon: Callable[..., Daemon], split_upstream: FakeUpstream
) -> None:
    """Queries with a compressed question (once read by a slow path of their own) were once
    forwarded without any limit, one socket each: a burst could run the daemon out of file
    descriptors."""
    d = make_daemon(bus.address, upstreams=[split_upstream.upstream])
    assert d.proc is not None
    base = len(os.listdir(f"/proc/{d.proc.pid}/fd"))
    flood_slow_names(d, 1500, compressed=True)
    # each forward holds its socket until the upstream's 1.5 s timeout: sample the peak
    in_flight = 0
    for _ in range(20):
        in_flight = max(in_flight, len(os.listdir(f"/proc/{d.proc.pid}/fd")) - base)
        time.sleep(0.05)
    print(f"descriptors held by forwards after the burst: {in_flight}")
    assert in_flight <= 1024
    assert addresses(answered(d, "fast.example")) == ["192.0.2.53"]


def test_forwards_never_take_the_last_descriptors(
    bus: PrivateBus, make_daemon: Callable[..., Daemon], split_upstream: FakeUpstream
) -> None:
    """With the descriptor limit a systemd service gets by default (soft 1024), ten client
    sockets send 120 queries each to a domain whose upstream never answers. While they wait, a
    `portal add` must still be saved, and the daemon must stay below its limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # the daemon inherits it
    try:
        d = make_daemon(bus.address, upstreams=[split_upstream.upstream])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert d.proc is not None
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(10)]
    try:
        for k, s in enumerate(sockets):
            for i in range(120):
                s.sendto(dns.message.make_query(f"slow{k}-{i}.example", "A").to_wire(), d.listen)
        # within the upstream's 1.5 s wait: every forward still holds its socket
        time.sleep(0.3)
        held = len(os.listdir(f"/proc/{d.proc.pid}/fd"))
        out = d.cli("add", "during.example", "10.0.0.5")
    finally:
        for s in sockets:
            s.close()
    print(f"descriptors held during the burst: {held}")
    assert out.returncode == 0, out.stderr
    assert held < 1024 - 16
