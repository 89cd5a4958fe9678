"""portal/core/paths.py (VPNs and address clashes from the kernel's route answers) and what
portal says about them (core/notes.py, the sign-in notification in core/agent_logic.py).

The kernel's real answers for each kind of VPN and bridge are in tests/edges/test_paths.py;
these are the decisions alone, on the facts such answers give.
"""

from __future__ import annotations

from dataclasses import replace

from portal.core.agent_logic import sign_in_notification
from portal.core.model import Connectivity
from portal.core.notes import network_notes
from portal.core.owners import owner_of
from portal.core.paths import Hop, NmVpn, PathFacts, assess, subnet_probes
from portal.core.report import StatusReport
from portal.core.rtnetlink import RT_TABLE_MAIN, RTN_UNICAST, RouteEntry

OWN = Hop("1.1.1.1", interface="wlan0", kind="wifi", gateway="10.77.0.1")


def facts(*internet: Hop, bound: tuple[Hop, ...] = (OWN,), **more: object) -> PathFacts:
    return PathFacts("wlan0", internet=internet, bound=bound, **more)  # type: ignore[arg-type]


def test_the_networks_own_route_is_no_vpn() -> None:
    assert assess(facts(OWN)).vpn == ""


def test_a_second_ordinary_interface_with_a_better_default_is_no_vpn() -> None:
    """A wired dock beside the Wi-Fi: its default route wins, but it is no tunnel."""
    eth = Hop("1.1.1.1", interface="eth0", kind="ethernet", gateway="192.168.1.1")
    assert assess(facts(eth)).vpn == ""


def test_wireguard_by_default_route_and_by_nm() -> None:
    wg = Hop("1.1.1.1", interface="wg0", kind="wireguard")
    report = assess(facts(wg))
    assert (report.vpn, report.vpn_name, report.vpn_routing) == ("wg0", "WireGuard", "default")
    # NetworkManager's name wins over the kind
    named = assess(facts(wg), vpns=[NmVpn("office", "wireguard", "wg0")])
    assert named.vpn_name == "office"


def test_an_nm_vpn_on_an_unnamed_tunnel_takes_the_one_vpns_name() -> None:
    tun = Hop("1.1.1.1", interface="tun0", kind="tun", prefix_len=1)
    report = assess(facts(tun), vpns=[NmVpn("work-vpn", "vpn")])
    assert (report.vpn, report.vpn_name, report.vpn_routing) == ("tun0", "work-vpn", "split")


def test_policy_routing_is_told_apart_by_its_table() -> None:
    hop = Hop("1.1.1.1", interface="wg0", kind="tun", table=51820)
    assert assess(facts(hop)).vpn_routing == "policy"


def test_a_split_route_on_any_link_is_a_vpn() -> None:
    """def1's halves on a veth (or any kind portal does not know) still capture everything."""
    hop = Hop("1.1.1.1", interface="vpn0", kind="veth", prefix_len=1, table=RT_TABLE_MAIN)
    assert assess(facts(hop)).vpn == "vpn0"


def test_dns_only_vpn() -> None:
    resolver = Hop("10.8.0.1", interface="tun0", kind="tun", prefix_len=24)
    report = assess(facts(OWN, resolvers=(resolver,)))
    assert (report.vpn, report.vpn_routing, report.vpn_dns) == ("tun0", "", True)


def test_bypass_is_false_when_a_bound_socket_is_caught_or_unanswered() -> None:
    wg = Hop("1.1.1.1", interface="wg0", kind="wireguard", table=51820)
    assert assess(facts(wg)).vpn_bypass is True
    assert assess(facts(wg, bound=(Hop("1.1.1.1"),))).vpn_bypass is False  # unreachable
    assert assess(facts(wg, bound=())).vpn_bypass is False  # no answer at all


def test_clashes_name_each_venue_address_routed_elsewhere() -> None:
    br = Hop("10.77.0.1", interface="docker0", kind="bridge", prefix_len=16)
    report = assess(
        facts(
            OWN,
            venue=(
                ("gateway", br),
                ("dns", Hop("10.77.0.53", interface="wlan0", kind="wifi", prefix_len=24)),
                ("portal", Hop("10.77.0.80", interface="docker0", kind="bridge")),
            ),
        )
    )
    assert [c.format() for c in report.clashes] == [
        "gateway 10.77.0.1 docker0",
        "portal 10.77.0.80 docker0",
    ]
    assert report.vpn == ""


def test_a_vpns_catch_all_is_no_clash_but_its_route_for_the_venue_is() -> None:
    """An off-link portal caught by def1's halves or wg-quick's table is the VPN's doing (its
    report says so); a VPN that pushes a route for the venue's own range clashes."""
    wg = Hop("1.1.1.1", interface="wg0", kind="tun", table=51820)
    report = assess(
        facts(
            wg,
            venue=(
                ("portal", Hop("203.0.113.80", interface="wg0", kind="tun", table=51820)),
                ("dns", Hop("198.18.0.53", interface="tun0", kind="tun", prefix_len=1)),
                ("gateway", Hop("10.77.0.1", interface="tun0", kind="tun", prefix_len=8)),
            ),
        )
    )
    assert [c.format() for c in report.clashes] == ["gateway 10.77.0.1 tun0"]


def test_subnet_probes_find_a_narrower_route_elsewhere_and_skip_link_local() -> None:
    def route(dst: str, plen: int, oif: int) -> RouteEntry:
        return RouteEntry(4 if ":" not in dst else 6, dst, plen, RT_TABLE_MAIN, RTN_UNICAST, oif)

    routes = [
        route("10.77.0.0", 24, 2),
        route("10.77.0.128", 25, 5),  # virbr0 on the upper half
        route("172.17.0.0", 16, 6),  # docker0 elsewhere: no overlap
        route("fe80::", 64, 2),
        route("fe80::", 64, 5),
    ]
    assert subnet_probes(2, routes) == (("subnet", "10.77.0.129"),)


def test_owner_and_fix_by_interface_name() -> None:
    assert owner_of("br-3f2a19c0")[0] == "Docker" and "docker network prune" in owner_of("br-1")[1]
    assert "daemon.json" in owner_of("docker0")[1]
    assert owner_of("virbr0")[0] == "libvirt"
    assert owner_of("podman1")[0] == "Podman" and owner_of("cni0")[0] == "CNI"
    assert owner_of("eth1") == ("", "")


# --- what the user is told ----------------------------------------------------------------

CAPTIVE = StatusReport(
    network="hotel-wifi",
    interface="wlan0",
    state=Connectivity.CAPTIVE,
    portal_url="http://login.hotel.test/portal",
)


def test_status_and_notification_say_what_a_routing_vpn_does() -> None:
    s = replace(CAPTIVE, vpn="wg0", vpn_name="WireGuard", vpn_routing="policy")
    [note] = [n for n in network_notes(s) if n.topic == "vpn"]
    assert "WireGuard (wg0) carries your traffic" in note.text
    assert "go around it through wlan0" in note.text and "kill switch" in note.text
    body = sign_in_notification(s, (), frozenset({"actions"})).body
    assert note.text in body


def test_a_vpn_that_catches_bound_sockets_says_to_pause_it() -> None:
    s = replace(CAPTIVE, vpn="tun0", vpn_routing="split", vpn_bypass=False)
    [note] = [n for n in network_notes(s) if n.topic == "vpn"]
    assert "cannot load around it" in note.text and "pause the VPN" in note.text


def test_dns_only_vpn_note() -> None:
    s = replace(CAPTIVE, vpn="tun0", vpn_name="work", vpn_dns=True)
    [note] = [n for n in network_notes(s) if n.topic == "vpn"]
    assert note.text.startswith("your DNS goes through work (tun0)")


def test_clash_note_names_the_interface_its_owner_and_the_fix() -> None:
    s = replace(
        CAPTIVE,
        clashes=("gateway 10.77.0.1 br-3f2a", "portal 10.77.0.80 br-3f2a", "bad"),
    )
    [note] = [n for n in network_notes(s) if n.topic == "clash"]
    assert "routes into br-3f2a (Docker), not wlan0" in note.text
    assert "its gateway 10.77.0.1, its sign-in server 10.77.0.80" in note.text
    assert "docker network prune" in note.text
    assert note.text in sign_in_notification(s, (), frozenset()).body


def test_nothing_in_the_way_says_nothing() -> None:
    assert not [n for n in network_notes(CAPTIVE) if n.topic in ("vpn", "clash")]
    body = sign_in_notification(CAPTIVE, (), frozenset({"actions"})).body
    assert "VPN" not in body and "routes into" not in body
