"""The DNS stub over real sockets: dig, kdig and dnspython as clients, a real dnsmasq upstream.

Runs the real daemon (tests/support/daemon.py) on a private bus and a random loopback port.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections.abc import Callable

import dns.asyncquery
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from portal.core.answer import LocalEntry
from portal.core.packet import pack_addresses
from portal.edges import dns_stub, udp_batch
from portal.edges.dns_stub import DnsStub
from portal.edges.reactor import ThreadReactor
from portal.edges.upstream import POOL_SOCKETS, Forwarder
from tests.support.daemon import Daemon
from tests.support.dbus import PrivateBus
from tests.support.dns import Dnsmasq, dig, dnsmasq
from tests.support.procs import free_port, need


def add(d: Daemon, *args: str) -> None:
    out = d.cli("add", *args)
    assert out.returncode == 0, out.stderr


def query(
    d: Daemon, name: str, rdtype: str = "A", *, tcp: bool = False, use_edns: int = -1
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=use_edns)
    if tcp:
        return dns.query.tcp(q, d.host, port=d.port, timeout=8)
    return dns.query.udp(q, d.host, port=d.port, timeout=8)


def addrs(msg: dns.message.Message) -> list[str]:
    return sorted(r.to_text() for rrset in msg.answer for r in rrset)


def test_override_answered_by_dig_over_udp_and_tcp(daemon: Daemon) -> None:
    need("dig")
    add(daemon, "login.hotel.example", "10.0.0.1", "fd00::1")
    assert dig("+short", "login.hotel.example", port=daemon.port).split() == ["10.0.0.1"]
    assert dig("+short", "+tcp", "login.hotel.example", "AAAA", port=daemon.port).split() == [
        "fd00::1"
    ]
    full = dig("login.hotel.example", "HTTPS", port=daemon.port)
    assert "status: NOERROR" in full and "ANSWER: 0" in full and " aa " in full.split("flags:")[1]


def test_override_answered_by_kdig(daemon: Daemon) -> None:
    need("kdig")
    add(daemon, "Login.Hotel.Example.", "10.0.0.1")
    import subprocess

    out = subprocess.run(
        ["kdig", f"@{daemon.host}", "-p", str(daemon.port), "+short", "LOGIN.hotel.example", "A"],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert out.stdout.split() == ["10.0.0.1"], out
    out = subprocess.run(
        ["kdig", f"@{daemon.host}", "-p", str(daemon.port), "+tcp", "login.hotel.example", "MX"],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert "NOERROR" in out.stdout and "ANSWER: 0" in out.stdout.replace(";; ANSWER SECTION", "")


def test_nodata_for_the_missing_family_and_other_types(daemon: Daemon) -> None:
    add(daemon, "v4only.example", "10.0.0.7")
    for rdtype in ("AAAA", "HTTPS", "SVCB", "MX", "TXT", "SOA"):
        msg = query(daemon, "v4only.example", rdtype)
        assert msg.rcode() == dns.rcode.NOERROR and not msg.answer, rdtype
        assert msg.flags & dns.flags.AA
    assert addrs(query(daemon, "v4only.example", "ANY")) == ["10.0.0.7"]


def test_ttl_and_edns(daemon: Daemon) -> None:
    add(daemon, "short.example", "10.0.0.8", "--ttl", "10s")
    msg = query(daemon, "short.example", use_edns=0)
    assert msg.edns == 0 and msg.answer[0].ttl <= 10
    plain = query(daemon, "short.example")
    assert plain.edns == -1


def test_other_names_are_forwarded_to_dnsmasq(daemon: Daemon, upstream: Dnsmasq) -> None:
    msg = query(daemon, "upstream.test")
    assert addrs(msg) == ["192.0.2.10"]
    assert addrs(query(daemon, "www.example.test", tcp=True)) == ["192.0.2.20"]
    assert "upstream.test" in upstream.log.read_text()


def test_overridden_names_never_reach_the_upstream(daemon: Daemon, upstream: Dnsmasq) -> None:
    add(daemon, "secret.example", "10.0.0.9")
    for rdtype in ("A", "AAAA", "HTTPS", "TXT"):
        query(daemon, "secret.example", rdtype)
    query(daemon, "upstream.test")  # flush marker: this one does go upstream
    log = upstream.log.read_text()
    assert "upstream.test" in log and "secret.example" not in log


def test_forwarding_uses_random_ports_and_ids(
    bus: PrivateBus, make_daemon: Callable[..., Daemon]
) -> None:
    """A fake upstream records what the stub sends: source ports and IDs vary per query."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    d = make_daemon(bus.address, upstreams=[f"127.0.0.1:{sock.getsockname()[1]}"])
    seen: list[tuple[int, int]] = []

    async def clients() -> None:
        async def one(i: int) -> None:
            q = dns.message.make_query(f"n{i}.example", "A")
            q.id = 7  # every client uses the same ID: the stub must not
            try:
                await dns.asyncquery.udp(q, d.host, port=d.port, timeout=3)
            except dns.exception.Timeout:
                pass

        await asyncio.gather(*(one(i) for i in range(20)))

    import threading

    import dns.exception

    t = threading.Thread(target=lambda: asyncio.run(clients()))
    t.start()
    try:
        for _ in range(20):
            data, (_, port) = sock.recvfrom(4096)
            seen.append((port, struct.unpack("!H", data[:2])[0]))
            reply = dns.message.make_response(dns.message.from_wire(data))
            sock.sendto(reply.to_wire(), ("127.0.0.1", port))
    finally:
        t.join(10)
        sock.close()
    ports = {p for p, _ in seen}
    ids = {i for _, i in seen}
    # 20 queries over a pool of random sockets: several ports, never one; random IDs (two of
    # 20 random 16-bit IDs collide once in 300 runs: allow one), unique per socket
    assert 4 <= len(ports) <= POOL_SOCKETS and len(ids) >= 19, seen
    assert len(set(seen)) == 20, seen


def test_spoofed_and_mismatched_answers_are_ignored(
    bus: PrivateBus, make_daemon: Callable[..., Daemon]
) -> None:
    """An upstream that first answers with a wrong ID and a wrong question, then right."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    d = make_daemon(bus.address, upstreams=[f"127.0.0.1:{sock.getsockname()[1]}"])
    result: list[dns.message.Message] = []
    import threading

    t = threading.Thread(target=lambda: result.append(query(d, "real.example")))
    t.start()
    try:
        data, peer = sock.recvfrom(4096)
        q = dns.message.from_wire(data)
        bad_id = dns.message.make_response(q)
        bad_id.id = (q.id + 1) % 65536
        bad_id.answer.append(dns.rrset.from_text("real.example.", 60, "IN", "A", "6.6.6.6"))
        sock.sendto(bad_id.to_wire(), peer)
        other = dns.message.make_response(dns.message.make_query("evil.example", "A"))
        other.id = q.id
        other.answer.append(dns.rrset.from_text("evil.example.", 60, "IN", "A", "6.6.6.6"))
        sock.sendto(other.to_wire(), peer)
        good = dns.message.make_response(q)
        good.answer.append(dns.rrset.from_text("real.example.", 60, "IN", "A", "192.0.2.99"))
        sock.sendto(good.to_wire(), peer)
    finally:
        t.join(10)
        sock.close()
    assert addrs(result[0]) == ["192.0.2.99"]


def test_truncated_udp_answer_is_retried_over_tcp(
    bus: PrivateBus, make_daemon: Callable[..., Daemon]
) -> None:
    need("dnsmasq")
    big = "x" * 200
    with dnsmasq({}, txt={"big.test": ",".join([big] * 4)}, extra=["--edns-packet-max=512"]) as up:
        d = make_daemon(bus.address, upstreams=[up.upstream])
        msg = query(d, "big.test", "TXT", use_edns=0)  # the client can take 1232 bytes
        assert not msg.flags & dns.flags.TC
        assert sum(len(s) for r in msg.answer[0] for s in r.strings) == 800
        small = query(d, "big.test", "TXT")  # a 512-byte client gets TC and retries over TCP
        assert small.flags & dns.flags.TC
        assert query(d, "big.test", "TXT", tcp=True).answer


def test_dead_upstream_gives_servfail_in_bounded_time(
    bus: PrivateBus, make_daemon: Callable[..., Daemon]
) -> None:
    blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    blackhole.bind(("127.0.0.1", 0))
    refused = free_port()  # nothing listens: ICMP port unreachable
    try:
        d = make_daemon(
            bus.address,
            upstreams=[f"127.0.0.1:{refused}", f"127.0.0.1:{blackhole.getsockname()[1]}"],
        )
        add(d, "still.example", "10.0.0.1")
        start = time.monotonic()
        msg = query(d, "nowhere.example")
        took = time.monotonic() - start
        assert msg.rcode() == dns.rcode.SERVFAIL
        assert took < 7.0  # the forward is bounded (4 s), well before a client gives up
        assert addrs(query(d, "still.example")) == ["10.0.0.1"]  # overrides stay instant
    finally:
        blackhole.close()


def test_no_upstream_at_all_gives_servfail(
    bus: PrivateBus, make_daemon: Callable[..., Daemon], tmp_path
) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "resolv.conf"
    empty.write_text("# nothing\n")
    conf = tmp_path / "c.toml"
    conf.write_text(f'resolv_conf = "{empty}"\n')
    d = make_daemon(bus.address, extra_args=["--config", str(conf)])
    assert query(d, "any.example").rcode() == dns.rcode.SERVFAIL


def test_garbage_does_not_stop_answers(daemon: Daemon) -> None:
    add(daemon, "alive.example", "10.0.0.1")
    rng = random.Random(1234)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(500):
            s.sendto(bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300))), daemon.listen)
        s.sendto(b"\xab\xcd\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00", daemon.listen)
        s.settimeout(5)
        reply, _ = s.recvfrom(4096)  # FORMERR for qdcount=2 (earlier random ones may answer too)
    # a TCP client that sends garbage lengths and hangs up
    with socket.create_connection(daemon.listen, timeout=5) as t:
        t.sendall(b"\x00\x05abc")
    # like every real client, retry a datagram lost while the socket buffer was full
    assert dig("+short", "+tries=3", "+time=2", "alive.example", port=daemon.port).split() == [
        "10.0.0.1"
    ]
    assert addrs(query(daemon, "alive.example", tcp=True)) == ["10.0.0.1"]
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_formerr_and_notimp_answers(daemon: Daemon) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(b"\xab\xcd\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00", daemon.listen)
        reply, _ = s.recvfrom(4096)
        assert reply[:2] == b"\xab\xcd" and reply[3] & 0xF == 1  # FORMERR
        update = dns.message.make_query("a.example", "SOA")
        update.set_opcode(5)
        s.sendto(update.to_wire(), daemon.listen)
        reply, _ = s.recvfrom(4096)
        assert dns.message.from_wire(reply).rcode() == dns.rcode.NOTIMP


def test_an_edns_padded_upper_case_query_is_answered(daemon: Daemon) -> None:
    add(daemon, "login.hotel.example", "10.0.0.1")
    # An OPT record with an option (padding, RFC 7830) and 0x20-style case: still the override.
    # Compressed questions are tested in tests/reliability/test_hostile_daemon.py.
    q = dns.message.make_query("LOGIN.hotel.example", "A", use_edns=0, pad=64)
    msg = dns.query.udp(q, daemon.host, port=daemon.port, timeout=5)
    assert addrs(msg) == ["10.0.0.1"]


@pytest.mark.parametrize("batching", ["native", "python"])
async def test_a_cached_answer_never_reaches_python_and_a_new_table_is_read_at_once(
    monkeypatch: pytest.MonkeyPatch, batching: str
) -> None:
    """The DNS thread answers a repeated query from the answer cache (in C where
    portal._udpbatch is built, without the stub's Python; after a blocking recvfrom()
    otherwise), and reads the overrides the daemon swaps in from the next query on: a removed
    override is never answered from the old cache, a changed one gets its new address."""
    if batching == "native" and not udp_batch.NATIVE:
        pytest.skip("portal._udpbatch is not built here: only the fallback runs")
    if batching == "python":
        monkeypatch.setattr(udp_batch, "NATIVE", False)
    loop = asyncio.get_running_loop()
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(5)
    stub = DnsStub([server], Forwarder(ThreadReactor()))  # no upstream: forwards get SERVFAIL
    handled: list[bytes] = []
    python_path = stub._on_datagram  # noqa: SLF001

    def counted(sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
        handled.append(data)
        python_path(sock, data, addr)

    monkeypatch.setattr(stub, "_on_datagram", counted)

    def entries(address: str) -> dict[str, LocalEntry]:
        v4, v6 = pack_addresses((address,))
        return {"a.example": LocalEntry(v4, v6, None)}

    async def ask() -> dns.message.Message:
        q = dns.message.make_query("a.example", "A", use_edns=False)
        client.sendto(q.to_wire(), server.getsockname())
        reply = await loop.run_in_executor(None, client.recv, 4096)
        return dns.message.from_wire(reply)

    stub.set_entries(entries("10.0.0.1"))
    stub.serve_udp()
    try:
        assert addrs(await ask()) == ["10.0.0.1"]
        assert len(handled) == 1  # built in Python, then kept
        for _ in range(3):
            assert addrs(await ask()) == ["10.0.0.1"]
        # In C a cached answer never reaches Python. The fallback reads what queued behind an
        # answer through the general path (which answers from the cache too), and a client as
        # quick as this one may be there already: only its answers are checked.
        if batching == "native":
            assert len(handled) == 1, "a cached answer went through the stub's Python"
        handled.clear()
        stub.set_entries({})  # removed: no wake-up of the thread, the next query reads it
        removed = await ask()
        assert removed.rcode() == dns.rcode.SERVFAIL and not removed.answer
        stub.set_entries(entries("10.0.0.2"))
        assert [addrs(await ask()) for _ in range(2)] == [["10.0.0.2"], ["10.0.0.2"]]
        if batching == "native":
            assert len(handled) == 2  # the removed name and the changed one, once each
    finally:
        await asyncio.to_thread(stub.reactor.stop)
        server.close()
        client.close()


async def test_non_loopback_clients_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stub refuses non-loopback sources even if bound wider by mistake."""
    loop = asyncio.get_running_loop()
    sent: list[tuple[bytes, tuple[str, int]]] = []
    real_sendto = dns_stub._sendto  # noqa: SLF001

    def recording_sendto(sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
        sent.append((data, addr))
        real_sendto(sock, data, addr)

    monkeypatch.setattr(dns_stub, "_sendto", recording_sendto)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    reactor = ThreadReactor()  # not started: the handler is called here, as the thread would
    stub = DnsStub([server], Forwarder(reactor))
    v4, v6 = pack_addresses(("10.0.0.1",))
    stub.set_entries({"a.example": LocalEntry(v4, v6, None)})
    try:
        wire = dns.message.make_query("a.example", "A").to_wire()
        # the same code path as a datagram from 192.0.2.1, with the reply sent to our client
        stub._handle_udp(server, wire, ("192.0.2.1", client.getsockname()[1]))  # noqa: SLF001
        stub._flush()  # noqa: SLF001  (the end of the thread's round)
        # refused, header and question only: no local answer reaches a non-loopback client
        [(refused, to)] = sent
        assert to[0] == "192.0.2.1"
        msg = dns.message.from_wire(refused)
        assert msg.rcode() == dns.rcode.REFUSED and not msg.answer
        stub._handle_udp(server, wire, client.getsockname())  # noqa: SLF001
        stub._flush()  # noqa: SLF001
        client.settimeout(2)
        reply = await loop.run_in_executor(None, client.recv, 4096)
        assert addrs(dns.message.from_wire(reply)) == ["10.0.0.1"]
    finally:
        reactor.stop()
        server.close()
        client.close()


@pytest.mark.parametrize("batching", ["native", "python"])
def test_many_concurrent_queries(
    bus: PrivateBus, upstream: Dnsmasq, make_daemon: Callable[..., Daemon], batching: str
) -> None:
    """A burst of local answers and forwards, read and answered in batches: with the C
    extension (recvmmsg/sendmmsg) where it is built, and with the pure-Python fallback."""
    if batching == "native" and not udp_batch.NATIVE:
        pytest.skip("portal._udpbatch is not built here: only the fallback runs")
    env = {"PORTAL_NO_UDPBATCH": "1"} if batching == "python" else {}
    daemon = make_daemon(bus.address, upstreams=[upstream.upstream], env=env)
    n = 200
    add(daemon, "busy.example", "10.0.0.1")

    async def burst() -> list[dns.message.Message]:
        qs = [
            dns.message.make_query("busy.example" if i % 2 else "upstream.test", "A")
            for i in range(n)
        ]
        return await asyncio.gather(
            *(dns.asyncquery.udp(q, daemon.host, port=daemon.port, timeout=8) for q in qs)
        )

    replies = asyncio.run(burst())
    assert all(r.rcode() == dns.rcode.NOERROR and r.answer for r in replies)


def test_a_big_local_answer_is_whole_over_tcp(daemon: Daemon) -> None:
    """16 AAAA records for a long name exceed 512 bytes: UDP truncates (TC), TCP never does."""
    name = ".".join(["abcdefghijklmnopqrstuvwxyz0123456789"] * 6)
    addrs = [f"2001:db8::{i:x}" for i in range(1, 17)]
    add(daemon, name, *addrs)
    udp = query(daemon, name, "AAAA")
    assert udp.flags & dns.flags.TC
    tcp = query(daemon, name, "AAAA", tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert sorted(addrs_of(tcp)) == sorted(addrs)


def addrs_of(msg: dns.message.Message) -> list[str]:
    return [r.to_text() for rrset in msg.answer for r in rrset]
