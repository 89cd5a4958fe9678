"""Hostile input, property-based: the whole decision for one packet (portal.core.packet and
portal.core.answer, compressed questions included) never raises, never answers a response, never
amplifies a refusal, and agrees with dnspython on every valid query.

tests/core/test_packet.py covers the common shape on LDH names and random bytes; these go
further: names made of any bytes, every type, class, flag and EDNS shape, compressed questions
(read by following their pointers), and the replies checked with dnspython's own `is_response`.
"""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portal.core.answer import AnswerCache, Answers, Forward, LocalEntry, decide, refuse
from portal.core.packet import EDNS_PAYLOAD, MIN_UDP_PAYLOAD, Query, pack_addresses, parse_query

NOW = 1_800_000_000.0
OVERRIDE = "login.hotel.example"
V4, V6 = pack_addresses(("10.0.0.1", "10.0.0.2", "fd00::1"))
ENTRIES = {OVERRIDE: LocalEntry(V4, V6, NOW + 600)}
SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# labels of any bytes (odd ones are refused, whether the question is compressed or not)
any_label = st.binary(min_size=1, max_size=63)
ldh_label = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1,
                    max_size=63)  # fmt: skip
label = st.one_of(any_label, ldh_label.map(str.encode))
names = st.one_of(
    st.just(OVERRIDE.encode().split(b".")),
    st.just([b"LOGIN", b"Hotel", b"EXAMPLE"]),
    st.lists(label, min_size=0, max_size=8),
).filter(lambda labels: sum(len(x) + 1 for x in labels) + 1 <= 255)
rdtypes = st.one_of(
    st.sampled_from([1, 28, 5, 15, 16, 33, 64, 65, 255, 6, 12]), st.integers(1, 65535)
)
rdclasses = st.one_of(st.sampled_from([1, 3, 4, 254, 255]), st.integers(1, 65535))


@st.composite
def queries(draw: st.DrawFn) -> dns.message.Message:
    labels = draw(names)
    name = dns.name.Name([*labels, b""])
    q = dns.message.make_query(
        name, dns.rdatatype.RdataType(draw(rdtypes)), dns.rdataclass.RdataClass(draw(rdclasses))
    )
    q.id = draw(st.integers(0, 65535))
    # any flag a client may set in a query (QR and opcode stay those of a query)
    q.flags = draw(st.integers(0, 0xFFFF)) & 0x07FF & ~0x0080 | draw(st.sampled_from([0, 0x100]))
    edns = draw(st.sampled_from([-1, 0, 0, 1, 255]))
    if edns >= 0:
        options: list[dns.edns.Option] = []
        if draw(st.booleans()):
            options.append(
                dns.edns.GenericOption(
                    dns.edns.OptionType.COOKIE, draw(st.binary(min_size=8, max_size=40))
                )
            )
        q.use_edns(
            edns,
            dns.flags.DO if draw(st.booleans()) else 0,
            draw(st.integers(0, 65535)),
            options=options,
        )
    return q


def compress_question(wire: bytes) -> bytes | None:
    """Re-spell the question with its final root label as a pointer to offset 0 (which holds a
    zero byte when the ID is < 256): legal compression, read by following the pointer."""
    if wire[0] != 0:
        return None
    end = 12
    while wire[end] != 0:
        end += wire[end] + 1
    return wire[:end] + b"\xc0\x00" + wire[end + 1 :]


def full_decision(data: bytes) -> bytes | Query | None:
    """What the stub does with one datagram from a loopback client: reply bytes, a query to
    forward, or nothing (DnsStub._handle_udp asks exactly this)."""
    decision = Answers(ENTRIES).decide(data, NOW, "127.0.0.1")
    if isinstance(decision, Forward):
        return decision.query
    return decision


def check_reply(query: dns.message.Message, reply: bytes) -> dns.message.Message:
    msg = dns.message.from_wire(reply)
    assert query.is_response(msg), (query, msg)
    assert msg.flags & dns.flags.QR
    limit = max(MIN_UDP_PAYLOAD, min(query.payload, EDNS_PAYLOAD)) if query.edns >= 0 else 512
    assert len(reply) <= limit
    return msg


def labels_text(name: dns.name.Name) -> str:
    return ".".join(x.decode("ascii", "replace").lower() for x in name.labels[:-1])


@SETTINGS
@given(queries(), st.booleans())
def test_every_valid_query_is_answered_as_dnspython_expects(
    query: dns.message.Message, compress: bool
) -> None:
    wire = query.to_wire()
    if compress and query.edns < 0:  # compressed EDNS queries: test_compressed_answers_keep_edns
        wire = compress_question(wire) or wire
    result = full_decision(wire)
    q = query.question[0]
    ours = labels_text(q.name) == OVERRIDE
    if isinstance(result, Query):
        # forwarded: the stub read the same question dnspython reads, and never forwards ours
        assert not ours
        assert result.id == query.id and result.qtype == q.rdtype and result.qclass == q.rdclass
        assert dns.name.from_wire(result.question, 0)[0] == q.name
        return
    assert isinstance(result, bytes), "a valid query is never dropped"
    msg = check_reply(query, result)
    if msg.rcode() == dns.rcode.FORMERR:
        # only names the overrides can never hold (dots or odd bytes inside labels) are refused
        assert any(
            b"." in x or not x.isascii() or not x.decode().isprintable() for x in q.name.labels
        )
    elif query.edns > 0:
        assert msg.rcode() == dns.rcode.BADVERS  # RFC 6891 §6.1.3
    else:
        assert ours and msg.rcode() == dns.rcode.NOERROR and msg.flags & dns.flags.AA
        got = sorted(r.to_text() for rrset in msg.answer for r in rrset)
        if not msg.flags & dns.flags.TC:
            want = []
            if q.rdclass in (1, 255) and q.rdtype in (1, 255):
                want += ["10.0.0.1", "10.0.0.2"]
            if q.rdclass in (1, 255) and q.rdtype in (28, 255):
                want += ["fd00::1"]
            assert got == sorted(want)


@settings(max_examples=300, deadline=None)
@given(queries())
def test_compressed_answers_keep_edns(query: dns.message.Message) -> None:
    """RFC 6891 §6.1.1: an OPT record in a query means one in the answer."""
    query.id &= 0xFF
    if query.edns < 0:
        query.use_edns(0)
    wire = compress_question(query.to_wire())
    assert wire is not None
    result = full_decision(wire)
    if isinstance(result, bytes):
        msg = dns.message.from_wire(result)
        if msg.question:  # header-only FORMERR replies may omit it
            assert msg.edns >= 0
            assert (msg.rcode() == dns.rcode.BADVERS) == (query.edns > 0)


def test_compressed_path_is_no_more_lenient_than_the_plain_one() -> None:
    base = dns.message.make_query(OVERRIDE, "A").to_wire()
    with_answer_count = base[:6] + b"\x00\x05" + base[8:]  # ANCOUNT=5, no records follow
    trailing = base + b"\xde\xad\xbe\xef"
    for packet in (with_answer_count, trailing):
        result = full_decision(packet)
        assert isinstance(result, bytes) and result[3] & 0xF == dns.rcode.FORMERR, packet


@SETTINGS
@given(st.binary(max_size=700))
def test_arbitrary_bytes_through_both_paths(data: bytes) -> None:
    """Never raises; every reply is a DNS response to that packet's ID; responses (QR=1) and
    short packets are never answered."""
    result = full_decision(data)
    if len(data) < 12 or data[2] & 0x80:
        assert result is None
        return
    if isinstance(result, bytes):
        msg = dns.message.from_wire(result)
        assert msg.id == struct.unpack("!H", data[:2])[0] and msg.flags & dns.flags.QR
    parsed = parse_query(data)
    assert parsed is None or isinstance(parsed, int | Query)


@SETTINGS
@given(st.one_of(st.binary(max_size=700), queries().map(lambda m: m.to_wire())))
def test_refusals_never_amplify(data: bytes) -> None:
    """A refused (non-loopback) client gets at most as many bytes as it sent, and a
    response sent to the stub is never answered (no reflection loops)."""
    reply = refuse(data)
    if reply is None:
        return
    assert len(reply) <= len(data)
    assert not data[2] & 0x80
    assert dns.message.from_wire(reply).rcode() == dns.rcode.REFUSED


@SETTINGS
@given(queries(), st.integers(0, 15), st.booleans())
def test_other_opcodes_and_responses(query: dns.message.Message, opcode: int, qr: bool) -> None:
    wire = bytearray(query.to_wire())
    flags = struct.unpack_from("!H", wire, 2)[0] & ~0xF800 | (opcode << 11) | (0x8000 if qr else 0)
    struct.pack_into("!H", wire, 2, flags)
    result = full_decision(bytes(wire))
    if qr:
        assert result is None  # never answer a response
    elif opcode != 0:
        assert isinstance(result, bytes) and result[3] & 0xF == dns.rcode.NOTIMP


@st.composite
def packet_streams(draw: st.DrawFn) -> list[tuple[bytes, float]]:
    """Packets as a client sends them: a few distinct ones repeated with new IDs, some junk, at
    increasing times that cross the override's expiry."""
    base = draw(st.lists(st.one_of(queries().map(lambda m: m.to_wire()), st.binary(max_size=64)),
                         min_size=1, max_size=6))  # fmt: skip
    picks = draw(st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 65535),
                                    st.floats(0, 40)), min_size=1, max_size=30))  # fmt: skip
    now = NOW + 600 - 60  # the override in ENTRIES expires at NOW + 600
    out = []
    for index, qid, step in picks:
        now += step
        packet = base[index]
        out.append((struct.pack("!H", qid) + packet[2:] if len(packet) >= 2 else packet, now))
    return out


@SETTINGS
@given(packet_streams())
def test_answer_cache_returns_exactly_what_decide_does(stream: list[tuple[bytes, float]]) -> None:
    """The stub answers repeated queries from a cache of built answers: for any sequence of
    packets over time (expiry included), it must say exactly what the uncached path says."""
    cache = AnswerCache(limit=4)  # small, so that it also empties itself under the test
    for packet, now in stream:
        assert cache.decide(packet, ENTRIES, now) == decide(packet, ENTRIES, now)


@SETTINGS
@given(packet_streams(), st.sampled_from(["127.0.0.1", "127.8.0.3", "::1", "10.0.0.5"]))
def test_the_dns_threads_shortest_path_says_what_the_full_decision_says(
    stream: list[tuple[bytes, float]], client: str
) -> None:
    """The DNS thread first asks `Answers.cached` and sends what it gets: that must be None or
    exactly the full decision (the cache filled by earlier packets, expiry crossed), and only
    ever for a 127.* client (anyone else goes through the full path, which refuses strangers)."""
    answers = Answers(ENTRIES)
    for packet, now in stream:
        answers.decide(packet, now, "127.0.0.1")  # a local client's question fills the cache
        fast = answers.cached(packet, now, client)
        full = answers.decide(packet, now, client)
        assert fast is None or fast == full
        if not client.startswith("127."):
            assert fast is None
