"""portal/core/answer.py: the stub's whole decision for one packet, and what a forwarded
query's client gets back."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode

from portal.core.answer import Answers, Forward, LocalEntry, relay, route
from portal.core.model import Upstream
from portal.core.packet import Query, pack_addresses, parse_query

NOW = 1_800_000_000.0
VENUE = (Upstream("10.77.0.1"),)
V4, V6 = pack_addresses(("10.0.0.1",))
ENTRIES = {"login.hotel.test": LocalEntry(V4, V6, None)}


def wire(name: str, rdtype: str = "A", **kw: object) -> bytes:
    return bytes(dns.message.make_query(name, rdtype, **kw).to_wire())  # type: ignore[arg-type]


def test_route_matches_the_domain_and_below_only() -> None:
    routes = {"hotel.test": VENUE}
    assert route("hotel.test", routes) == VENUE
    assert route("a.b.hotel.test", routes) == VENUE
    assert route("nothotel.test", routes) is None
    assert route("test", routes) is None
    assert route("hotel.test", {}) is None


def test_one_decision_per_packet() -> None:
    answers = Answers(ENTRIES, {"hotel.test": VENUE})
    local = answers.decide(wire("LOGIN.hotel.test"), NOW, "127.0.0.1")
    assert isinstance(local, bytes)
    assert [r.to_text() for rrset in dns.message.from_wire(local).answer for r in rrset] == [
        "10.0.0.1"
    ]
    routed = answers.decide(wire("api.hotel.test"), NOW, "::1")
    assert isinstance(routed, Forward) and routed.upstreams == VENUE
    assert routed.query.name == "api.hotel.test"
    usual = answers.decide(wire("example.org"), NOW, "127.0.0.53")
    assert isinstance(usual, Forward) and usual.upstreams is None
    refused = answers.decide(wire("login.hotel.test"), NOW, "192.0.2.1")
    assert isinstance(refused, bytes)
    msg = dns.message.from_wire(refused)
    assert msg.rcode() == dns.rcode.REFUSED and not msg.answer
    assert answers.decide(b"\x00\x01", NOW, "127.0.0.1") is None


def test_swaps_keep_or_drop_the_built_answers() -> None:
    answers = Answers(ENTRIES)
    answers.decide(wire("login.hotel.test"), NOW, "127.0.0.1")
    assert len(answers.cache) == 1
    assert answers.with_routes({"hotel.test": VENUE}).cache is answers.cache
    assert len(answers.with_entries({}).cache) == 0


def test_tcp_answers_are_never_cut_to_the_udp_size() -> None:
    _, v6 = pack_addresses(tuple(f"2001:db8::{i:x}" for i in range(1, 41)))
    many = {"big.test": LocalEntry((), v6, None)}
    answers = Answers(many)
    udp = answers.decide(wire("big.test", "AAAA"), NOW, "127.0.0.1")
    tcp = answers.decide(wire("big.test", "AAAA"), NOW, "127.0.0.1", tcp=True)
    assert isinstance(udp, bytes) and isinstance(tcp, bytes)
    assert dns.message.from_wire(udp).flags & dns.flags.TC
    assert len(dns.message.from_wire(tcp).answer[0]) == 40


def test_relay() -> None:
    q = parse_query(wire("example.org", use_edns=False))
    assert isinstance(q, Query)
    servfail = dns.message.from_wire(relay(q, None))
    assert servfail.rcode() == dns.rcode.SERVFAIL and servfail.id == q.id
    small = b"x" * 100
    assert relay(q, small) is small
    response = dns.message.make_response(dns.message.from_wire(wire("example.org")))
    big = bytes(response.to_wire()) + b"\x00" * 600  # more than the 512 a plain client takes
    cut = relay(q, big)
    assert len(cut) == 12 + len(q.question)
    msg = dns.message.from_wire(cut)
    assert msg.flags & dns.flags.TC and msg.id == q.id and not msg.answer
