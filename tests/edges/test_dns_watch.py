"""The stub's DNS alarm over real sockets: a scripted upstream fails or starts answering with the
portal's address, dnspython queries the stub, and the alarm reaches the asyncio loop once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from portal.core.expiry import BAD_IN_WINDOW, AnswerWatch
from portal.core.model import Upstream
from portal.edges.dns_stub import DnsStub, bind_sockets
from portal.edges.reactor import ThreadReactor
from portal.edges.upstream import Forwarder
from tests.support.dns import FakeUpstream, answer_a

PORTAL = "10.77.0.1"


class Venue:
    """What the scripted upstream answers right now: "good", "servfail" or "hijack"."""

    def __init__(self) -> None:
        self.mode = "good"

    def __call__(self, query: bytes) -> list[tuple[float, bytes]]:
        if self.mode == "servfail":
            q = dns.message.from_wire(query)
            r = dns.message.make_response(q)
            r.set_rcode(dns.rcode.SERVFAIL)
            return [(0.0, r.to_wire())]
        return [(0.0, answer_a(query, PORTAL if self.mode == "hijack" else "93.184.216.34"))]


@pytest.fixture
async def stub_and_venue() -> AsyncIterator[tuple[DnsStub, Venue, tuple[str, int]]]:
    venue = Venue()
    upstream = FakeUpstream(venue).start()
    stub = DnsStub(
        bind_sockets([("127.0.0.1", 0)]),
        Forwarder(ThreadReactor(), [Upstream(upstream.host, upstream.port)]),
    )
    await stub.start()
    try:
        yield stub, venue, stub.listen_addresses()[0]
    finally:
        await stub.close()
        upstream.close()


async def ask(addr: tuple[str, int], name: str) -> dns.message.Message:
    query = dns.message.make_query(name, "A")
    return await dns.asyncquery.udp(query, addr[0], port=addr[1], timeout=5)


class Alarms:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.event = asyncio.Event()

    def __call__(self, reason: str) -> None:
        # runs on the loop (the DNS thread hands it over), never in the DNS thread
        asyncio.get_running_loop()
        self.reasons.append(reason)
        self.event.set()


@pytest.mark.parametrize(("mode", "reason"), [("servfail", "failing"), ("hijack", "hijacked")])
async def test_a_burst_of_bad_answers_raises_the_alarm_once(
    stub_and_venue: tuple[DnsStub, Venue, tuple[str, int]], mode: str, reason: str
) -> None:
    stub, venue, addr = stub_and_venue
    alarms = Alarms()
    stub.set_watch(AnswerWatch([PORTAL]), alarms)
    for i in range(10):
        assert (await ask(addr, f"good{i}.example.org")).rcode() == dns.rcode.NOERROR
    assert alarms.reasons == []
    venue.mode = mode
    for i in range(BAD_IN_WINDOW + 4):
        await ask(addr, f"bad{i}.example.org")  # the clients get their answers as before
    await asyncio.wait_for(alarms.event.wait(), 5)
    await asyncio.sleep(0.1)
    assert alarms.reasons == [reason]


async def test_unarmed_or_disarmed_the_stub_says_nothing(
    stub_and_venue: tuple[DnsStub, Venue, tuple[str, int]],
) -> None:
    stub, venue, addr = stub_and_venue
    alarms = Alarms()
    venue.mode = "servfail"
    for i in range(BAD_IN_WINDOW + 2):
        await ask(addr, f"bad{i}.example.org")
    stub.set_watch(AnswerWatch([PORTAL]), alarms)
    stub.set_watch(None, alarms)
    for i in range(BAD_IN_WINDOW + 2):
        await ask(addr, f"bad{i}.example.org")
    await asyncio.sleep(0.2)
    assert alarms.reasons == []


async def test_the_portals_own_names_routed_to_the_venue_do_not_count(
    stub_and_venue: tuple[DnsStub, Venue, tuple[str, int]],
) -> None:
    stub, venue, addr = stub_and_venue
    alarms = Alarms()
    venue.mode = "hijack"
    # routed names go to the venue's DNS, which answers them with the portal, rightly
    [server] = stub.forwarder.upstreams
    stub.set_portal_routes({"hotel.test": (server,)})
    stub.set_watch(AnswerWatch([PORTAL]), alarms)
    for i in range(BAD_IN_WINDOW + 4):
        msg = await ask(addr, f"login{i}.hotel.test")
        assert msg.answer[0][0].to_text() == PORTAL
    await asyncio.sleep(0.2)
    assert alarms.reasons == []
