"""Tests for portal.core.netstate: networkd link files and primary-network choice."""

from __future__ import annotations

from portal.core.model import Network, Upstream
from portal.core.netstate import (
    Address,
    Link,
    NetworkdLink,
    Route,
    network_from_tables,
    parse_link_state,
    primary_route,
    upstreams_from_tables,
)


def test_parse_link_state_networkd_file() -> None:
    # The shape systemd-networkd writes to /run/systemd/netif/links/<ifindex>.
    text = (
        "# This is private data. Do not parse.\n"
        "ADMIN_STATE=configured\n"
        "OPER_STATE=routable\n"
        "DNS=10.77.0.1 10.77.0.2 1.1.1.1#one.one.one.one\n"
        "NTP=\n"
        "DOMAINS=hotel.test\n"
        "CAPTIVE_PORTAL=https://login.hotel.test/captive-portal/api\n"
    )
    assert parse_link_state(text) == NetworkdLink(
        dns=(Upstream("10.77.0.1"), Upstream("10.77.0.2"), Upstream("1.1.1.1")),
        captive_portal="https://login.hotel.test/captive-portal/api",
    )


def test_parse_link_state_passes_the_portal_uri_on_as_recorded() -> None:
    # Judging it (RFC 8910 wants https) is core/detect.py's job, not the parser's.
    text = "CAPTIVE_PORTAL=http://login.hotel.test/api\n"
    assert parse_link_state(text).captive_portal == "http://login.hotel.test/api"


def test_parse_link_state_empty() -> None:
    assert parse_link_state("") == NetworkdLink()
    assert parse_link_state("garbage without equals\n") == NetworkdLink()


LINKS = {
    1: Link(1, "lo", loopback=True),
    2: Link(2, "lap0", kind="veth"),
    3: Link(3, "wlan0", kind="wifi"),
    4: Link(4, "down0", up=False),
}
ADDRS = [
    Address(1, "127.0.0.1"),
    Address(2, "fe80::1", link_local=True),
    Address(2, "2001:db8::50"),
    Address(2, "10.77.0.50"),
    Address(3, "192.168.1.20"),
]


def test_primary_route_prefers_ipv4_then_metric_and_skips_down_links() -> None:
    routes = [
        Route(3, "192.168.1.1", metric=600),
        Route(2, "10.77.0.1", metric=100),
        Route(2, "fe80::1", metric=0, family=6),
        Route(4, "10.9.9.1", metric=0),
        Route(9, "10.8.8.1", metric=0),  # unknown link
        Route(1, "", metric=0),  # loopback never counts
    ]
    assert primary_route(routes, LINKS) == Route(2, "10.77.0.1", metric=100)
    assert primary_route([Route(2, "fe80::1", family=6)], LINKS) == Route(2, "fe80::1", family=6)
    assert primary_route([], LINKS) is None
    assert primary_route([Route(4, "10.9.9.1")], LINKS) is None


def test_network_from_tables_with_networkd_state() -> None:
    states = {2: NetworkdLink(dns=(Upstream("10.77.0.1"),), captive_portal="https://p.test/api")}
    network = network_from_tables(
        LINKS,
        ADDRS,
        [Route(2, "10.77.0.1")],
        link_states=states,
        resolv_conf=(Upstream("127.0.0.153"), Upstream("192.0.2.53")),
    )
    assert network == Network(
        id="link:lap0:10.77.0.1",
        name="lap0",
        interface="lap0",
        kind="veth",
        addresses=("10.77.0.50", "2001:db8::50"),
        venue_dns=("10.77.0.1",),
        api_uri="https://p.test/api",
    )


def test_network_from_tables_falls_back_to_resolv_conf_without_loopback() -> None:
    network = network_from_tables(
        LINKS,
        ADDRS,
        [Route(3, "192.168.1.1")],
        link_states={},
        resolv_conf=(Upstream("127.0.0.153"), Upstream("192.168.1.1"), Upstream("::1")),
    )
    assert network is not None
    assert network.id == "link:wlan0:192.168.1.1"
    assert network.venue_dns == ("192.168.1.1",)
    assert network.api_uri == ""
    assert network.addresses == ("192.168.1.20",)


def test_network_from_tables_without_default_route_is_none() -> None:
    assert network_from_tables(LINKS, ADDRS, [], link_states={}) is None


def test_network_id_for_device_route_without_gateway() -> None:
    network = network_from_tables(LINKS, ADDRS, [Route(2, "")], link_states={})
    assert network is not None and network.id == "link:lap0:"


def test_upstreams_primary_link_first_then_others_without_duplicates_or_self() -> None:
    states = {
        3: NetworkdLink(dns=(Upstream("192.168.1.1"), Upstream("10.77.0.1"))),
        2: NetworkdLink(dns=(Upstream("10.77.0.1"),)),
        4: NetworkdLink(dns=(Upstream("10.9.9.9"),)),  # link down: ignored
        7: NetworkdLink(dns=(Upstream("10.7.7.7"),)),  # link gone: ignored
    }
    got = upstreams_from_tables(
        LINKS,
        [Route(2, "10.77.0.1")],
        link_states=states,
        resolv_conf=(Upstream("10.5.5.5"),),
        exclude=[Upstream("192.168.1.1")],
    )
    assert got == (Upstream("10.77.0.1"),)


def test_upstreams_fall_back_to_resolv_conf_minus_own_stub() -> None:
    got = upstreams_from_tables(
        LINKS,
        [],
        link_states={},
        resolv_conf=(Upstream("127.0.0.153"), Upstream("10.77.0.1"), Upstream("127.0.0.53")),
        exclude=[Upstream("127.0.0.153")],
    )
    # 127.0.0.53 (systemd-resolved) is a legitimate upstream; only our own stub is dropped.
    assert got == (Upstream("10.77.0.1"), Upstream("127.0.0.53"))


def test_upstreams_without_any_source_is_empty() -> None:
    assert upstreams_from_tables(LINKS, [], link_states={}) == ()
