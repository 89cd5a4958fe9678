"""AnswerCache: a cached answer is byte for byte what decide() builds, with the asker's ID, and
dnspython reads it as the answer to that query; TTLs near expiry are never cached; the cache is
bounded. Queries are made by dnspython (names, case, types, classes, flags, EDNS)."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rdataclass
import dns.rdatatype
from hypothesis import given, settings
from hypothesis import strategies as st

from portal.core.answer import MAX_ANSWER_TTL_S, AnswerCache, Forward, LocalEntry, decide
from portal.core.packet import pack_addresses

NOW = 1_700_000_000.0
V4, V6 = pack_addresses(("192.0.2.1", "192.0.2.2", "2001:db8::1"))
ENTRIES = {
    "login.hotel.example": LocalEntry(V4, V6, None),
    "v4only.example": LocalEntry(V4, (), NOW + 3600),
    "ending.example": LocalEntry(V4, (), NOW + MAX_ANSWER_TTL_S + 5),
}
NAMES = [*ENTRIES, "upstream.test", "sub.login.hotel.example"]


@st.composite
def queries(draw: st.DrawFn) -> dns.message.Message:
    name = draw(st.sampled_from(NAMES))
    if draw(st.booleans()):  # 0x20 case randomisation
        name = "".join(c.upper() if draw(st.booleans()) else c for c in name)
    rdtype = draw(st.sampled_from(["A", "AAAA", "HTTPS", "TXT", "ANY", "MX"]))
    rdclass = draw(st.sampled_from(["IN", "IN", "CH", "ANY"]))
    edns = draw(st.sampled_from([-1, 0, 1]))
    q = dns.message.make_query(
        name,
        rdtype,
        rdclass,
        use_edns=edns,
        payload=draw(st.sampled_from([512, 1232, 4096, 600])),
        want_dnssec=edns >= 0 and draw(st.booleans()),
    )
    if not draw(st.booleans()):
        q.flags &= ~dns.flags.RD
    if draw(st.booleans()):
        q.flags |= dns.flags.CD
    q.id = draw(st.integers(0, 65535))
    return q


@settings(max_examples=300, deadline=None)
@given(queries(), st.integers(0, 65535), st.floats(0, 4000))
def test_cached_answers_equal_fresh_ones(
    q: dns.message.Message, other_id: int, later: float
) -> None:
    cache = AnswerCache()
    wire = q.to_wire()
    first = cache.decide(wire, ENTRIES, NOW)
    assert first == decide(wire, ENTRIES, NOW)
    # the same question again, with another ID and later: cached or not, the same as decide()
    again = other_id.to_bytes(2, "big") + wire[2:]
    second = cache.decide(again, ENTRIES, NOW + later)
    assert second == decide(again, ENTRIES, NOW + later)
    if isinstance(second, bytes):
        reply = dns.message.from_wire(second)
        asked = dns.message.from_wire(again)
        assert asked.is_response(reply)
        assert all(rrset.ttl <= MAX_ANSWER_TTL_S for rrset in reply.answer)


def test_repeated_local_answers_come_from_the_cache() -> None:
    cache = AnswerCache()
    wire = dns.message.make_query("login.hotel.example", "A").to_wire()
    cache.decide(wire, ENTRIES, NOW)
    assert len(cache) == 1
    # with the entries gone, only a cache hit still answers locally
    reply = cache.decide(b"\x12\x34" + wire[2:], {}, NOW)
    assert isinstance(reply, bytes) and reply[:2] == b"\x12\x34"
    assert [r.address for r in dns.message.from_wire(reply).answer[0]] == ["192.0.2.1", "192.0.2.2"]


def test_forwarded_and_unparsed_queries_are_not_cached() -> None:
    cache = AnswerCache()
    assert isinstance(
        cache.decide(dns.message.make_query("upstream.test", "A").to_wire(), ENTRIES, NOW),
        Forward,
    )
    cache.decide(b"\x00\x01garbage", ENTRIES, NOW)
    assert len(cache) == 0


def test_answers_are_cached_only_while_their_ttl_stays_at_the_cap() -> None:
    cache = AnswerCache()
    wire = dns.message.make_query("ending.example", "A").to_wire()
    first = cache.decide(wire, ENTRIES, NOW)  # 35 s left: TTL 30 for 5 more seconds
    assert len(cache) == 1
    later = cache.decide(wire, ENTRIES, NOW + 20)
    assert isinstance(first, bytes) and isinstance(later, bytes)
    assert dns.message.from_wire(later).answer[0].ttl == 15
    cache = AnswerCache()
    cache.decide(wire, ENTRIES, NOW + 6)  # TTL 29: never cached
    assert len(cache) == 0


def test_a_cached_answer_ends_before_its_ttl_could_change() -> None:
    cache = AnswerCache()
    wire = dns.message.make_query("v4only.example", "A").to_wire()
    cache.decide(wire, ENTRIES, NOW)
    assert len(cache) == 1
    near_end = cache.decide(wire, ENTRIES, NOW + 3600 - 10)
    assert isinstance(near_end, bytes)
    assert dns.message.from_wire(near_end).answer[0].ttl == 10
    assert isinstance(cache.decide(wire, ENTRIES, NOW + 3600), Forward)  # expired: forwarded


def test_the_cache_is_bounded() -> None:
    cache = AnswerCache(limit=8)
    for i in range(50):
        q = dns.message.make_query("login.hotel.example", "A")
        q.flags ^= dns.flags.CD if i % 2 else 0
        q.use_edns(0, payload=600 + i)
        cache.decide(q.to_wire(), ENTRIES, NOW)
        assert len(cache) <= 8


def test_a_question_pointing_into_the_id_is_never_answered_from_the_cache() -> None:
    # The root label as a pointer to offset 0: with ID 0x00.. it reads a zero byte (the root),
    # with ID 0x01.. a label; the bytes after the ID, the cache's key, are the same.
    tail = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    question = b"\x05login\x05hotel\x07example\xc0\x00\x00\x01\x00\x01"
    ours, other = b"\x00\x42" + tail + question, b"\x01\x42" + tail + question
    cache = AnswerCache()
    assert cache.decide(ours, ENTRIES, NOW) == decide(ours, ENTRIES, NOW)
    assert isinstance(decide(ours, ENTRIES, NOW), bytes)  # the override's answer
    assert cache.decide(other, ENTRIES, NOW) == decide(other, ENTRIES, NOW)
    assert not isinstance(decide(other, ENTRIES, NOW), bytes) or decide(
        other, ENTRIES, NOW
    ) != decide(ours, ENTRIES, NOW)
