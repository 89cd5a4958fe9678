"""What the stub does with one packet: answer it, forward it (and where), or drop it.

    Answers(entries, routes).decide(data, now, client, tcp=False)
        -> bytes (the reply) | Forward(query, upstreams) | None (drop)
    relay(query, answer) -> bytes       what the client gets for a forwarded query's answer

A datagram is parsed once (core/packet.py), decided once, then sent by the edge: refused when
the client is not on this machine, answered from the overrides (or from answers already built
for them), FORMERR/NOTIMP when it cannot be read, or forwarded — to the venue's DNS for names
under a portal's domains, else to the usual upstreams.

Pure: the overrides come in as a mapping of packed answers, time as `now`. The stub edge only
moves bytes. Overridden names are answered for every type so that nothing about them leaks
upstream and getaddrinfo never waits on a blocked resolver for the other family (NM's dnsmasq
mode forwarded AAAA for such names and cost 15 s a lookup).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import NamedTuple

from portal.core.inet import is_loopback
from portal.core.model import Override, Upstream
from portal.core.packet import (
    CLASS_ANY,
    CLASS_IN,
    RCODE_BADVERS,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
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

Routes = Mapping[str, tuple[Upstream, ...]]  # domain → the venue's DNS servers
NO_ROUTES: Routes = {}


class LocalEntry(NamedTuple):
    """An override, pre-packed for the hot path. A named tuple: the daemon builds one per
    override before it answers its first query, and the class itself is made without the
    `exec` of a dataclass."""

    v4: tuple[bytes, ...]
    v6: tuple[bytes, ...]
    expires_at: float | None  # wall-clock seconds, None = until removed

    @classmethod
    def from_override(cls, o: Override) -> LocalEntry:
        v4, v6 = pack_addresses(o.addresses)
        return cls(v4, v6, o.expires_at)


def local_entries(overrides: Mapping[str, Override]) -> dict[str, LocalEntry]:
    return {name: LocalEntry.from_override(o) for name, o in overrides.items()}


class Forward(NamedTuple):
    """Send the query upstream (the edge keeps the original bytes): to `upstreams`, or to the
    usual upstreams when it is None."""

    query: Query
    upstreams: tuple[Upstream, ...] | None = None


Decision = bytes | Forward | None  # bytes: reply now; None: drop silently


def decide(
    data: bytes,
    entries: Mapping[str, LocalEntry],
    now: float,
    *,
    tcp: bool = False,
    routes: Routes = NO_ROUTES,
) -> Decision:
    """`tcp`: the answer goes over TCP, where no size limit applies (RFC 7766 §8)."""
    parsed = parse_query(data)
    if parsed is None:
        return None
    if isinstance(parsed, int):
        return build_header_error(data, parsed)  # FORMERR, NOTIMP: header only
    if tcp:
        parsed = parsed._replace(udp_payload=TCP_MAX_MESSAGE)
    return decide_query(parsed, entries, now, routes)


def decide_query(
    q: Query, entries: Mapping[str, LocalEntry], now: float, routes: Routes = NO_ROUTES
) -> bytes | Forward:
    if q.edns and q.edns_version != 0:
        return build_error(q, RCODE_BADVERS)  # RFC 6891 §6.1.3
    entry = entries.get(q.name)
    if entry is None:
        return Forward(q, route(q.name, routes) if routes else None)
    remaining = None if entry.expires_at is None else entry.expires_at - now
    if remaining is not None and remaining <= 0:
        # expired a moment ago; the table purge follows
        return Forward(q, route(q.name, routes) if routes else None)
    return answer_local(q, entry, remaining)


def route(name: str, routes: Routes) -> tuple[Upstream, ...] | None:
    """The venue's DNS for `name` when it is one of a portal's domains or below one."""
    labels = name.split(".")
    for i in range(len(labels)):
        venue = routes.get(".".join(labels[i:]))
        if venue:
            return venue
    return None


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
    MAX_ANSWER_TTL_S from its end (its TTL is capped at that value until then). A new cache comes
    with every new set of overrides (`Answers.with_entries`). Bounded: when full it starts again
    empty, so a client spraying case variants (0x20) costs only the uncached path.
    """

    __slots__ = ("_replies", "limit")

    def __init__(self, limit: int = 4096) -> None:
        self._replies: dict[bytes, tuple[bytes, float | None]] = {}
        self.limit = limit

    def __len__(self) -> int:
        return len(self._replies)

    @property
    def table(self) -> dict[bytes, tuple[bytes, float | None]]:
        """The answers themselves, for a reader that does what get() does (the stub's C wait,
        portal/_udpbatch.c): the query's bytes after the ID → (the reply after the ID,
        valid_until or None). Read only."""
        return self._replies

    def get(self, data: bytes, now: float) -> bytes | None:
        """The answer built for these query bytes (with their ID), if it is still valid."""
        hit = self._replies.get(data[2:])
        if hit is not None:
            reply, valid_until = hit
            if valid_until is None or now < valid_until:
                return data[:2] + reply
        return None

    def decide(
        self,
        data: bytes,
        entries: Mapping[str, LocalEntry],
        now: float,
        routes: Routes = NO_ROUTES,
    ) -> Decision:
        """Exactly what decide(data, entries, now, routes=routes) returns, from the cache when
        possible."""
        hit = self.get(data, now)
        if hit is not None:
            return hit
        parsed = parse_query(data)
        if parsed is None:
            return None
        if isinstance(parsed, int):
            return build_header_error(data, parsed)
        decision = decide_query(parsed, entries, now, routes)
        # A compressed question may point into the ID, which the key leaves out: never cached
        # (it is spelled out in `question`, so it differs from the bytes sent).
        if isinstance(decision, bytes) and data[12 : 12 + len(parsed.question)] == parsed.question:
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


class Answers:
    """Everything the stub answers from, swapped whole (the DNS thread reads it while the daemon
    makes the next one): the overrides, the names routed to the venue's DNS, and the answers
    already built from the overrides."""

    __slots__ = ("entries", "routes", "cache")

    def __init__(
        self,
        entries: Mapping[str, LocalEntry] | None = None,
        routes: Routes = NO_ROUTES,
        cache: AnswerCache | None = None,
    ) -> None:
        self.entries: Mapping[str, LocalEntry] = entries or {}
        self.routes = routes
        self.cache = cache or AnswerCache()

    def with_entries(self, entries: Mapping[str, LocalEntry]) -> Answers:
        # answers built from the old overrides go with them
        return Answers(entries, self.routes)

    def with_routes(self, routes: Routes) -> Answers:
        # local answers do not depend on the routes: the cache stays
        return Answers(self.entries, routes, self.cache)

    def cached(self, data: bytes, now: float, client: str) -> bytes | None:
        """The answer the cache already holds for this UDP packet from a 127.* client (exactly
        what decide() would return), else None: the DNS thread's shortest path, for the
        question clients repeat most (bench/: the Python between a query's read and its
        answer's send is most of what separates the stub's latency from dnsmasq's)."""
        return self.cache.get(data, now) if client.startswith("127.") else None

    def decide(self, data: bytes, now: float, client: str, tcp: bool = False) -> Decision:
        """The whole decision for one packet from `client` (its address). No keyword-only
        parameter and a positional `client`: either costs this per-packet call a tenth more."""
        # not an open resolver, even when bound wider by mistake (127.* first: the common case
        # without a call, this runs for every packet)
        if not client.startswith("127.") and not is_loopback(client):
            return refuse(data)
        if tcp:
            return decide(data, self.entries, now, tcp=True, routes=self.routes)
        return self.cache.decide(data, self.entries, now, self.routes)


def relay(q: Query, answer: bytes | None) -> bytes:
    """What the client gets for its forwarded query: the answer, SERVFAIL when none came, and
    never more than the client can take: header and question with TC set (RFC 1035 §4.2.1)."""
    if answer is None:
        return build_error(q, RCODE_SERVFAIL)
    if len(answer) <= q.udp_payload:
        return answer
    flags = struct.unpack_from("!H", answer, 2)[0] | 0x0200
    return struct.pack("!HHHHHH", q.id, flags, 1, 0, 0, 0) + q.question


def refuse(data: bytes) -> bytes | None:
    """REFUSED for a client we do not serve (not loopback): header-sized, no amplification."""
    parsed = parse_query(data)
    if isinstance(parsed, Query):
        return build_error(parsed, RCODE_REFUSED)
    return build_header_error(data, RCODE_REFUSED)
