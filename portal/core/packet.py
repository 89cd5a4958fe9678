"""The DNS packet: parse a query's question and build answers straight from bytes; build the
stub's own lookups (the venue's DNS) and read their answers.

Pure functions over `bytes` (RFC 1035 §4.1, EDNS0 per RFC 6891). A query is one question and at
most one OPT record; anything else is answered FORMERR or NOTIMP. The common shape (no
compression in the question) is read in one pass; a question name that uses compression
pointers (legal, RFC 1035 §4.1.4, though stubs never send it) is read by following them, with
the rules dnspython applies (pointers only backwards, never into the name's own bytes, at most
16 in a chain). Each query is parsed once, here. They never raise on any input: hostile packets
are data here (tests feed them arbitrary bytes).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

# RR types and classes used here (RFC 1035, RFC 3596, RFC 6891)
TYPE_A = 1
TYPE_AAAA = 28
TYPE_OPT = 41
TYPE_ANY = 255
CLASS_IN = 1
CLASS_ANY = 255

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
RCODE_BADVERS = 16  # extended rcode, carried in the OPT record (RFC 6891 §6.1.3)
TYPE_CNAME = 5

EDNS_PAYLOAD = 1232  # what we advertise and honour at most (DNS flag day 2020)
MIN_UDP_PAYLOAD = 512

_HEADER = struct.Struct("!HHHHHH")
_QTAIL = struct.Struct("!HH")


class Query(NamedTuple):
    """The parts of a query the stub needs. A named tuple: built for every packet, and a tuple
    costs a fifth of a frozen dataclass to make."""

    id: int
    flags: int
    name: str  # lower-case, no trailing dot, "" for the root; only printable LDH-ish labels
    qtype: int
    qclass: int
    question: bytes  # the question section exactly as sent (echoed back, RFC 1035 §4.1.2)
    edns: bool = False
    edns_version: int = 0
    edns_do: bool = False
    udp_payload: int = MIN_UDP_PAYLOAD

    @property
    def rd(self) -> bool:
        return bool(self.flags & 0x0100)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF


MAX_POINTER_CHAIN = 16  # as dnspython's dns.name.MAX_COMPRESSION_POINTER_CHAIN


class Unusual(Exception):
    """Raised internally; never escapes parse_query."""


class _Compressed(Exception):
    """Raised internally: the question's name uses a compression pointer."""


def read_header(data: bytes) -> tuple[int, int, int, int, int, int] | None:
    """(id, flags, qdcount, ancount, nscount, arcount), or None for fewer than 12 bytes."""
    if len(data) < 12:
        return None
    return _HEADER.unpack_from(data, 0)


def parse_query(data: bytes) -> Query | int | None:
    """Parse a query.

    Returns a Query for a well-formed standard query; an rcode (int) to answer with when the
    header is readable but the query is not acceptable (FORMERR, NOTIMP); or None when the packet
    must be dropped (too short for a header, or a response: answering responses invites
    reflection loops).
    """
    header = read_header(data)
    if header is None:
        return None
    qid, flags, qdcount, ancount, nscount, arcount = header
    if flags & 0x8000:  # QR set: a response sent to us, never answer it
        return None
    opcode = (flags >> 11) & 0xF
    if opcode != 0:
        return RCODE_NOTIMP
    if qdcount != 1 or ancount != 0 or nscount != 0 or arcount > 1:
        return RCODE_FORMERR
    try:
        try:
            name, end = _read_plain_name(data, 12)
            wire_name = None
        except _Compressed:
            name, end, wire_name = _read_compressed_name(data, 12)
        if end + 4 > len(data):
            raise Unusual
        qtype, qclass = _QTAIL.unpack_from(data, end)
        qend = end + 4
        edns = False
        version = 0
        do = False
        payload = MIN_UDP_PAYLOAD
        if arcount == 1:
            # The one additional record must be an OPT with the root owner name (RFC 6891 §6.1.2)
            if qend + 11 > len(data) or data[qend] != 0:
                raise Unusual
            rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, qend + 1)
            if rtype != TYPE_OPT or qend + 11 + rdlen != len(data):
                raise Unusual
            edns = True
            payload = max(MIN_UDP_PAYLOAD, min(rclass, EDNS_PAYLOAD))
            version = (ttl >> 16) & 0xFF
            do = bool(ttl & 0x8000)
        elif qend != len(data):
            raise Unusual  # trailing bytes
    except (Unusual, struct.error, IndexError):
        return RCODE_FORMERR
    # The question is echoed as sent; a compressed one is spelled out, since its pointers would
    # point elsewhere in the reply.
    question = data[12:qend] if wire_name is None else wire_name + data[end:qend]
    # positional: id, flags, name, qtype, qclass, question, edns, version, DO, payload
    return Query(qid, flags, name, qtype, qclass, question, edns, version, do, payload)


def _read_plain_name(data: bytes, offset: int) -> tuple[str, int]:
    """Read an uncompressed name; compression pointers in a question are unusual (never sent by
    real stubs) and refused, which also rules out pointer loops."""
    start = offset
    size = len(data)
    labels: list[bytes] = []
    while True:
        if offset >= size:
            raise Unusual
        length = data[offset]
        if length == 0:
            break
        if length > 63:
            if length >= 0xC0:
                raise _Compressed
            raise Unusual  # the reserved 0x40/0x80 label types
        labels.append(data[offset + 1 : offset + 1 + length])
        offset += length + 1
    if offset - start > 254:  # RFC 1035 §2.3.4: 255 octets including the root
        raise Unusual
    return _name_text(labels), offset + 1


def _read_compressed_name(data: bytes, offset: int) -> tuple[str, int, bytes]:
    """Read a name that uses compression pointers; return its text, where the question goes on
    (after the first pointer) and the name spelled out without pointers.

    As dnspython reads them: a pointer must point before the last one (so chains end), and what
    it points at must lie before the bytes that pointed there (no overlap with the name itself).
    """
    labels: list[bytes] = []
    end = 0  # where the question continues: after the first pointer
    limit = len(data)  # bytes at or beyond this may not be read (the part that pointed here)
    lowest = offset  # a pointer must point below this
    segment = offset
    hops = 0
    total = 1  # the root label
    while True:
        if offset >= limit:
            raise Unusual
        length = data[offset]
        if length == 0:
            break
        if length < 64:
            if offset + 1 + length > limit:
                raise Unusual
            labels.append(data[offset + 1 : offset + 1 + length])
            total += length + 1
            offset += length + 1
            continue
        if length < 0xC0 or offset + 2 > limit:
            raise Unusual
        target = ((length & 0x3F) << 8) | data[offset + 1]
        hops += 1
        if target >= lowest or hops > MAX_POINTER_CHAIN:
            raise Unusual
        if not end:
            end = offset + 2
        limit, lowest, segment = segment, target, target
        offset = target
    if total > 255:  # RFC 1035 §2.3.4
        raise Unusual
    wire = b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"
    return _name_text(labels), end, wire


def _name_text(labels: list[bytes]) -> str:
    try:
        text = b".".join(labels).decode("ascii")
    except UnicodeDecodeError:
        raise Unusual from None
    # a dot inside a label would alias another name; never match overrides with it
    if not text.isprintable() or text.count(".") != max(len(labels) - 1, 0):
        raise Unusual
    return text.lower()


def _flags_for_answer(query: Query, rcode: int, *, aa: bool) -> int:
    # QR=1, opcode copied, AA for local data, RD and CD copied (RFC 1035 §4.1.1, RFC 4035 §3.2.2),
    # RA=1: we offer recursion (by forwarding)
    flags = 0x8000 | (query.flags & 0x7800) | (query.flags & 0x0100) | (query.flags & 0x0010)
    flags |= 0x0080
    if aa:
        flags |= 0x0400
    return flags | (rcode & 0xF)


def _opt_record(query: Query, rcode: int) -> bytes:
    # OPT: root owner, type 41, class = our payload size, TTL = ext-rcode | version 0 | DO copied
    ttl = ((rcode >> 4) & 0xFF) << 24
    if query.edns_do:
        ttl |= 0x8000
    return b"\x00" + struct.pack("!HHIH", TYPE_OPT, EDNS_PAYLOAD, ttl, 0)


def build_answer(query: Query, addresses: tuple[bytes, ...], rtype: int, ttl: int) -> bytes:
    """A NOERROR answer with one A or AAAA record per packed address (empty → NODATA).

    The question is echoed as sent; owner names use a compression pointer to it (offset 12).
    If the records do not fit the client's UDP size, whole records are dropped and TC set.
    Callers pass `addresses` already packed (4 or 16 bytes) — see pack_addresses().
    """
    return build_records(query, [(rtype, a) for a in addresses], ttl)


def build_records(query: Query, records: list[tuple[int, bytes]], ttl: int) -> bytes:
    ttl = max(0, min(ttl, 0x7FFFFFFF))
    limit = query.udp_payload
    opt = _opt_record(query, RCODE_NOERROR) if query.edns else b""
    base = 12 + len(query.question) + len(opt)
    rrs: list[bytes] = []
    size = base
    truncated = False
    for rtype, rdata in records:
        rr = struct.pack("!HHHIH", 0xC00C, rtype, CLASS_IN, ttl, len(rdata)) + rdata
        if size + len(rr) > limit:
            truncated = True
            break
        rrs.append(rr)
        size += len(rr)
    flags = _flags_for_answer(query, RCODE_NOERROR, aa=True)
    if truncated:
        flags |= 0x0200
    header = _HEADER.pack(query.id, flags, 1, len(rrs), 0, 1 if query.edns else 0)
    return header + query.question + b"".join(rrs) + opt


def build_error(query: Query, rcode: int) -> bytes:
    """An answer with no records and `rcode` (SERVFAIL, REFUSED, BADVERS...)."""
    edns = query.edns
    flags = _flags_for_answer(query, rcode, aa=False)
    opt = _opt_record(query, rcode) if edns else b""
    header = _HEADER.pack(query.id, flags, 1, 0, 0, 1 if edns else 0)
    return header + query.question + opt


def build_header_error(data: bytes, rcode: int) -> bytes | None:
    """FORMERR/NOTIMP for a packet whose question could not be parsed: header only (RFC 1035
    allows an empty question section in such replies). None when no header can be read."""
    header = read_header(data)
    if header is None or header[1] & 0x8000:
        return None
    qid, flags = header[0], header[1]
    out_flags = 0x8000 | (flags & 0x7800) | (flags & 0x0100) | 0x0080 | (rcode & 0xF)
    return _HEADER.pack(qid, out_flags, 0, 0, 0, 0)


def pack_addresses(addresses: tuple[str, ...]) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """Split textual addresses into packed IPv4 and IPv6 rdata, once per override (a dotted
    quad without ipaddress: the daemon packs every override before its first answer)."""
    v4: list[bytes] = []
    v6: list[bytes] = []
    for text in addresses:
        if ":" not in text:
            v4.append(_pack_v4(text))
        else:
            v6.append(ipaddress.IPv6Address(text).packed)
    return tuple(v4), tuple(v6)


def _pack_v4(text: str) -> bytes:
    parts = text.split(".")
    if len(parts) == 4 and all(p.isdigit() and p.isascii() and len(p) <= 3 for p in parts):
        octets = [int(p) for p in parts]
        if max(octets) <= 255:
            return bytes(octets)
    return ipaddress.IPv4Address(text).packed  # raises for what is no address


def with_id(data: bytes, qid: int) -> bytes:
    """The same message with another ID (for forwarding with a random upstream ID)."""
    return struct.pack("!H", qid & 0xFFFF) + data[2:]


def response_matches(response: bytes, qid: int, question: bytes) -> bool:
    """True when `response` is an answer to our forwarded query: QR set, same ID and the same
    question, compared case-insensitively (RFC 5452 §9.1: match ID, source and question)."""
    header = read_header(response)
    if header is None:
        return False
    rid, flags, qdcount = header[0], header[1], header[2]
    if rid != qid or not flags & 0x8000 or qdcount != 1:
        return False
    got = response[12 : 12 + len(question)]
    # names compare case-insensitively (0x20 randomisation, RFC 4343); type and class exactly.
    # Label-length bytes are < 64 and never touched by bytes.lower().
    return got[:-4].lower() == question[:-4].lower() and got[-4:] == question[-4:]


def is_truncated(response: bytes) -> bool:
    return len(response) >= 4 and bool(response[2] & 0x02)


def rcode_of(response: bytes) -> int:
    return response[3] & 0xF if len(response) >= 4 else -1


# --- lookups of our own: a query out, the addresses in its answer ------------------------------

MAX_CNAME_CHAIN = 8  # aliases followed from the question's name to its addresses
_ADDRESS_SIZE = {TYPE_A: 4, TYPE_AAAA: 16}


class Reply(NamedTuple):
    """What a lookup needs from an answer to its query (parse_reply)."""

    rcode: int
    truncated: bool
    addresses: tuple[str, ...]  # of the queried type, for the name asked or its aliases


def build_query(name: str, qtype: int, qid: int) -> bytes | None:
    """A recursive query (RD) for `name`, as a stub resolver sends it: one question, class IN,
    no EDNS (as dnspython's make_query; a truncated answer is asked again over TCP). None when
    `name` is no DNS name (a label over 63 octets, the name over 255, RFC 1035 §2.3.4). A name
    outside ASCII is sent in its IDNA form."""
    text = name.rstrip(".")
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        try:
            raw = text.encode("idna")
        except UnicodeError:
            return None
    wire = b""
    if raw:
        for label in raw.split(b"."):
            if not 0 < len(label) <= 63:
                return None
            wire += bytes((len(label),)) + label
    wire += b"\x00"
    if len(wire) > 255:
        return None
    return _HEADER.pack(qid & 0xFFFF, 0x0100, 1, 0, 0, 0) + wire + _QTAIL.pack(qtype, CLASS_IN)


def read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The name at `offset` (lower-case text) and where the data after it begins; compression
    pointers are followed with dnspython's rules. Raises ValueError for what cannot be read."""
    try:
        try:
            return _read_plain_name(data, offset)
        except _Compressed:
            name, end, _wire = _read_compressed_name(data, offset)
            return name, end
    except (Unusual, IndexError):
        raise ValueError("unreadable name") from None


def parse_reply(response: bytes, qid: int, question: bytes) -> Reply | None:
    """Read the answer to our query (`qid`, `question` as built by build_query): its rcode,
    whether it is truncated, and the addresses of the queried type for the queried name or the
    names it is an alias of (CNAME, RFC 1034 §3.6.2), in the order given. None when `response`
    is not an answer to that query (another ID or question, not a response) or cannot be read:
    a lookup keeps waiting for the real one (RFC 5452 §9.1)."""
    if not response_matches(response, qid, question):
        return None
    _qid, flags, _qdcount, ancount, _nscount, _arcount = _HEADER.unpack_from(response, 0)
    rcode = flags & 0xF
    truncated = bool(flags & 0x0200)
    qtype = _QTAIL.unpack_from(question, len(question) - 4)[0]
    try:
        qname, _ = read_name(question, 0)
        offset = 12 + len(question)
        records: list[tuple[str, int, bytes | str]] = []
        for _ in range(ancount):
            owner, offset = read_name(response, offset)
            rtype, rclass, _ttl, rdlen = struct.unpack_from("!HHIH", response, offset)
            offset += 10
            if offset + rdlen > len(response):
                raise ValueError("record beyond the message")
            if rclass == CLASS_IN and rtype == TYPE_CNAME:
                target, _ = read_name(response, offset)
                records.append((owner, rtype, target))
            elif rclass == CLASS_IN and rtype == qtype:
                records.append((owner, rtype, response[offset : offset + rdlen]))
            offset += rdlen
    except (ValueError, struct.error):
        if truncated:  # cut short by the server: what it says is the TC bit
            return Reply(rcode, True, ())
        return None
    names = {qname}
    for _ in range(MAX_CNAME_CHAIN):
        more = {str(t) for o, rtype, t in records if rtype == TYPE_CNAME and o in names}
        if more <= names:
            break
        names |= more
    size = _ADDRESS_SIZE.get(qtype, -1)
    found = tuple(
        str(ipaddress.ip_address(rdata))
        for owner, rtype, rdata in records
        if rtype == qtype and owner in names and isinstance(rdata, bytes) and len(rdata) == size
    )
    return Reply(rcode, truncated, found)
