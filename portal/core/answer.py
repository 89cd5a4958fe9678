"""What the stub does with one packet: answer locally, forward, or drop.

Pure: the overrides come in as a mapping of packed answers, time as `now`. The stub edge only
moves bytes. Overridden names are answered for every type so that nothing about them leaks
upstream and getaddrinfo never waits on a blocked resolver for the other family (NM's dnsmasq
mode forwarded AAAA for such names and cost 15 s a lookup).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from portal.core.model import Override
from portal.core.packet import (
    CLASS_ANY,
    CLASS_IN,
    RCODE_BADVERS,
    RCODE_REFUSED,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    Query,
    build_error,
    build_header_error,
    build_records,
    pack_addresses,
    parse_query,
)

TCP_MAX_MESSAGE = 65535  # a TCP message's 2-byte length prefix is the only limit
MAX_ANSWER_TTL_S = 30  # short, so a removed override leaves client caches within half a minute


@dataclass(frozen=True, slots=True)
class LocalEntry:
    """An override, pre-packed for the hot path."""

    v4: tuple[bytes, ...]
    v6: tuple[bytes, ...]
    expires_at: float | None  # wall-clock seconds, None = until removed

    @classmethod
    def from_override(cls, o: Override) -> LocalEntry:
        v4, v6 = pack_addresses(o.addresses)
        return cls(v4=v4, v6=v6, expires_at=o.expires_at)


def local_entries(overrides: Mapping[str, Override]) -> dict[str, LocalEntry]:
    return {name: LocalEntry.from_override(o) for name, o in overrides.items()}


class Forward(NamedTuple):
    """Send the query upstream (the edge keeps the original bytes)."""

    query: Query


class Unparsed(NamedTuple):
    """The fast path could not read the question; the edge may try the slow path."""

    rcode: int


Decision = bytes | Forward | Unparsed | None  # bytes: reply now; None: drop silently


def decide(
    data: bytes, entries: Mapping[str, LocalEntry], now: float, *, tcp: bool = False
) -> Decision:
    """`tcp`: the answer goes over TCP, where no size limit applies (RFC 7766 §8)."""
    parsed = parse_query(data)
    if parsed is None:
        return None
    if isinstance(parsed, int):
        return Unparsed(parsed)
    if tcp:
        parsed = parsed._replace(udp_payload=TCP_MAX_MESSAGE)
    return decide_query(parsed, entries, now)


def decide_query(q: Query, entries: Mapping[str, LocalEntry], now: float) -> bytes | Forward:
    if q.edns and q.edns_version != 0:
        return build_error(q, RCODE_BADVERS)  # RFC 6891 §6.1.3
    entry = entries.get(q.name)
    if entry is None:
        return Forward(q)
    remaining = None if entry.expires_at is None else entry.expires_at - now
    if remaining is not None and remaining <= 0:
        return Forward(q)  # expired a moment ago; the table purge follows
    return answer_local(q, entry, remaining)


def answer_local(q: Query, entry: LocalEntry, remaining_s: float | None) -> bytes:
    ttl = MAX_ANSWER_TTL_S if remaining_s is None else int(min(MAX_ANSWER_TTL_S, remaining_s))
    ttl = max(ttl, 1)
    records: list[tuple[int, bytes]] = []
    if q.qclass in (CLASS_IN, CLASS_ANY):
        if q.qtype in (TYPE_A, TYPE_ANY):
            records += [(TYPE_A, a) for a in entry.v4]
        if q.qtype in (TYPE_AAAA, TYPE_ANY):
            records += [(TYPE_AAAA, a) for a in entry.v6]
    # Any other type or class (HTTPS/SVCB, MX, TXT, CH...) gets NODATA: the name is ours.
    return build_records(q, records, ttl)


class AnswerCache:
    """Local answers already built, keyed by the query's bytes after the ID.

    A local answer depends on the query only through those bytes (the ID is copied), so a
    repeated query — clients ask for the same few overridden names again and again — is answered
    by one dict lookup instead of parsing and building (bench/: 3× fewer CPU per answer). Only
    answers whose TTL cannot change are kept: an override that never expires, or one more than
    MAX_ANSWER_TTL_S from its end (its TTL is capped at that value until then). The edge makes a
    new cache whenever the overrides change. Bounded: when full it starts again empty, so a client
    spraying case variants (0x20) costs only the uncached path.
    """

    __slots__ = ("_replies", "limit")

    def __init__(self, limit: int = 4096) -> None:
        self._replies: dict[bytes, tuple[bytes, float | None]] = {}
        self.limit = limit

    def __len__(self) -> int:
        return len(self._replies)

    def decide(self, data: bytes, entries: Mapping[str, LocalEntry], now: float) -> Decision:
        """Exactly what decide(data, entries, now) returns, from the cache when possible."""
        hit = self._replies.get(data[2:])
        if hit is not None:
            reply, valid_until = hit
            if valid_until is None or now < valid_until:
                return data[:2] + reply
        parsed = parse_query(data)
        if parsed is None:
            return None
        if isinstance(parsed, int):
            return Unparsed(parsed)
        decision = decide_query(parsed, entries, now)
        if isinstance(decision, bytes):
            entry = entries.get(parsed.name)
            if entry is not None and (parsed.edns_version == 0 or not parsed.edns):
                valid_until = (
                    None if entry.expires_at is None else entry.expires_at - MAX_ANSWER_TTL_S
                )
                if valid_until is None or now < valid_until:
                    if len(self._replies) >= self.limit:
                        self._replies.clear()
                    self._replies[data[2:]] = (decision[2:], valid_until)
        return decision


def refuse(data: bytes) -> bytes | None:
    """REFUSED for a client we do not serve (not loopback): header-sized, no amplification."""
    parsed = parse_query(data)
    if isinstance(parsed, Query):
        return build_error(parsed, RCODE_REFUSED)
    return build_header_error(data, RCODE_REFUSED)
