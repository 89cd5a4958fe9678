"""VPNs and address clashes, end to end in the lab: real NetworkManager (its connectivity check
off, as Debian ships it, and on), the laptop with a VPN as wg-quick sets one up (policy rules on
a tun device) or as OpenVPN's def1 does (split routes), or with a Docker-style bridge on the
venue's subnet; the real daemon says so in its status, the sign-in notification the agent would
show says what to do, and detection still works: the probes reach the portal off-link, past the
VPN, through the network's own interface.
"""

from __future__ import annotations

import pytest

from portal.core.agent_logic import sign_in_notification
from portal.core.report import StatusReport, from_plain
from tests.e2e.test_detection import POLICY, Portal
from tests.lab.lab import (
    BRIDGE_IP,
    HOTEL_IP,
    LAPTOP_IF,
    OFFLINK_PORTAL_IP,
    STATIC_LAPTOP_IP,
    Lab,
)
from tests.lab.marks import LabFactory, requires_lab

pytest_plugins = ["tests.lab.fixtures"]
pytestmark = [pytest.mark.root, pytest.mark.lab, requires_lab]

CHECK_OFF: dict[str, object] = {}
CHECK_ON: dict[str, object] = {"nm_check": True}
NO_NM: dict[str, object] = {"nm": False}  # the daemon reads the kernel's links itself
CAPS = frozenset({"actions", "body"})

# style → (lab option, the VPN's interface, its routing, its name in status)
VPNS = {
    "wg-quick": ("policy_vpn", "wg0", "policy", "tun/tap"),
    "def1": ("routing_vpn", "vpn0", "split", "veth"),
}


def probes_seen(lab: Lab) -> list[dict[str, object]]:
    """Requests of portal's probes that reached the hotel (by their User-Agent)."""
    return [r for r in lab.state()["requests"] if str(r.get("agent", "")).startswith("portal")]


def route_of(lab: Lab, address: str) -> str:
    """The interface the laptop's kernel sends `address` out of, for an unbound socket."""
    words = lab.run_laptop(["ip", "route", "get", address], check=True).stdout.split()
    return words[words.index("dev") + 1]


@pytest.mark.parametrize(
    "nm", [CHECK_OFF, CHECK_ON, NO_NM], ids=["nm-check-off", "nm-check-on", "no-nm"]
)
@pytest.mark.parametrize("style", list(VPNS))
def test_a_vpn_is_reported_and_detection_still_works(
    lab_factory: LabFactory, style: str, nm: dict[str, object]
) -> None:
    option, interface, routing, name = VPNS[style]
    lab = lab_factory(
        dns_mode="hijack",
        offlink_portal=True,
        offlink_hijack=True,
        bus_policy_files=[POLICY],
        **{option: True},
        **nm,
    )
    # the VPN is in the way: every name answers an off-link address, which it captures
    assert route_of(lab, OFFLINK_PORTAL_IP) == interface
    p = Portal(lab)
    s = p.wait(lambda s: s["state"] == "captive" and s["vpn"], 30)
    assert s is not None, f"{p.status()}\n{p.log()[-3000:]}"
    assert (s["vpn"], s["vpn_name"], s["vpn_routing"]) == (interface, name, routing)
    assert s["vpn_bypass"] is True and s["vpn_dns"] is False  # the hotel's DNS is on-link
    assert s["clashes"] == []
    # the probes left through lap0 (the VPN delivers nothing): the portal saw them, off-link
    seen = probes_seen(lab)
    assert seen and {r["client"] for r in seen} == {lab.laptop_ip() or STATIC_LAPTOP_IP}
    assert f"VPN: {name} on {interface} ({routing})" in p.log()
    # what the agent would show for this very status, and what portal status prints
    body = sign_in_notification(from_plain(StatusReport, s), (), CAPS).body
    assert f"{name} ({interface}) carries your traffic" in body
    assert f"go around it through {LAPTOP_IF}" in body and "kill switch" in body
    assert f"vpn:        {name} ({interface})" in p.cli("status").stdout
    # and signing in is seen as before
    lab.login()
    p.wait_state("online", 40)


def test_a_vpn_that_comes_and_goes_is_followed(lab_factory: LabFactory) -> None:
    """The VPN appears after the daemon started (a rule change, no network change), and goes."""
    lab = lab_factory(dns_mode="hijack", bus_policy_files=[POLICY])
    p = Portal(lab)
    s = p.wait_state("captive", 30)
    assert s["vpn"] == ""
    ns = lab.laptop_ns
    lab._ip("tuntap", "add", "dev", "wg1", "mode", "tun", ns=ns)
    lab._ip("link", "set", "wg1", "up", ns=ns)
    lab._ip("route", "add", "default", "dev", "wg1", "table", "51821", ns=ns)
    lab._ip("rule", "add", "not", "fwmark", "0xca6d", "table", "51821", ns=ns)
    lab._ip("rule", "add", "table", "main", "suppress_prefixlength", "0", ns=ns)
    s = p.wait(lambda s: s["vpn"] == "wg1", 10)
    assert s is not None and s["vpn_routing"] == "policy", p.status()
    lab._ip("rule", "del", "not", "fwmark", "0xca6d", "table", "51821", ns=ns)
    s = p.wait(lambda s: s["vpn"] == "", 10)
    assert s is not None, p.status()


@pytest.mark.parametrize("nm", [CHECK_OFF, CHECK_ON], ids=["nm-check-off", "nm-check-on"])
def test_a_bridge_on_the_venues_subnet_is_named_with_the_fix(
    lab_factory: LabFactory, nm: dict[str, object]
) -> None:
    bridge = "br-5e2f1c0d9a7b"  # as Docker names a network's bridge
    lab = lab_factory(dns_mode="hijack", venue_bridge=bridge, bus_policy_files=[POLICY], **nm)
    # the bridge's route wins for the whole subnet: the gateway itself goes into it
    assert route_of(lab, HOTEL_IP) == bridge
    p = Portal(lab)
    s = p.wait(lambda s: s["state"] == "captive" and s["clashes"], 30)
    assert s is not None, f"{p.status()}\n{p.log()[-3000:]}"
    # the gateway is also the venue's DNS and portal: one address, named once, by its first role
    assert s["clashes"] == [f"gateway {HOTEL_IP} {bridge}"] and s["vpn"] == ""
    assert BRIDGE_IP not in str(s["clashes"])
    assert probes_seen(lab)  # detection still reaches the portal, bound to lap0
    assert f"is routed into {bridge}, not {LAPTOP_IF}" in p.log()
    body = sign_in_notification(from_plain(StatusReport, s), (), CAPS).body
    assert f"routes into {bridge} (Docker), not {LAPTOP_IF}" in body
    assert f"its gateway {HOTEL_IP}" in body and "docker network prune" in body
    out = p.cli("status").stdout
    assert "clash:" in out and "daemon.json" in out
    # Docker's network removed: the clash goes
    lab._ip("link", "del", bridge, ns=lab.laptop_ns)
    s = p.wait(lambda s: s["clashes"] == [], 10)
    assert s is not None, p.status()
