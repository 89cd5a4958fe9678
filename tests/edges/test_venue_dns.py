"""Lookups through the venue's DNS (portal/edges/venue_dns.py) against scripted servers on
loopback: A first, answers matched on server, ID and question, random IDs and ports, TCP after
a truncated answer, and no dnspython in the process that looks names up."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rrset
import pytest

from portal.core.model import Network
from portal.edges.venue_dns import resolve_via
from tests.support.dns import FakeUpstream, fake_upstream

REPO = Path(__file__).resolve().parents[2]


def reply(query: bytes, *records: tuple[str, str], tc: bool = False) -> bytes:
    """A correct answer to `query` with (type, value) records for its name."""
    q = dns.message.from_wire(query)
    r = dns.message.make_response(q)
    name = q.question[0].name
    for rdtype, value in records:
        r.answer.append(dns.rrset.from_text(name, 60, "IN", rdtype, value))
    if tc:
        r.flags |= dns.flags.TC
    return r.to_wire()


def qtype(query: bytes) -> int:
    return int(dns.message.from_wire(query).question[0].rdtype)


def a_only(query: bytes) -> list[tuple[float, bytes]]:
    """A venue DNS that answers A and drops every AAAA query, as some portals' do."""
    if qtype(query) == 1:
        return [(0.0, reply(query, ("A", "10.77.0.1")))]
    return []


async def test_the_a_answer_does_not_wait_for_a_dropped_aaaa() -> None:
    with fake_upstream(a_only) as up:
        # 60 s is the lookup's own bound: waiting for the AAAA answer would take all of it
        got = await asyncio.wait_for(
            resolve_via("login.hotel.test", [up.upstream], timeout_s=60), 10
        )
        assert got == ["10.77.0.1"]
        assert sorted(qtype(q) for q in up.received) == [1, 28]  # AAAA was asked, at once


async def test_without_an_a_record_the_aaaa_answer_is_awaited() -> None:
    def late_aaaa(query: bytes) -> list[tuple[float, bytes]]:
        if qtype(query) == 1:
            return [(0.0, reply(query))]  # NODATA for A
        return [(0.3, reply(query, ("AAAA", "fd00::77")))]

    with fake_upstream(late_aaaa) as up:
        assert await resolve_via("v6.hotel.test", [up.upstream], timeout_s=10) == ["fd00::77"]


async def test_both_answers_are_returned_a_first() -> None:
    def both(query: bytes) -> list[tuple[float, bytes]]:
        if qtype(query) == 1:
            return [(0.0, reply(query, ("A", "10.77.0.1"), ("A", "10.77.0.2")))]
        return [(0.0, reply(query, ("AAAA", "fd00::1")))]

    with fake_upstream(both) as up:
        got = await resolve_via("dual.hotel.test", [up.upstream], timeout_s=10)
        assert got[:2] == ["10.77.0.1", "10.77.0.2"]
        # the AAAA answer came at the same moment; under a heavy load it may miss the short
        # wait after A, never the A answer
        assert got[2:] in (["fd00::1"], [])


async def test_answers_that_are_not_ours_are_ignored_until_ours_comes() -> None:
    def noisy(query: bytes) -> list[tuple[float, bytes]]:
        if qtype(query) != 1:
            return []
        right = reply(query, ("A", "10.77.0.1"))
        wrong_id = bytes([query[0] ^ 0xFF]) + reply(query, ("A", "192.0.2.66"))[1:]
        other = dns.message.make_query("evil.test", "A")
        other.id = int.from_bytes(query[:2], "big")
        wrong_question = reply(other.to_wire(), ("A", "192.0.2.66"))
        return [
            (0.0, wrong_id),
            (0.0, wrong_question),
            (0.0, query),  # its own query echoed: not a response
            (0.0, b"\x00garbage"),
            (0.05, right),
        ]

    with fake_upstream(noisy) as up:
        assert await resolve_via("login.hotel.test", [up.upstream], timeout_s=10) == ["10.77.0.1"]


class ForgingServer:
    """A venue DNS on 127.0.0.1 that, for each A query, first has another socket (another
    port: not the server) send the right answer with a forged address, then answers itself."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.forger.bind(("127.0.0.1", 0))
        self.sources: list[tuple[str, int]] = []
        self.ids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.sources.append(addr)
            self.ids.append(int.from_bytes(query[:2], "big"))
            if qtype(query) != 1:
                self.sock.sendto(reply(query), addr)
                continue
            self.forger.sendto(reply(query, ("A", "192.0.2.66")), addr)
            self._stop.wait(0.05)
            self.sock.sendto(reply(query, ("A", "10.77.0.1")), addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        self.forger.close()


@pytest.fixture
def forging() -> Iterator[ForgingServer]:
    server = ForgingServer()
    try:
        yield server
    finally:
        server.close()


async def test_an_answer_from_another_address_is_never_taken(forging: ForgingServer) -> None:
    got = await resolve_via("login.hotel.test", [forging.server], timeout_s=10)
    assert got == ["10.77.0.1"]


async def test_ids_and_source_ports_are_random(forging: ForgingServer) -> None:
    for _ in range(6):
        await resolve_via("login.hotel.test", [forging.server], timeout_s=10)
    # 12 queries (A and AAAA each time), each from a socket of its own: a repeated port or ID
    # among them is possible by chance, a handful of them is not
    assert len(forging.sources) == 12
    assert len(set(forging.sources)) >= 10
    assert len(set(forging.ids)) >= 10


async def test_a_truncated_answer_is_asked_again_over_tcp() -> None:
    def truncating(query: bytes) -> list[tuple[float, bytes]]:
        if qtype(query) != 1:
            return [(0.0, reply(query))]
        return [(0.0, reply(query, tc=True))]

    up = FakeUpstream(truncating).start()
    try:
        # over TCP the fake answers the same way; make it answer in full there
        def full_over_tcp(query: bytes) -> list[tuple[float, bytes]]:
            if len(up.tcp_received) > 0 and query == up.tcp_received[-1]:
                return [(0.0, reply(query, ("A", "10.77.0.9")))]
            return truncating(query)

        up.behaviour = full_over_tcp
        got = await resolve_via("big.hotel.test", [up.upstream], timeout_s=10)
        assert got == ["10.77.0.9"]
        assert len(up.tcp_received) == 1
        # a new ID for the new exchange
        assert up.tcp_received[0][:2] != next(q for q in up.received if qtype(q) == 1)[:2]
    finally:
        up.close()


async def test_a_dead_first_server_leaves_time_for_the_next() -> None:
    silent = FakeUpstream(lambda query: []).start()
    try:
        with fake_upstream(a_only) as up:
            got = await resolve_via("login.hotel.test", [silent.upstream, up.upstream], timeout_s=2)
            assert got == ["10.77.0.1"]
    finally:
        silent.close()


async def test_from_the_networks_address_and_interface() -> None:
    with fake_upstream(a_only) as up:
        me = "127.0.0.1"
        network = Network(id="n1", interface="lo", addresses=(me,))
        got = await resolve_via("login.hotel.test", [up.upstream], timeout_s=5, network=network)
        assert got == ["10.77.0.1"]
        assert {host for host, _ in up.sources} == {me}
        gone = Network(id="n1", interface="portalnone0", addresses=(me,))
        assert await resolve_via("login.hotel.test", [up.upstream], timeout_s=5, network=gone) == []


def test_no_dnspython_in_the_process_that_looks_names_up() -> None:
    """The daemon looks names up here when it pins a sign-in host; dnspython would stay
    resident (about 5 MiB). Checked in a fresh interpreter, a real lookup included."""
    with fake_upstream(a_only) as up:
        code = (
            "import asyncio, sys\n"
            "from portal import daemon\n"
            "from portal.edges.venue_dns import resolve_via\n"
            f"got = asyncio.run(resolve_via('login.hotel.test', [{up.upstream!r}], timeout_s=5))\n"
            "assert got == ['10.77.0.1'], got\n"
            "loaded = sorted(m for m in sys.modules if m == 'dns' or m.startswith('dns.'))\n"
            "print(' '.join(loaded))\n"
        )
        env = dict(os.environ, PYTHONPATH=str(REPO))
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
        )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
