"""What the stub does with one packet: answer locally, forward, or drop.

Pure: the overrides come in as a mapping of packed answers, time as `now`. The stub edge only
moves bytes. Overridden names are answered for every type so that nothing about them leaks
upstream and getaddrinfo never waits on a blocked resolver for the other family (NM's dnsmasq
mode forwarded AAAA for such names and cost 15 s a lookup).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from portal.core.model import Override
from portal.core.wire import (
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


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the query upstream (the edge keeps the original bytes)."""

    query: Query


@dataclass(frozen=True, slots=True)
class Unparsed:
    """The fast path could not read the question; the edge may try the slow path."""

    rcode: int


Decision = bytes | Forward | Unparsed | None  # bytes: reply now; None: drop silently


def decide(data: bytes, entries: Mapping[str, LocalEntry], now: float) -> Decision:
    parsed = parse_query(data)
    if parsed is None:
        return None
    if isinstance(parsed, int):
        return Unparsed(parsed)
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


def refuse(data: bytes) -> bytes | None:
    """REFUSED for a client we do not serve (not loopback): header-sized, no amplification."""
    parsed = parse_query(data)
    if isinstance(parsed, Query):
        return build_error(parsed, RCODE_REFUSED)
    return build_header_error(data, RCODE_REFUSED)
