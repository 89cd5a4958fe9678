"""Tests for portal.core.ra: what router advertisements' RDNSS and captive-portal options say
about a link, and for how long."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from portal.core.netstate import Address, Link, Route, network_from_tables
from portal.core.ra import RaLink, apply_options, live_dns, next_expiry


def rdnss(lifetime_s: int, *servers: str) -> tuple[int, bytes]:
    body = struct.pack("!HI", 0, lifetime_s)
    return 25, body + b"".join(ipaddress.IPv6Address(s).packed for s in servers)


def captive(uri: bytes) -> tuple[int, bytes]:
    pad = (-(len(uri) + 2)) % 8
    return 37, uri + b"\0" * pad


def test_rdnss_servers_live_for_their_lifetime() -> None:
    link = apply_options(RaLink(), [rdnss(600, "fd77::1", "fe80::1")], ifname="lap0", now=100.0)
    # a link-local server is only reachable through its interface
    assert live_dns(link, now=100.0) == ("fd77::1", "fe80::1%lap0")
    assert live_dns(link, now=699.0) == ("fd77::1", "fe80::1%lap0")
    assert live_dns(link, now=700.0) == ()
    assert next_expiry([link], now=100.0) == 700.0


def test_a_later_ra_refreshes_removes_and_keeps_order() -> None:
    link = apply_options(RaLink(), [rdnss(600, "fd77::1", "fd77::2")], ifname="", now=0.0)
    link = apply_options(link, [rdnss(900, "fd77::2")], ifname="", now=500.0)
    assert live_dns(link, now=650.0) == ("fd77::2",)  # fd77::1 ran out at 600
    link = apply_options(link, [rdnss(0, "fd77::2")], ifname="", now=700.0)  # 0: withdrawn
    assert link.dns == (("fd77::1", 600.0),)
    forever = apply_options(RaLink(), [rdnss(0xFFFFFFFF, "fd77::9")], ifname="", now=0.0)
    assert live_dns(forever, now=1e12) == ("fd77::9",)
    assert next_expiry([forever], now=0.0) is None


def test_captive_portal_option() -> None:
    uri = b"https://login.hotel.test/captive-portal/api"
    link = apply_options(RaLink(), [captive(uri)], ifname="lap0", now=0.0)
    assert link.captive_portal == uri.decode()
    # an RA without the option (dnsmasq's) keeps what the last one with it said
    link = apply_options(link, [rdnss(60, "fd77::1")], ifname="lap0", now=1.0)
    assert link.captive_portal == uri.decode()
    # garbage is no URI
    assert apply_options(link, [captive(b"\x1b[2J")], ifname="", now=2.0).captive_portal == ""


def test_short_rdnss_is_ignored() -> None:
    assert apply_options(RaLink(), [(25, b"\0" * 10)], ifname="", now=0.0) == RaLink()


@given(st.lists(st.tuples(st.sampled_from([25, 37, 3]), st.binary(max_size=80)), max_size=6))
def test_apply_options_never_raises(options: list[tuple[int, bytes]]) -> None:
    link = apply_options(RaLink(), options, ifname="x", now=0.0)
    assert len(link.dns) <= 8


def test_network_from_tables_takes_the_ra_dns_and_uri() -> None:
    links = {2: Link(2, "lap0", kind="veth")}
    addresses = [Address(2, "fd77::5"), Address(2, "fe80::5", link_local=True)]
    routes = [Route(2, "fe80::1", 1024, family=6)]
    ra = {
        2: apply_options(
            RaLink(),
            [rdnss(1800, "fd77::1"), captive(b"https://login.hotel.test/api")],
            ifname="lap0",
            now=0.0,
        )
    }
    net = network_from_tables(links, addresses, routes, link_states={}, ra=ra, now=10.0)
    assert net is not None
    assert (net.addresses, net.venue_dns) == (("fd77::5",), ("fd77::1",))
    assert net.api_uri == "https://login.hotel.test/api"
    gone = network_from_tables(links, addresses, routes, link_states={}, ra=ra, now=2000.0)
    assert gone is not None and gone.venue_dns == ()
