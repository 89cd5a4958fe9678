"""Tests for portal.core.netstate: resolver-file parsing and primary-network choice."""

from __future__ import annotations

import pytest

from portal.core.model import Network, Upstream
from portal.core.netstate import (
    MAX_SERVERS,
    Address,
    Link,
    NetworkdLink,
    Route,
    is_loopback,
    network_from_tables,
    parse_link_state,
    parse_resolv_conf,
    parse_server,
    primary_route,
    upstreams_from_tables,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.77.0.1", Upstream("10.77.0.1")),
        (" 10.77.0.1 ", Upstream("10.77.0.1")),
        ("10.77.0.1:5353", Upstream("10.77.0.1", 5353)),
        ("1.1.1.1#cloudflare-dns.com", Upstream("1.1.1.1")),
        ("1.1.1.1:853#cloudflare-dns.com", Upstream("1.1.1.1", 853)),
        ("2001:DB8::1", Upstream("2001:db8::1")),
        ("[2001:db8::1]:5353", Upstream("2001:db8::1", 5353)),
        ("[2001:db8::1]", Upstream("2001:db8::1")),
        ("fe80::1%wlan0", Upstream("fe80::1%wlan0")),
        ("", None),
        ("#only-a-name", None),
        ("dns.example", None),
        ("10.77.0.1:dns", None),
        ("10.77.0.1:0", None),
        ("10.77.0.1:65536", None),
        ("[2001:db8::1", None),
        ("[2001:db8::1]53", None),
        ("[2001:db8::1]:x", None),
        ("10.0.0.1%eth0", None),
        ("fe80::1%eth/0", None),
        ("300.1.1.1", None),
    ],
)
def test_parse_server(text: str, expected: Upstream | None) -> None:
    assert parse_server(text) == expected


def test_parse_resolv_conf_keeps_order_drops_junk_and_duplicates() -> None:
    text = (
        "# generated\n"
        "search hotel.test\n"
        "nameserver 127.0.0.153\n"
        "nameserver 10.77.0.1\n"
        ";nameserver 10.9.9.9\n"
        "nameserver\n"
        "nameserver not-an-address\n"
        "nameserver 10.77.0.1\n"
        "  nameserver   2001:db8::53  \n"
        "options timeout:1\n"
    )
    assert parse_resolv_conf(text) == (
        Upstream("127.0.0.153"),
        Upstream("10.77.0.1"),
        Upstream("2001:db8::53"),
    )


def test_parse_resolv_conf_is_bounded() -> None:
    text = "".join(f"nameserver 10.0.0.{i}\n" for i in range(1, 50))
    assert len(parse_resolv_conf(text)) == MAX_SERVERS
    assert parse_resolv_conf("nameserver 10.0.0.1\n" + "#" * 70_000 + "\nnameserver 10.0.0.2") == (
        Upstream("10.0.0.1"),
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


def test_is_loopback() -> None:
    assert is_loopback(Upstream("127.0.0.153"))
    assert is_loopback(Upstream("::1"))
    assert not is_loopback(Upstream("10.77.0.1"))
    assert not is_loopback(Upstream("fe80::1%lap0"))


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
