"""Coverage-guided fuzzing (atheris/libFuzzer) of what the DNS stub does with one packet.

The target is the stub's whole per-packet decision without sockets (portal.core.packet,
portal.core.answer): reading the question (compressed or not), the cache of built answers, the
routing of a portal's names, and the refusal sent to non-loopback clients. It checks, for every
input, that nothing raises and that:
- a reply is a DNS response with the query's ID, parseable by dnspython, no larger than the
  client may take over UDP;
- a response (QR=1) or a packet shorter than a header is never answered;
- a refusal is never larger than the packet it answers (no amplification);
- a forwarded query carries exactly the question the client sent;
- the answer cache says exactly what the uncached path says.

Run it for a fixed time (libFuzzer flags pass through):
    python3 bench/fuzz_packet.py -max_total_time=300 [CORPUS_DIR]
Without a corpus directory it starts from a few real queries in a temporary one. It prints
libFuzzer's figures (`Done N runs in T second(s)`) and exits non-zero with the crashing input
saved on the first failure. It must not open sockets or touch anything but its corpus.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from pathlib import Path

import atheris  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

with atheris.instrument_imports(include=["portal", "dns"]):
    import dns.exception
    import dns.message
    import dns.name

    from portal.core.answer import AnswerCache, Answers, Forward, LocalEntry, decide, refuse
    from portal.core.model import Upstream
    from portal.core.packet import EDNS_PAYLOAD, MIN_UDP_PAYLOAD, Query, pack_addresses, parse_query

NOW = 1_800_000_000.0
V4, V6 = pack_addresses(("10.0.0.1", "10.0.0.2", "fd00::1"))
ENTRIES = {
    "login.hotel.example": LocalEntry(V4, V6, NOW + 600),
    "a": LocalEntry(V4, (), None),
    "": LocalEntry((), V6, None),  # the root name, to reach odd corners
}
VENUE = (Upstream("10.77.0.1"),)
ANSWERS = Answers(ENTRIES, {"hotel.example": VENUE})  # what the stub decides with
CACHE = AnswerCache(limit=256)  # the stub answers repeated queries from built answers


class Violation(AssertionError):
    """An invariant broke: libFuzzer saves the input."""


def check_reply(data: bytes, reply: bytes, limit: int) -> None:
    if len(reply) < 12 or reply[:2] != data[:2] or not reply[2] & 0x80:
        raise Violation(f"not a response to this query: {reply[:12].hex()}")
    if len(reply) > limit:
        raise Violation(f"reply of {len(reply)} bytes for a client taking {limit}")
    try:
        dns.message.from_wire(reply)
    except dns.exception.DNSException as exc:
        raise Violation(f"dnspython cannot read our reply: {exc!r}") from exc


def udp_limit(q: Query | None) -> int:
    if q is None or not q.edns:
        return MIN_UDP_PAYLOAD
    return max(MIN_UDP_PAYLOAD, min(q.udp_payload, EDNS_PAYLOAD))


def test_one_input(data: bytes) -> None:
    refused = refuse(data)
    if refused is not None and len(refused) > len(data):
        raise Violation("a refusal larger than the query (amplification)")
    decision = decide(data, ENTRIES, NOW)
    if CACHE.decide(data, ENTRIES, NOW) != decision:
        raise Violation("the answer cache disagrees with the uncached path")
    routed = ANSWERS.decide(data, NOW, "127.0.0.1")
    if isinstance(routed, Forward):
        name = routed.query.name
        want = VENUE if name == "hotel.example" or name.endswith(".hotel.example") else None
        if routed.upstreams != want or not isinstance(decision, Forward):
            raise Violation(f"{routed.query.name!r} routed to {routed.upstreams}")
    elif routed != decision:
        raise Violation("the stub's decision differs from decide()")
    is_response = len(data) >= 3 and bool(data[2] & 0x80)
    if len(data) < 12 or is_response:
        if decision is not None or refused is not None:
            raise Violation("answered a response or a packet without a header")
        return
    if isinstance(decision, bytes):
        check_reply(data, decision, udp_limit(_fast_query(data)))
    elif isinstance(decision, Forward):
        q = decision.query
        if q.id != struct.unpack("!H", data[:2])[0] or q.name != q.name.lower():
            raise Violation("forwarding with another ID or an unnormalised name")
        if data[12 : 12 + len(q.question)] != q.question:
            # a compressed question, spelled out: it must name what the client's pointers name
            if dns.name.from_wire(q.question, 0)[0] != dns.name.from_wire(data, 12)[0]:
                raise Violation("forwarding a question other than the one sent")
    elif decision is not None:
        raise Violation(f"decide returned {type(decision).__name__}")


def _fast_query(data: bytes) -> Query | None:
    parsed = parse_query(data)
    return parsed if isinstance(parsed, Query) else None


def seed_corpus(directory: Path) -> None:
    seeds = [
        dns.message.make_query("login.hotel.example", "A"),
        dns.message.make_query("LOGIN.hotel.example", "AAAA", use_edns=0, want_dnssec=True),
        dns.message.make_query("login.hotel.example", "ANY", use_edns=0, payload=4096),
        dns.message.make_query("other.example", "HTTPS", use_edns=1),
        dns.message.make_query("a", "TXT", "CH"),
    ]
    for i, q in enumerate(seeds):
        (directory / f"seed-{i}").write_bytes(q.to_wire())
    # a question with a compression pointer (legal, and read by following it)
    (directory / "seed-compressed").write_bytes(
        struct.pack("!HHHHHH", 0x0042, 0x0100, 1, 0, 0, 0)
        + b"\x05login\x05hotel\x07example\xc0\x00\x00\x01\x00\x01"
    )


def main() -> None:
    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="portal-fuzz-corpus-"))
        seed_corpus(corpus)
        argv.append(str(corpus))
    if not any(a.startswith("-max_len=") for a in argv):
        argv.append("-max_len=4096")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
