"""Where the network's traffic goes: VPNs and address clashes, decided from the kernel's answers.

    PathTarget              what to ask the kernel about (the daemon's side)
    Hop, PathFacts          what it answered (the paths edge's side, portal/edges/paths.py)
    assess(facts, vpns=)    -> PathReport: the VPN in the way, and the clashes

The edge asks the kernel where each address goes, as `ip route get fibmatch ADDR` does (one
RTM_GETROUTE per address): a public address (is the internet reached through the network's own
interface, or a VPN?), the user's resolvers (is DNS going through a VPN?), the venue's gateway,
DNS servers and portal address and parts of its subnet that other routes claim (do they go out
the network's interface, or into a local bridge?), and the public address once more as a socket
bound to the network's interface would ask (SO_BINDTODEVICE: do portal's probes and sign-in
window get around the VPN?). Everything is decided here.

VPNs: traffic to the internet leaving by another interface than the network's is a VPN when
  - it was routed there by a policy rule's table (wg-quick: `not fwmark 0xca6c lookup 51820`
    with `suppress_prefixlength 0` on main): "policy";
  - or by routes more specific than the default (OpenVPN's `redirect-gateway def1`,
    WireGuard's AllowedIPs split into 0.0.0.0/1 and 128.0.0.0/1): "split";
  - or by the default route itself on a tunnel's link (WireGuard, tun/tap, PPP, IP-in-IP,
    GRE, xfrm) or one NetworkManager runs as a VPN: "default".
  A second ordinary interface with a better default route is no VPN (it is the network then).
  DNS through a VPN: the user's resolvers are reached through it (also when only DNS is).

Clashes: a venue address (gateway, DNS, portal, part of its subnet) that the kernel sends out
another interface than the network's by a route of its own (not a VPN's catch-all): Docker's
bridges (docker0, br-*), libvirt's virbr*, Podman's and CNI's, LXC's, VirtualBox's, or any
other. The usual fix depends on who made it.

Pure: plain data in (core/rtnetlink.py values and text), plain data out; no sockets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from portal.core.netstate import Link
from portal.core.owners import owner_of
from portal.core.rtnetlink import RT_TABLE_MAIN, RTN_LOCAL, RTN_UNICAST, RouteEntry, Rule

# Any public address will do: the kernel only looks the route up, nothing is sent.
INTERNET_PROBES = ("1.1.1.1", "2606:4700:4700::1111")

# Link kinds (IFLA_INFO_KIND, or "ppp" for ARPHRD_PPP) that are tunnels, for people.
TUNNEL_KINDS = {
    "wireguard": "WireGuard",
    "tun": "tun/tap",
    "ppp": "PPP",
    "ipip": "IP-in-IP",
    "sit": "IPv6-in-IPv4",
    "ip6tnl": "IPv6 tunnel",
    "gre": "GRE",
    "ip6gre": "GRE",
    "vti": "IPsec",
    "vti6": "IPsec",
    "xfrm": "IPsec",
}
# The longest prefix still read as "everything, split in parts" (def1 uses /1).
SPLIT_MAX_PREFIX = 7


@dataclass(frozen=True, slots=True)
class PathTarget:
    """What the daemon wants to know about: the network's interface, the venue's addresses by
    role ("dns", "portal"; the edge adds "gateway" and "subnet" itself) and the resolvers."""

    interface: str
    venue: tuple[tuple[str, str], ...] = ()
    resolvers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Hop:
    """Where the kernel sends one address."""

    address: str
    interface: str = ""  # "" when there is no route
    kind: str = ""  # the interface's kind ("veth", "bridge", "tun", "wireguard", ...)
    table: int = RT_TABLE_MAIN
    prefix_len: int = 0  # of the route that matched
    gateway: str = ""
    local: bool = False  # an address of this machine


@dataclass(frozen=True, slots=True)
class PathFacts:
    """What the kernel's routes and rules say about one interface's paths (edges/paths.py)."""

    interface: str
    internet: tuple[Hop, ...] = ()  # INTERNET_PROBES that have a route, IPv4 first
    bound: tuple[Hop, ...] = ()  # the same, asked as a socket bound to `interface`
    resolvers: tuple[Hop, ...] = ()
    venue: tuple[tuple[str, Hop], ...] = ()  # (role, hop)
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class NmVpn:
    """A VPN or WireGuard connection NetworkManager has active (besides the network's own)."""

    name: str
    kind: str  # "vpn" or "wireguard"
    interface: str = ""


@dataclass(frozen=True, slots=True)
class Clash:
    """A venue address routed into another interface (a local bridge, say), not the venue's."""

    role: str  # "gateway", "dns", "portal", "subnet"
    address: str
    interface: str
    owner: str = ""  # "Docker", "libvirt", ... or "" when unknown

    def format(self) -> str:
        """ROLE ADDRESS INTERFACE, as the status lists it."""
        return f"{self.role} {self.address} {self.interface}"


@dataclass(frozen=True, slots=True)
class PathReport:
    """What stands between the user and the venue: a VPN in the way, and address clashes."""

    vpn: str = ""  # the VPN's interface ("" when none is in the way)
    vpn_name: str = ""  # NetworkManager's name for it, or its kind ("WireGuard", "tun/tap")
    vpn_routing: str = ""  # "policy", "split", "default", or "" (DNS only)
    vpn_dns: bool = False  # the user's resolvers are reached through it
    vpn_bypass: bool = True  # a socket bound to the network's interface gets around it
    clashes: tuple[Clash, ...] = ()


def hop_of(address: str, route: RouteEntry | int | None, links: dict[int, Link]) -> Hop:
    """The Hop for the kernel's answer about `address` (a route, or the errno it refused
    with, or None for no answer)."""
    if not isinstance(route, RouteEntry):
        return Hop(address)
    link = links.get(route.oif)
    return Hop(
        address,
        interface=link.name if link else "",
        kind=link.kind if link else "",
        table=route.table,
        prefix_len=route.prefix_len,
        gateway=route.gateway,
        local=route.type == RTN_LOCAL,
    )


def subnet_probes(
    interface_index: int, routes: Iterable[RouteEntry]
) -> tuple[tuple[str, str], ...]:
    """("subnet", address) for each part of the network's own subnets that another interface's
    route claims as specifically or more: an address in the overlap, for the kernel to say
    which route wins (an equal prefix with a lower metric wins, as Docker's does over
    NetworkManager's). Only main-table unicast routes count."""

    def net(r: RouteEntry) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        if not r.destination or not r.prefix_len or r.table != RT_TABLE_MAIN:
            return None
        n = ipaddress.ip_network(f"{r.destination}/{r.prefix_len}", strict=False)
        # every link has fe80::/64: no venue's subnet, no clash
        return None if n.is_link_local or n.is_multicast else n

    mine = [n for r in routes if r.oif == interface_index and (n := net(r)) is not None]
    out: list[tuple[str, str]] = []
    for r in routes:
        theirs = net(r) if r.oif != interface_index and r.type == RTN_UNICAST else None
        if theirs is None:
            continue
        for own in mine:
            if theirs.version == own.version and theirs.subnet_of(own):  # type: ignore[arg-type]
                # the first host of the overlap (the network address itself for a /32)
                host = theirs[1] if theirs.num_addresses > 2 else theirs[0]
                item = ("subnet", str(host))
                if item not in out:
                    out.append(item)
    return tuple(out)


def _routing(hop: Hop) -> str:
    if hop.table not in (RT_TABLE_MAIN, 0):
        return "policy"
    if 0 < hop.prefix_len <= SPLIT_MAX_PREFIX:
        return "split"
    return "default"


def assess(facts: PathFacts, *, vpns: Iterable[NmVpn] = ()) -> PathReport:
    """The VPN in the way of the network and the venue addresses routed elsewhere."""
    nm = {v.interface: v for v in vpns if v.interface}
    names = [v.name for v in vpns]
    own = facts.interface
    vpn: Hop | None = None
    routing = ""
    for hop in facts.internet:
        if not hop.interface or hop.interface == own or hop.local:
            continue
        style = _routing(hop)
        if style != "default" or hop.kind in TUNNEL_KINDS or hop.interface in nm:
            vpn, routing = hop, style
            break
    tunnels = {vpn.interface} if vpn else set()
    dns_hops = [
        h
        for h in facts.resolvers
        if h.interface
        and h.interface != own
        and not h.local
        and (h.interface in tunnels or h.kind in TUNNEL_KINDS or h.interface in nm)
    ]
    if vpn is None and dns_hops:
        vpn = dns_hops[0]  # only DNS goes through it
    report = PathReport(clashes=_clashes(facts))
    if vpn is None:
        return report
    label = nm[vpn.interface].name if vpn.interface in nm else ""
    if not label and len(names) == 1:
        label = names[0]  # NM's VPN runs on a tunnel it does not name as its device
    return PathReport(
        vpn=vpn.interface,
        vpn_name=label or TUNNEL_KINDS.get(vpn.kind, vpn.kind),
        vpn_routing=routing,
        vpn_dns=any(h.interface == vpn.interface for h in dns_hops),
        vpn_bypass=bool(facts.bound) and all(h.interface == own for h in facts.bound),
        clashes=report.clashes,
    )


def _clashes(facts: PathFacts) -> tuple[Clash, ...]:
    out: list[Clash] = []
    for role, hop in facts.venue:
        # a local hop counts too: the venue's address is this machine's own, on a bridge
        if not hop.interface or hop.interface == facts.interface:
            continue
        if not hop.local and _routing(hop) != "default":
            # caught by a VPN's catch-all (def1's halves, wg-quick's table) like all the
            # internet: the VPN's report says what that does; a route for the venue's own
            # addresses (a VPN pushing 10.0.0.0/8) is a clash
            continue
        clash = Clash(role, hop.address, hop.interface, owner_of(hop.interface)[0])
        if clash not in out:
            out.append(clash)
    return tuple(out)
