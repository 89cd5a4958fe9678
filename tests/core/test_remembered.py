"""core/remembered.py: the last network's identity, written and read back; anything odd refused."""

from __future__ import annotations

import pytest

from portal.core.model import Network
from portal.core.remembered import format_network, parse_network

HOTEL = Network(
    id="6d0a6f7e-4b1c-4c55-9a61-0c0ffee00001",
    name="hotel-wifi",
    interface="wlan0",
    kind="wifi",
    addresses=("10.77.0.100",),
    venue_dns=("10.77.0.1",),
    api_uri="https://login.hotel.test/captive-portal/api",
)


@pytest.mark.parametrize("network", [HOTEL, Network(id="link:eth0:10.0.0.1"), None])
def test_round_trip(network: Network | None) -> None:
    assert parse_network(format_network(network)) == network


def test_keys_of_a_newer_version_are_ignored() -> None:
    assert parse_network('{"network": {"id": "x", "mtu": 1500}, "more": 1}') == Network(id="x")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '{"other": 1}',
        '{"network": 5}',
        '{"network": {}}',  # no id
        '{"network": {"id": ""}}',
        '{"network": {"id": 7}}',
        '{"network": {"id": "x", "venue_dns": "10.0.0.1"}}',  # not a list
        '{"network": {"id": "x", "venue_dns": [1]}}',
        '{"network": {"id": "x"}}' + " " * (64 * 1024),
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_network(text)
