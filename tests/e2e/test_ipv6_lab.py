"""An IPv6-only venue, end to end in the lab: the hotel's router advertises fd77::/64 with
RDNSS (dnsmasq's enable-ra) and answers stateless DHCPv6; the laptop has no IPv4 at all, and
the venue's DNS answers every name with AAAA (the portal) and with an A record the laptop
cannot reach, as a NAT64 venue's DNS64 does. The real daemon must take the venue's DNS from
IPv6, probe over IPv6, pin the portal's AAAA-only name, and `portal add NAME` must resolve.

With NetworkManager (its check off, as Debian ships it, and on) and without it (the kernel
takes the RA and passes RDNSS and the RFC 8910 option 37 to userspace over rtnetlink).
"""

from __future__ import annotations

import pytest

from tests.e2e.test_detection import POLICY, Portal
from tests.lab.lab import HOTEL_IP6, PORTAL_HOST, V6ONLY_HOST
from tests.lab.marks import LabFactory, requires_lab, requires_static_lab

pytest_plugins = ["tests.lab.fixtures"]
pytestmark = [pytest.mark.root, pytest.mark.lab]


def check_ipv6_only_venue(p: Portal) -> None:
    s = p.wait_state("captive", 40)
    assert s["venue_dns"] == [HOTEL_IP6], s
    assert s["portal_url"].startswith(p.lab.portal_url), s
    # the sign-in host has only AAAA at the venue: it is pinned with it
    pinned = p.wait(
        lambda s: any(o["name"] == PORTAL_HOST and o["active"] for o in s["overrides"]), 15
    )
    assert pinned is not None, p.log()[-3000:]
    auto = {o["name"]: o["addresses"] for o in pinned["overrides"]}
    assert auto[PORTAL_HOST] == [HOTEL_IP6]
    assert p.dig(PORTAL_HOST, "AAAA") == [HOTEL_IP6]
    # the probe reached the portal over IPv6, from the laptop's own IPv6 address
    requests = p.lab.state()["requests"]
    assert any(r.get("client") == p.lab.laptop_ip() for r in requests), requests
    out = p.cli("add", V6ONLY_HOST)
    assert out.returncode == 0, out.stderr
    assert f"{V6ONLY_HOST} -> {HOTEL_IP6}" in out.stdout
    assert p.dig(V6ONLY_HOST, "AAAA") == [HOTEL_IP6]
    # signing in (the portal knows the laptop by its IPv6 address) is seen as well
    p.lab.login()
    p.wait_state("online", 40)


@requires_lab
@pytest.mark.parametrize("nm_check", [False, True], ids=["nm-check-off", "nm-check-on"])
def test_ipv6_only_venue_with_networkmanager(lab_factory: LabFactory, nm_check: bool) -> None:
    lab = lab_factory(ipv6_only=True, nm_check=nm_check, bus_policy_files=[POLICY])
    p = Portal(lab)
    check_ipv6_only_venue(p)


@requires_static_lab
def test_ipv6_only_venue_without_networkmanager(lab_factory: LabFactory) -> None:
    """The kernel takes the RA; the venue's DNS and the RFC 8908 API URI come from its options
    (RDNSS, RFC 8910 option 37), which the kernel passes on as RTM_NEWNDUSEROPT. They are not
    kept anywhere: a daemon started after an RA learns them at the next one."""
    lab = lab_factory(ipv6_only=True, nm=False, https=True, bus_policy_files=[POLICY])
    p = Portal(lab)
    # dnsmasq's RAs may have come before the daemon (and carry no option 37): one more RA
    lab.send_ra(captive_portal=lab.api_uri)
    check_ipv6_only_venue(p)
    s = p.wait(lambda s: s["seconds_remaining"] > 0, 40)
    # only the RA named the API (no DHCPv4, no networkd): its answer gives the session time
    assert s is not None, p.log()[-3000:]
    assert s["upstreams"] == [f"[{HOTEL_IP6}]:53"] and "RDNSS" in s["upstream_source"], s
    assert "watching the kernel's links (netlink)" in p.log()
