"""The DNS packet code (portal/core/packet.py), checked against dnspython's own parser and
builder."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portal.core.answer import Forward, LocalEntry, decide, refuse
from portal.core.packet import (
    RCODE_FORMERR,
    RCODE_NOTIMP,
    RCODE_SERVFAIL,
    Query,
    build_error,
    build_header_error,
    build_records,
    pack_addresses,
    parse_query,
    response_matches,
    with_id,
)

NOW = 1_800_000_000.0
label = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-_", min_size=1, max_size=20
).filter(lambda s: not s.startswith("-"))
names = st.lists(label, min_size=1, max_size=5).map(".".join)
rdtypes = st.sampled_from([1, 28, 5, 15, 16, 33, 64, 65, 255, 12, 6])


def make(
    name: str,
    rdtype: int = 1,
    *,
    edns: int = -1,
    do: bool = False,
    payload: int = 1232,
    rdclass: int = 1,
    qid: int = 4660,
    rd: bool = True,
) -> bytes:
    q = dns.message.make_query(
        name, rdtype, rdclass, use_edns=edns, payload=payload, want_dnssec=do
    )
    q.id = qid
    if not rd:
        q.flags &= ~dns.flags.RD
    return q.to_wire()


@settings(max_examples=300, deadline=None)
@given(
    names, rdtypes, st.sampled_from([-1, 0]), st.booleans(), st.integers(0, 65535), st.booleans()
)
def test_parse_agrees_with_dnspython(
    name: str, rdtype: int, edns: int, do: bool, qid: int, rd: bool
) -> None:
    wire = make(name, rdtype, edns=edns, do=do and edns == 0, qid=qid, rd=rd)
    q = parse_query(wire)
    ref = dns.message.from_wire(wire)
    assert isinstance(q, Query)
    assert q.id == ref.id and q.flags == ref.flags
    assert q.name == ref.question[0].name.to_text(omit_final_dot=True).lower()
    assert q.qtype == ref.question[0].rdtype and q.qclass == ref.question[0].rdclass
    assert q.edns == (ref.edns >= 0)
    assert q.edns_do == bool(ref.ednsflags & dns.flags.DO)
    assert q.rd == rd


@settings(max_examples=300, deadline=None)
@given(
    names,
    rdtypes,
    st.sampled_from([-1, 0]),
    st.booleans(),
    st.lists(
        st.sampled_from(["10.0.0.1", "192.0.2.7", "fd00::1", "2001:db8::53"]),
        min_size=1,
        max_size=4,
        unique=True,
    ),
)
def test_local_answer_is_what_dnspython_expects(
    name: str, rdtype: int, edns: int, do: bool, addrs: list[str]
) -> None:
    wire = make(name, rdtype, edns=edns, do=do and edns == 0)
    v4, v6 = pack_addresses(tuple(addrs))
    entry = LocalEntry(v4=v4, v6=v6, expires_at=NOW + 20)
    key = name.lower()
    reply = decide(wire, {key: entry}, NOW)
    assert isinstance(reply, bytes)
    query = dns.message.from_wire(wire)
    msg = dns.message.from_wire(reply)
    assert query.is_response(msg)  # dnspython's own check: id, QR, question
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.flags & dns.flags.AA and msg.flags & dns.flags.RA
    assert bool(msg.flags & dns.flags.RD) == bool(query.flags & dns.flags.RD)
    assert (msg.edns >= 0) == (query.edns >= 0)
    if query.edns >= 0:
        assert bool(msg.ednsflags & dns.flags.DO) == bool(query.ednsflags & dns.flags.DO)
    got = sorted(r.to_text() for rrset in msg.answer for r in rrset)
    want_v4 = [a for a in addrs if ":" not in a] if rdtype in (1, 255) else []
    want_v6 = [a for a in addrs if ":" in a] if rdtype in (28, 255) else []
    assert got == sorted(want_v4 + want_v6)
    for rrset in msg.answer:
        assert rrset.ttl <= 20  # never longer than the override's remaining life
        assert rrset.name == query.question[0].name  # case as sent


def test_question_is_echoed_exactly_as_sent() -> None:
    wire = make("LoGiN.HoTeL.eXaMpLe", 1)
    v4, v6 = pack_addresses(("10.0.0.1",))
    reply = decide(wire, {"login.hotel.example": LocalEntry(v4, v6, None)}, NOW)
    assert isinstance(reply, bytes)
    assert b"\x05LoGiN\x05HoTeL\x07eXaMpLe\x00" in reply


def test_unknown_name_is_forwarded_and_expired_entry_too() -> None:
    wire = make("other.example")
    assert isinstance(decide(wire, {}, NOW), Forward)
    v4, v6 = pack_addresses(("10.0.0.1",))
    assert isinstance(
        decide(make("a.example"), {"a.example": LocalEntry(v4, v6, NOW)}, NOW), Forward
    )


def test_other_classes_get_nodata_for_overridden_names() -> None:
    v4, v6 = pack_addresses(("10.0.0.1",))
    reply = decide(make("a.example", 16, rdclass=3), {"a.example": LocalEntry(v4, v6, None)}, NOW)
    assert isinstance(reply, bytes)
    msg = dns.message.from_wire(reply)
    assert msg.rcode() == 0 and not msg.answer


def test_badvers_for_edns_version_1() -> None:
    wire = make("a.example", edns=1)
    reply = decide(wire, {}, NOW)
    assert isinstance(reply, bytes)
    msg = dns.message.from_wire(reply)
    assert msg.rcode() == dns.rcode.BADVERS


def test_truncation_sets_tc_and_keeps_whole_records() -> None:
    addrs = tuple(f"2001:db8::{i:x}" for i in range(1, 17))
    v4, v6 = pack_addresses(addrs)
    name = ".".join(["abcdefghijklmnopqrstuvwxyz0123456789"] * 6)
    reply = decide(make(name, 28), {name: LocalEntry(v4, v6, None)}, NOW)
    assert isinstance(reply, bytes) and len(reply) <= 512
    msg = dns.message.from_wire(reply)
    assert msg.flags & dns.flags.TC
    assert 0 < sum(len(r) for r in msg.answer) < 16


def header(flags: int, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", 0xBEEF, flags, qd, an, ns, ar)


QUESTION = b"\x01a\x07example\x00\x00\x01\x00\x01"


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (b"", None),
        (b"\x12\x34", None),
        (header(0x8000) + QUESTION, None),  # a response: never answered (no reflection loops)
        (header(0x2800) + QUESTION, RCODE_NOTIMP),  # opcode UPDATE
        (header(0x1000) + QUESTION, RCODE_NOTIMP),  # opcode STATUS
        (header(0x0100, qd=0), RCODE_FORMERR),
        (header(0x0100, qd=2) + QUESTION * 2, RCODE_FORMERR),
        (header(0x0100, an=1) + QUESTION, RCODE_FORMERR),
        (header(0x0100) + QUESTION[:-2], RCODE_FORMERR),  # truncated
        (header(0x0100) + QUESTION + b"junk", RCODE_FORMERR),  # trailing bytes
        (header(0x0100) + b"\xc0\x0c\x00\x01\x00\x01", RCODE_FORMERR),  # pointer loop to itself
        (header(0x0100) + b"\x01a\xc0\x0e\x00\x01\x00\x01", RCODE_FORMERR),  # pointer
        (header(0x0100) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", RCODE_FORMERR),
        (header(0x0100) + b"\x03a.b\x00\x00\x01\x00\x01", RCODE_FORMERR),  # dot inside a label
        (header(0x0100) + b"\x03\xff\xfe\xfd\x00\x00\x01\x00\x01", RCODE_FORMERR),
        (
            header(0x0100, ar=1) + QUESTION + b"\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00",
            RCODE_FORMERR,
        ),  # additional record that is not OPT
        (
            header(0x0100, ar=1) + QUESTION + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x05",
            RCODE_FORMERR,
        ),  # OPT rdlength beyond the packet
    ],
)
def test_explicit_hostile_packets(packet: bytes, expected: int | None) -> None:
    result = parse_query(packet)
    assert result == expected


def test_name_at_the_255_octet_limit_and_beyond() -> None:
    labels63 = [b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61]  # 64*3 + 62 + 1 = 255 octets
    wire_name = b"".join(bytes([len(x)]) + x for x in labels63) + b"\x00"
    assert len(wire_name) == 255
    q = parse_query(header(0x0100) + wire_name + b"\x00\x01\x00\x01")
    assert isinstance(q, Query) and len(q.name) == 253
    too_long = b"".join(bytes([len(x)]) + x for x in [*labels63[:3], b"d" * 62]) + b"\x00"
    assert parse_query(header(0x0100) + too_long + b"\x00\x01\x00\x01") == RCODE_FORMERR


def test_header_error_for_what_cannot_be_read() -> None:
    packet = header(0x0100, qd=2) + QUESTION * 2
    reply = build_header_error(packet, RCODE_FORMERR)
    assert decide(packet, {}, NOW) == reply
    assert reply is not None
    msg = dns.message.from_wire(reply)
    assert msg.id == 0xBEEF and msg.rcode() == dns.rcode.FORMERR and msg.flags & dns.flags.QR
    assert build_header_error(b"\x00", RCODE_FORMERR) is None
    assert build_header_error(header(0x8000), RCODE_FORMERR) is None


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    result = decide(data, {"a.example": LocalEntry((b"\x0a\x00\x00\x01",), (), None)}, NOW)
    assert result is None or isinstance(result, bytes | Forward)
    assert refuse(data) is None or isinstance(refuse(data), bytes)


@settings(max_examples=500, deadline=None)
@given(names, st.binary(min_size=0, max_size=40), st.integers(0, 600))
def test_mutated_queries_never_raise(name: str, junk: bytes, cut: int) -> None:
    wire = bytearray(make(name, edns=0))
    mutated = bytes(wire[:cut]) + junk + bytes(wire[cut + len(junk) :])
    decide(mutated, {}, NOW)


def test_forwarding_helpers_match_ids_and_questions() -> None:
    wire = make("Www.Example.test", 1, qid=1)
    q = parse_query(wire)
    assert isinstance(q, Query)
    forwarded = with_id(wire, 0x4242)
    assert forwarded[:2] == b"\x42\x42" and forwarded[2:] == wire[2:]
    answer = dns.message.make_response(dns.message.from_wire(forwarded))
    ok = answer.to_wire()
    assert response_matches(ok, 0x4242, q.question)
    assert not response_matches(ok, 0x4243, q.question)  # wrong ID
    other = dns.message.make_response(dns.message.from_wire(make("evil.test", 1, qid=0x4242)))
    assert not response_matches(other.to_wire(), 0x4242, q.question)  # wrong question
    aaaa = dns.message.make_response(
        dns.message.from_wire(make("www.example.test", 28, qid=0x4242))
    )
    assert not response_matches(aaaa.to_wire(), 0x4242, q.question)  # wrong type
    lower = dns.message.make_response(
        dns.message.from_wire(make("www.example.test", 1, qid=0x4242))
    )
    assert response_matches(lower.to_wire(), 0x4242, q.question)  # case differs: fine
    assert not response_matches(forwarded, 0x4242, q.question)  # a query, not a response


def test_servfail_builder() -> None:
    q = parse_query(make("a.example", edns=0))
    assert isinstance(q, Query)
    msg = dns.message.from_wire(build_error(q, RCODE_SERVFAIL))
    assert msg.rcode() == dns.rcode.SERVFAIL and msg.edns == 0 and not msg.flags & dns.flags.AA


def test_build_records_ttl_is_clamped() -> None:
    q = parse_query(make("a.example"))
    assert isinstance(q, Query)
    msg = dns.message.from_wire(build_records(q, [(1, b"\x01\x02\x03\x04")], -5))
    assert msg.answer[0].ttl == 0


# --- compressed question names (RFC 1035 §4.1.4), read as dnspython reads them -------------------


def one_question(qid: int, flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0)


@pytest.mark.parametrize(
    ("packet", "name"),
    [
        # the root label as a pointer to offset 0, which holds a zero byte (ID < 256)
        (one_question(0x42) + b"\x05LOGIN\x05hotel\x07example\xc0\x00" + b"\x00\x01\x00\x01",
         "login.hotel.example"),
        (one_question(0x42) + b"\xc0\x00" + b"\x00\x01\x00\x01", ""),  # the root, compressed
        # a chain: offset 12 points at 5 (\x01 then a zero byte: a label of one zero byte)
        (one_question(0x42) + b"\xc0\x05\x00\x01\x00\x01", None),
        (one_question(0x142) + b"\x01a\xc0\x00\x00\x01\x00\x01", None),  # offset 0 is no label
        (one_question(0x42) + b"\x01a\xc0\x0c\x00\x01\x00\x01", None),  # a loop back to itself
        (one_question(0x42) + b"\x01a\xc0\x0e\x00\x01\x00\x01", None),  # a pointer forwards
        (one_question(0x42) + b"\x01a\xc0", None),  # a pointer cut short
    ],
)  # fmt: skip
def test_compressed_question_names(packet: bytes, name: str | None) -> None:
    q = parse_query(packet)
    if name is None:
        assert q == RCODE_FORMERR
        return
    assert isinstance(q, Query) and q.name == name
    # the question is spelled out, as dnspython reads it; the tail (type, class) follows
    their = dns.message.from_wire(packet).question[0]
    assert q.question == their.name.to_wire() + b"\x00\x01\x00\x01"
    assert decide(packet, {}, NOW) == Forward(q)


def _their_name(data: bytes) -> dns.name.Name | None:
    try:
        name, _ = dns.name.from_wire(data, 12)
    except (dns.exception.DNSException, IndexError):
        return None
    return name


@settings(max_examples=3000, deadline=None)
@given(
    st.integers(0, 65535),
    st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=6),
            st.tuples(st.integers(0, 0x3F), st.integers(0, 255)).map(
                lambda p: bytes((0xC0 | p[0], p[1]))
            ),
            st.integers(0, 40).map(lambda o: bytes((0xC0, o))),
        ),
        max_size=6,
    ),
)
def test_compressed_names_read_as_dnspython_reads_them(qid: int, parts: list[bytes]) -> None:
    """Whatever pointers a question holds, the name read is dnspython's, or the query is
    FORMERR where dnspython cannot read it either (or where overrides could never match it)."""
    body = b"".join(parts)
    packet = one_question(qid) + body + b"\x00\x01\x00\x01"
    q = parse_query(packet)
    name = _their_name(packet)
    if isinstance(q, Query):
        assert name is not None
        assert q.name == ".".join(x.decode() for x in name.labels[:-1]).lower()
        assert dns.name.from_wire(q.question, 0)[0] == name
        assert len(name.to_wire()) <= 255
    elif name is not None and all(
        x.isascii() and x.decode().isprintable() and b"." not in x for x in name.labels
    ):
        # dnspython reads a plain name: we refuse it only for what follows it (no type/class
        # where we expect one, trailing bytes), never for the name itself
        assert q == RCODE_FORMERR
        consumed = dns.name.from_wire(packet, 12)[1]
        assert len(packet) != 12 + consumed + 4
