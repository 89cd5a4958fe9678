"""portal.edges.paths against the real kernel, in a network namespace of our own: a network on a
veth, and the VPNs and bridges users have beside it (wg-quick's policy rules on a tun device as
wireguard-go makes it, OpenVPN's def1 split routes, Docker's bridge on the venue's subnet).

The kernel's answers are read in a child process inside the namespace (this file run as a
script, printing JSON); the test builds the namespace with `ip` and judges the answers with
core/paths.py's `assess`, as the daemon does.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from portal.core.paths import Hop, PathFacts, PathReport, PathTarget, assess
from portal.core.rtnetlink import Rule

WAIT_S = 20.0  # bound on any wait; never asserted

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a network namespace"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2 (ip)"),
]

WG_MARK = "0xca6c"
WG_TABLE = "51820"


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name

    def ip(self, *args: str) -> str:
        res = subprocess.run(
            ["ip", "-n", self.name, *args], capture_output=True, text=True, timeout=WAIT_S
        )
        assert res.returncode == 0, f"ip {' '.join(args)}: {res.stderr}"
        return res.stdout

    def observe(self, target: PathTarget) -> PathFacts:
        argv = ["ip", "netns", "exec", self.name, sys.executable, __file__, "--observe"]
        res = subprocess.run(
            argv, input=json.dumps(asdict(target)), capture_output=True, text=True,
            timeout=WAIT_S, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        return facts_from(json.loads(res.stdout))


ROOT = Path(__file__).resolve().parents[2]


def facts_from(raw: dict[str, Any]) -> PathFacts:
    def hops(items: list[dict[str, Any]]) -> tuple[Hop, ...]:
        return tuple(Hop(**h) for h in items)

    return PathFacts(
        interface=raw["interface"],
        internet=hops(raw["internet"]),
        bound=hops(raw["bound"]),
        resolvers=hops(raw["resolvers"]),
        venue=tuple((role, Hop(**h)) for role, h in raw["venue"]),
        rules=tuple(Rule(**r) for r in raw["rules"]),
    )


@pytest.fixture
def ns() -> Iterator[Netns]:
    """A laptop namespace: lap0 (a veth; its peer plays the venue) with 10.77.0.100/24 at
    metric 100, as NetworkManager adds it, and a default route via 10.77.0.1."""
    name = f"ptest-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=WAIT_S)
    n = Netns(name)
    try:
        n.ip("link", "set", "lo", "up")
        n.ip("link", "add", "lap0", "type", "veth", "peer", "name", "venue0")
        n.ip("link", "set", "venue0", "up")
        n.ip("link", "set", "lap0", "up")
        n.ip("addr", "add", "10.77.0.100/24", "dev", "lap0", "noprefixroute")
        n.ip("route", "add", "10.77.0.0/24", "dev", "lap0", "metric", "100", "src", "10.77.0.100")
        n.ip("route", "add", "default", "via", "10.77.0.1", "dev", "lap0", "metric", "100")
        yield n
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=WAIT_S)


TARGET = PathTarget(
    "lap0", venue=(("dns", "10.77.0.53"), ("portal", "10.77.0.80")), resolvers=("192.0.2.53",)
)


def wg_quick(n: Netns) -> None:
    """What wg-quick sets up for AllowedIPs = 0.0.0.0/0, on a tun device (wireguard-go)."""
    n.ip("tuntap", "add", "dev", "wg0", "mode", "tun")
    n.ip("addr", "add", "10.200.0.2/32", "dev", "wg0")
    n.ip("link", "set", "wg0", "up")
    n.ip("route", "add", "default", "dev", "wg0", "table", WG_TABLE)
    n.ip("rule", "add", "not", "fwmark", WG_MARK, "table", WG_TABLE)
    n.ip("rule", "add", "table", "main", "suppress_prefixlength", "0")


def def1(n: Netns) -> None:
    """OpenVPN's redirect-gateway def1 on its tun device."""
    n.ip("tuntap", "add", "dev", "tun0", "mode", "tun")
    n.ip("addr", "add", "10.8.0.6", "peer", "10.8.0.5", "dev", "tun0")
    n.ip("link", "set", "tun0", "up")
    for half in ("0.0.0.0/1", "128.0.0.0/1"):
        n.ip("route", "add", half, "via", "10.8.0.5", "dev", "tun0")


def test_no_vpn_no_clash(ns: Netns) -> None:
    facts = ns.observe(TARGET)
    assert [h.interface for h in facts.internet] == ["lap0"]
    assert {role: h.interface for role, h in facts.venue} == {
        "gateway": "lap0", "dns": "lap0", "portal": "lap0",
    }  # fmt: skip
    assert assess(facts) == PathReport()


def test_wg_quick_policy_routing(ns: Netns) -> None:
    wg_quick(ns)
    facts = ns.observe(TARGET)
    [internet] = facts.internet
    assert (internet.interface, internet.kind, internet.table) == ("wg0", "tun", int(WG_TABLE))
    # a socket bound to lap0 (portal's probes, the sign-in window) is not caught by the rule
    assert [h.interface for h in facts.bound] == ["lap0"]
    assert any(r.invert and r.fwmark == int(WG_MARK, 16) for r in facts.rules)
    report = assess(facts)
    assert (report.vpn, report.vpn_routing, report.vpn_dns, report.vpn_bypass) == (
        "wg0", "policy", True, True,
    )  # fmt: skip
    assert report.vpn_name == "tun/tap" and report.clashes == ()  # the venue stays on lap0


def test_def1_split_routes(ns: Netns) -> None:
    def1(ns)
    report = assess(ns.observe(TARGET))
    assert (report.vpn, report.vpn_routing, report.vpn_dns, report.vpn_bypass) == (
        "tun0", "split", True, True,
    )  # fmt: skip
    assert report.clashes == ()


def test_rules_that_catch_bound_sockets_too_are_reported(ns: Netns) -> None:
    """A VPN that also puts an unreachable default route in its table (a routing kill switch):
    a socket bound to lap0 skips the table's route via wg0 but meets the unreachable one, which
    ends the lookup. portal says the sign-in window cannot get around it."""
    wg_quick(ns)
    ns.ip("route", "add", "unreachable", "default", "metric", "4096", "table", WG_TABLE)
    report = assess(ns.observe(TARGET))
    assert report.vpn == "wg0" and report.vpn_bypass is False


def test_docker_bridge_on_the_venues_subnet(ns: Netns) -> None:
    # Docker's bridge, made before the network came: its connected route has metric 0
    ns.ip("link", "add", "br-3f2a", "type", "bridge")
    ns.ip("addr", "add", "10.77.0.254/24", "dev", "br-3f2a")
    ns.ip("link", "set", "br-3f2a", "up")
    report = assess(ns.observe(TARGET))
    assert report.vpn == ""
    assert [c.format() for c in report.clashes] == [
        "gateway 10.77.0.1 br-3f2a",
        "dns 10.77.0.53 br-3f2a",
        "portal 10.77.0.80 br-3f2a",
    ]
    assert {c.owner for c in report.clashes} == {"Docker"}


def test_a_bridge_on_part_of_the_subnet(ns: Netns) -> None:
    ns.ip("link", "add", "virbr0", "type", "bridge")
    ns.ip("addr", "add", "10.77.0.129/25", "dev", "virbr0")
    ns.ip("link", "set", "virbr0", "up")
    report = assess(ns.observe(PathTarget("lap0")))
    assert [c.format() for c in report.clashes] == ["subnet 10.77.0.129 virbr0"]  # its own
    assert report.clashes[0].owner == "libvirt"


# --- the child: ask the kernel from inside the namespace -------------------------------------


def _child(argv: list[str]) -> int:
    from portal.edges.netlink import Dumper
    from portal.edges.paths import observe

    raw = json.loads(sys.stdin.read())
    target = PathTarget(
        raw["interface"],
        venue=tuple(tuple(v) for v in raw["venue"]),  # type: ignore[misc]
        resolvers=tuple(raw["resolvers"]),
    )
    dumper = Dumper()
    try:
        facts = observe(dumper, target, sysfs_net=Path("/sys/class/net"))
    finally:
        dumper.close()
    print(json.dumps(asdict(facts)))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
