"""Hostile DNS input against the REAL daemon, over UDP and TCP on loopback.

Each case sends bytes a broken or malicious client could send, checks the exact reply (or its
absence), and then checks that the stub still answers a normal query: one bad packet must never
cost anyone else an answer. The daemon is the real `portal daemon` on a private bus with a real
dnsmasq upstream (tests/conftest.py).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.daemon import Daemon, start_daemon
from tests.support.dbus import private_bus
from tests.support.dns import (
    UPSTREAM_RECORDS,
    Dnsmasq,
    dnsmasq,
    read_tcp_message,
    tcp_exchange,
    udp_exchange,
)
from tests.support.procs import need

OVERRIDE = "login.hotel.example"
QUESTION = b"\x05login\x05hotel\x07example\x00\x00\x01\x00\x01"


def header(flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", 0xBEEF, flags, qd, an, ns, ar)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Dnsmasq]:
    need("dnsmasq", "dbus-daemon")
    with dnsmasq(UPSTREAM_RECORDS) as up:
        yield up


@pytest.fixture(scope="module")
def d(upstream: Dnsmasq, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the whole module: every case is a few packets, and each ends by checking
    that the stub still serves."""
    with private_bus() as bus:
        daemon = start_daemon(
            bus.address, tmp_path_factory.mktemp("hostile"), upstreams=[upstream.upstream]
        )
        try:
            out = daemon.cli("add", OVERRIDE, "10.0.0.1", "fd00::1")
            assert out.returncode == 0, out.stderr
            yield daemon
        finally:
            daemon.stop()


def exchange(d: Daemon, data: bytes, transport: str, *, timeout_s: float = 3.0) -> bytes | None:
    if transport == "udp":
        got = udp_exchange(d.listen, data, timeout_s=timeout_s)
        return got[0] if got else None
    return tcp_exchange(d.listen, data, timeout_s=timeout_s)


def still_serving(d: Daemon) -> None:
    q = dns.message.make_query(OVERRIDE, "A")
    for reply in (
        dns.query.udp(q, d.host, port=d.port, timeout=5),
        dns.query.tcp(q, d.host, port=d.port, timeout=5),
    ):
        assert [r.to_text() for rrset in reply.answer for r in rrset] == ["10.0.0.1"]
    assert d.proc is not None and d.proc.poll() is None
    assert "internal error" not in d.log()


def assert_no_reply_udp(d: Daemon, packets: list[bytes]) -> None:
    """Send `packets`, then a normal query from the same socket: the stub handles datagrams in
    order, so the first reply must be the normal one (no waiting for silence)."""
    marker = dns.message.make_query(OVERRIDE, "A")
    marker.id = 0x1234
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        for p in packets:
            s.sendto(p, d.listen)
        s.sendto(marker.to_wire(), d.listen)
        first = s.recv(65535)
    assert first[:2] == b"\x12\x34", first


def rcode(reply: bytes | None) -> int:
    assert reply is not None and len(reply) >= 12
    assert reply[:2] == b"\xbe\xef" and reply[2] & 0x80  # our ID, QR set
    return reply[3] & 0xF


TRANSPORTS = ["udp", "tcp"]

FORMERR_CASES = {
    "pointer to itself": header() + b"\xc0\x0c\x00\x01\x00\x01",
    "two pointers in a loop": header() + b"\x01a\xc0\x0e\x00\x01\x00\x01" + b"\xc0\x0c",
    "pointer past the end": header() + b"\x01a\xc3\xff\x00\x01\x00\x01",
    "label runs past the end": header() + b"\x3fabc",
    "QDCOUNT 0": header(qd=0),
    "QDCOUNT 2": header(qd=2) + QUESTION * 2,
    "QDCOUNT 65535": header(qd=65535) + QUESTION,
    "question cut short": header() + QUESTION[:-3],
    "reserved label type 0x40": header() + b"\x41" + b"a" * 10 + b"\x00\x00\x01\x00\x01",
    "name of 256 octets": header()
    + b"".join(bytes([63]) + bytes([97 + i]) * 63 for i in range(3))
    + b"\x3e"
    + b"d" * 62
    + b"\x00\x00\x01\x00\x01",
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", list(FORMERR_CASES))
def test_malformed_questions_get_formerr(d: Daemon, case: str, transport: str) -> None:
    reply = exchange(d, FORMERR_CASES[case], transport)
    assert rcode(reply) == dns.rcode.FORMERR, case
    assert reply is not None and len(reply) <= 512
    still_serving(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opcode", [1, 2, 4, 5, 6, 15])
def test_other_opcodes_get_notimp(d: Daemon, opcode: int, transport: str) -> None:
    reply = exchange(d, header(flags=0x0100 | opcode << 11) + QUESTION, transport)
    assert rcode(reply) == dns.rcode.NOTIMP
    assert reply is not None and (reply[2] >> 3) & 0xF == opcode  # opcode echoed
    still_serving(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_responses_sent_to_the_stub_are_never_answered(d: Daemon, transport: str) -> None:
    """QR=1 packets (reflection, or a loop between two resolvers) get no reply at all."""
    for flags in (0x8000, 0x8180, 0x8183, 0x8000 | 5 << 11):
        response = header(flags=flags, an=1) + QUESTION + b"\xc0\x0c\x00\x01\x00\x01" + bytes(6)
        if transport == "udp":
            assert_no_reply_udp(d, [response])
        else:
            with socket.create_connection(d.listen, timeout=5) as s:
                s.sendall(struct.pack("!H", len(response)) + response)
                assert read_tcp_message(s) is None  # closed without a reply
    still_serving(d)


def test_short_packets_get_no_reply(d: Daemon) -> None:
    assert_no_reply_udp(d, [header()[:n] for n in range(12)])
    still_serving(d)


def test_truncated_and_lying_tcp_frames(d: Daemon) -> None:
    # length prefix says 300, 20 bytes come, the client hangs up: the stub just closes
    with socket.create_connection(d.listen, timeout=5) as s:
        s.sendall(struct.pack("!H", 300) + header() + QUESTION[:8])
    # a zero-length frame: nothing to parse, no reply, connection closed
    with socket.create_connection(d.listen, timeout=5) as s:
        s.sendall(b"\x00\x00")
        assert read_tcp_message(s) is None
    # a single byte of length, then the client hangs up
    with socket.create_connection(d.listen, timeout=5) as s:
        s.sendall(b"\x01")
    still_serving(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_oversized_packets(d: Daemon, transport: str) -> None:
    """The largest datagram and TCP frame there are: a valid question drowned in trailing
    junk, and pure junk. Any reply is a short, well-formed error; the stub keeps serving."""
    size = 65507 if transport == "udp" else 65535
    query = dns.message.make_query(OVERRIDE, "A")
    query.id = 0xBEEF
    wire = query.to_wire()
    for packet in (wire + b"\xff" * (size - len(wire)), header() + b"\x3f" * (size - 12)):
        reply = exchange(d, packet, transport)
        if reply is not None:
            msg = dns.message.from_wire(reply)
            assert msg.id == 0xBEEF and msg.flags & dns.flags.QR and len(reply) <= 512
    still_serving(d)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_classes_other_than_in(d: Daemon, upstream: Dnsmasq, transport: str) -> None:
    ch = dns.message.make_query(OVERRIDE, "TXT", "CH")
    any_class = dns.message.make_query(OVERRIDE, "A", "ANY")
    for q, want in ((ch, []), (any_class, ["10.0.0.1"])):
        raw = exchange(d, q.to_wire(), transport)
        assert raw is not None
        msg = dns.message.from_wire(raw)
        assert q.is_response(msg) and msg.rcode() == dns.rcode.NOERROR
        assert msg.flags & dns.flags.AA
        assert [r.to_text() for rrset in msg.answer for r in rrset] == want
    # another name in class CH is forwarded like any other query, answered with our ID
    other = dns.message.make_query("version.bind", "TXT", "CH")
    raw = exchange(d, other.to_wire(), transport)
    assert raw is not None and other.is_response(dns.message.from_wire(raw))
    assert OVERRIDE not in upstream.log.read_text()  # never leaks, whatever the class


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", [OVERRIDE, "badvers-{}.upstream.test"])
def test_edns_version_1_gets_badvers(
    d: Daemon, upstream: Dnsmasq, name: str, transport: str
) -> None:
    name = name.format(transport)
    q = dns.message.make_query(name, "A", use_edns=1)
    raw = exchange(d, q.to_wire(), transport)
    assert raw is not None
    msg = dns.message.from_wire(raw)
    assert q.is_response(msg) and msg.rcode() == dns.rcode.BADVERS and msg.edns == 0
    assert not msg.answer
    assert "badvers" not in upstream.log.read_text()  # refused before forwarding


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_do_bit_is_echoed_on_local_answers(d: Daemon, transport: str) -> None:
    q = dns.message.make_query(OVERRIDE, "A", want_dnssec=True)
    raw = exchange(d, q.to_wire(), transport)
    assert raw is not None
    msg = dns.message.from_wire(raw)
    assert msg.ednsflags & dns.flags.DO  # RFC 3225 §3: the DO bit is copied into the answer
    assert [r.to_text() for rrset in msg.answer for r in rrset] == ["10.0.0.1"]
    forwarded = dns.message.make_query("upstream.test", "A", want_dnssec=True)
    raw = exchange(d, forwarded.to_wire(), transport)
    assert raw is not None and forwarded.is_response(dns.message.from_wire(raw))


def test_names_at_the_255_octet_limit(d: Daemon) -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 255 octets on the wire
    assert len(name) == 253
    assert d.cli("add", name, "10.0.0.9").returncode == 0
    # the name with a 256th octet is refused on the wire: FORMERR_CASES
    q = dns.message.make_query(name, "A", use_edns=0)
    for reply in (
        dns.query.udp(q, d.host, port=d.port, timeout=5),
        dns.query.tcp(q, d.host, port=d.port, timeout=5),
    ):
        assert [r.to_text() for rrset in reply.answer for r in rrset] == ["10.0.0.9"]
    aaaa = dns.message.make_query(name, "AAAA", use_edns=0)
    assert dns.query.udp(aaaa, d.host, port=d.port, timeout=5).rcode() == dns.rcode.NOERROR
    out = d.cli("add", name + "x", "10.0.0.9")
    assert out.returncode == 2 and "longer than 253" in out.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_legal_compression_in_the_question_is_followed(d: Daemon, transport: str) -> None:
    """A question whose root label is a pointer to offset 0 (the zero high byte of the ID):
    legal, read by following the pointer, and answered from the override."""
    query = struct.pack("!HHHHHH", 0x0042, 0x0100, 1, 0, 0, 0)
    query += b"\x05LOGIN\x05hotel\x07example\xc0\x00\x00\x01\x00\x01"
    raw = exchange(d, query, transport)
    assert raw is not None
    msg = dns.message.from_wire(raw)
    assert msg.id == 0x42 and msg.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for rrset in msg.answer for r in rrset] == ["10.0.0.1"]
