"""Tests for portal.core.mac: when a connection shows the network a new MAC each time, and the
nmcli command that keeps one on that network only."""

from __future__ import annotations

import pytest

from portal.core.mac import random_mac, stable_mac_command
from portal.core.model import Network

HW = "3C:22:FB:00:00:01"
OTHER = "EA:0F:5C:BE:73:3F"


@pytest.mark.parametrize(
    ("setting", "now", "own", "want"),
    [
        ("random", OTHER, HW, True),
        ("random", OTHER, "", True),  # a veth (the lab's) has no permanent address
        ("RANDOM", OTHER, HW, True),
        ("stable", OTHER, HW, False),  # not the hardware's, but the same each time
        ("stable-ssid", OTHER, HW, False),
        ("preserve", OTHER, HW, False),
        ("permanent", HW, HW, False),
        ("02:11:22:33:44:55", "02:11:22:33:44:55", HW, False),  # fixed by hand
        # unset: NetworkManager.conf's default applies; a MAC not the hardware's shows it
        ("", OTHER, HW, True),
        ("", HW.lower(), HW, False),
        ("", OTHER, "", False),  # nothing to compare with
        ("", "", "", False),
    ],
)
def test_random_mac(setting: str, now: str, own: str, want: bool) -> None:
    net = Network(id="u", mac_setting=setting, mac_address=now, permanent_mac=own)
    assert random_mac(net) is want


def test_no_network_has_no_random_mac() -> None:
    assert random_mac(None) is False


def test_stable_mac_command() -> None:
    wifi = Network(id="u", kind="wifi", profile="Hotel-Guest")
    assert stable_mac_command(wifi) == (
        "nmcli connection modify Hotel-Guest 802-11-wireless.cloned-mac-address stable"
    )
    wired = Network(id="u", kind="ethernet", profile="hotel-wifi")
    assert stable_mac_command(wired) == (
        "nmcli connection modify hotel-wifi ethernet.cloned-mac-address stable"
    )
    spaced = Network(id="u", kind="wifi", profile="Joe's Café Wi-Fi")
    assert stable_mac_command(spaced) == (
        "nmcli connection modify 'Joe'\"'\"'s Café Wi-Fi' 802-11-wireless.cloned-mac-address stable"
    )
    assert stable_mac_command(Network(id="u", kind="wifi")) == ""  # no NM profile
    assert stable_mac_command(Network(id="u", kind="mobile", profile="x")) == ""
