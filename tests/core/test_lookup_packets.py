"""The packets of portal's own lookups through the venue's DNS (portal/core/packet.py:
build_query, parse_reply, read_name), checked against dnspython's builder and parser."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portal.core.packet import (
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    TYPE_A,
    TYPE_AAAA,
    Reply,
    build_query,
    parse_reply,
    read_name,
)

label = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-_", min_size=1, max_size=63
).filter(lambda s: not s.startswith("-"))
names = st.lists(label, min_size=1, max_size=4).map(".".join).filter(lambda n: len(n) < 250)


def answer(query: bytes, *records: tuple[str, str, str], rcode: int = 0) -> dns.message.Message:
    """dnspython's response to `query` with (owner, type, value) records in the answer."""
    response = dns.message.make_response(dns.message.from_wire(query))
    response.set_rcode(rcode)
    for owner, rdtype, value in records:
        response.answer.append(dns.rrset.from_text(owner, 60, "IN", rdtype, value))
    return response


@settings(max_examples=300, deadline=None)
@given(names, st.sampled_from([TYPE_A, TYPE_AAAA]), st.integers(0, 65535))
def test_query_is_what_dnspython_reads(name: str, qtype: int, qid: int) -> None:
    wire = build_query(name, qtype, qid)
    assert wire is not None
    message = dns.message.from_wire(wire)
    assert message.id == qid
    assert message.flags == dns.flags.RD  # a recursive query, nothing else set
    assert message.edns == -1  # no EDNS, as dnspython's make_query
    [question] = message.question
    assert question.name == dns.name.from_text(name)
    assert question.rdtype == qtype and question.rdclass == 1
    # and the name comes back as it went out, lower-cased
    assert read_name(wire, 12) == (name.lower(), len(wire) - 4)


def test_names_that_are_no_dns_names_build_no_query() -> None:
    assert build_query("a" * 64 + ".test", TYPE_A, 1) is None  # label over 63 octets
    assert build_query(".".join(["a" * 63] * 4), TYPE_A, 1) is None  # over 255 octets
    assert build_query("a..test", TYPE_A, 1) is None  # an empty label
    # outside ASCII: the IDNA form, as dnspython sends it
    wire = build_query("bücher.example", TYPE_A, 7)
    assert wire is not None
    assert dns.message.from_wire(wire).question[0].name == dns.name.from_text("bücher.example")


def test_addresses_of_the_name_and_its_aliases_only() -> None:
    query = build_query("Login.Hotel.test", TYPE_A, 0x1234)
    assert query is not None
    response = answer(
        query,
        ("login.hotel.test.", "CNAME", "portal.hotel.test."),
        ("portal.hotel.test.", "CNAME", "lb.hotel.test."),
        ("lb.hotel.test.", "A", "10.77.0.1"),
        ("lb.hotel.test.", "A", "10.77.0.2"),
        ("elsewhere.test.", "A", "192.0.2.66"),  # not on the chain: not an answer (RFC 1034)
        ("lb.hotel.test.", "AAAA", "fd00::1"),  # not the type asked
    ).to_wire()  # owner names compressed by dnspython
    assert parse_reply(response, 0x1234, query[12:]) == Reply(
        RCODE_NOERROR, False, ("10.77.0.1", "10.77.0.2")
    )
    query6 = build_query("login.hotel.test", TYPE_AAAA, 9)
    assert query6 is not None
    response6 = answer(query6, ("login.hotel.test.", "AAAA", "fd00::1 ")).to_wire()
    assert parse_reply(response6, 9, query6[12:]) == Reply(RCODE_NOERROR, False, ("fd00::1",))


def test_rcodes_and_nodata() -> None:
    query = build_query("nx.hotel.test", TYPE_A, 3)
    assert query is not None
    nx = answer(query, rcode=dns.rcode.NXDOMAIN).to_wire()
    assert parse_reply(nx, 3, query[12:]) == Reply(RCODE_NXDOMAIN, False, ())
    nodata = answer(query).to_wire()
    assert parse_reply(nodata, 3, query[12:]) == Reply(RCODE_NOERROR, False, ())


def test_only_the_answer_to_our_query_counts() -> None:
    """RFC 5452 §9.1: ID and question must match; a query or garbage is no answer."""
    query = build_query("login.hotel.test", TYPE_A, 0x4242)
    assert query is not None
    good = answer(query, ("login.hotel.test.", "A", "10.77.0.1")).to_wire()
    assert parse_reply(good, 0x4242, query[12:]) is not None
    assert parse_reply(good, 0x4243, query[12:]) is None  # another ID
    other = build_query("evil.test", TYPE_A, 0x4242)
    assert other is not None
    forged = answer(other, ("evil.test.", "A", "192.0.2.66")).to_wire()
    assert parse_reply(forged, 0x4242, query[12:]) is None  # another question
    assert parse_reply(query, 0x4242, query[12:]) is None  # a query, not an answer
    assert parse_reply(good[:-3], 0x4242, query[12:]) is None  # cut short: unreadable


def test_a_truncated_answer_says_so_even_when_cut() -> None:
    query = build_query("big.hotel.test", TYPE_A, 5)
    assert query is not None
    response = answer(query, ("big.hotel.test.", "A", "10.77.0.1"))
    response.flags |= dns.flags.TC
    wire = response.to_wire()
    assert parse_reply(wire, 5, query[12:]) == Reply(RCODE_NOERROR, True, ("10.77.0.1",))
    assert parse_reply(wire[:-2], 5, query[12:]) == Reply(RCODE_NOERROR, True, ())


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\xc0\x00",  # a pointer to itself
        b"\x03abc\xc0\x00",  # a pointer back into the name itself
        b"\x40abc\x00",  # a reserved label type
        b"\x05ab",  # beyond the end
    ],
)
def test_unreadable_names_raise_value_error(packet: bytes) -> None:
    with pytest.raises(ValueError):
        read_name(packet, 0)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 300))
def test_arbitrary_answers_never_raise(junk: bytes, cut: int) -> None:
    query = build_query("login.hotel.test", TYPE_A, 0x4242)
    assert query is not None
    good = answer(query, ("login.hotel.test.", "A", "10.77.0.1")).to_wire()
    mutated = good[:cut] + junk  # keeps ID and question for small cuts: the records are junk
    reply = parse_reply(mutated, 0x4242, query[12:])
    assert reply is None or isinstance(reply, Reply)
    assert parse_reply(junk, 0x4242, query[12:]) is None or junk[:2] == b"\x42\x42"
