"""Network state without NetworkManager: networkd's link files and the primary network.

Pure: text and plain data in, model values out. The netlink edge reads the kernel tables and the
files and hands them here; nothing in this module touches a socket, a file or the clock.

Sources understood:
- resolv.conf(5) `nameserver` lines, read by core/resolvconf.py and passed in as upstreams;
- systemd-networkd's per-link state file (/run/systemd/netif/links/<ifindex>), whose `DNS=` line
  lists the link's servers and whose `CAPTIVE_PORTAL=` line carries the RFC 8910 API URI that
  networkd received by DHCP option 114 or an IPv6 RA;
- the kernel's links, addresses and default routes, already decoded into `Link`, `Address`
  and `Route` below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from portal.core.inet import MAX_SERVERS, is_loopback, parse_servers
from portal.core.model import Network, Upstream
from portal.core.ra import RaLink, live_dns

# A state file larger than this is not a real one; parse only its start.
MAX_TEXT_CHARS = 64 * 1024


@dataclass(frozen=True, slots=True)
class NetworkdLink:
    """What systemd-networkd recorded about one link."""

    dns: tuple[Upstream, ...] = ()
    captive_portal: str = ""  # RFC 8910 API URI, "" when none


@dataclass(frozen=True, slots=True)
class Link:
    """A network interface as the kernel reports it."""

    index: int
    name: str
    kind: str = ""  # "ethernet", "wifi", "veth", ... ("" when unknown)
    up: bool = True  # IFF_UP and a carrier (operstate not down)
    loopback: bool = False


@dataclass(frozen=True, slots=True)
class Address:
    """An address assigned to an interface."""

    index: int
    address: str  # textual IPv4/IPv6, no prefix length
    link_local: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """A default route in the main table."""

    index: int  # outgoing interface
    gateway: str  # "" for a device route without a next hop
    metric: int = 0
    family: int = 4  # 4 or 6


def parse_link_state(text: str) -> NetworkdLink:
    """The DNS servers and captive-portal URI from a networkd link state file."""
    values: dict[str, str] = {}
    for line in text[:MAX_TEXT_CHARS].splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    # The URI is passed on as networkd recorded it; core/detect.py judges it (RFC 8910: https).
    uri = values.get("CAPTIVE_PORTAL", "")
    return NetworkdLink(dns=parse_servers(values.get("DNS", "").split()), captive_portal=uri)


def primary_route(routes: Iterable[Route], links: Mapping[int, Link]) -> Route | None:
    """The default route the kernel would use: lowest metric on a link that is up, IPv4 first.

    IPv4 wins over IPv6 because captive portals intercept IPv4; ties keep the lowest ifindex so
    the answer does not depend on dump order.
    """
    usable = [
        r for r in routes if r.index in links and links[r.index].up and not links[r.index].loopback
    ]
    if not usable:
        return None
    return min(usable, key=lambda r: (r.family != 4, r.metric, r.index, r.gateway))


def network_from_tables(
    links: Mapping[int, Link],
    addresses: Iterable[Address],
    routes: Iterable[Route],
    *,
    link_states: Mapping[int, NetworkdLink],
    resolv_conf: tuple[Upstream, ...] = (),
    ra: Mapping[int, RaLink] | None = None,
    now: float = 0.0,
) -> Network | None:
    """The primary network as seen from kernel tables plus networkd's or resolv.conf's DNS.

    venue_dns: networkd's DNS for the route's link, else the non-loopback resolv.conf servers
    (a loopback server is a local resolver — possibly portal's own stub — not the venue's),
    then the RDNSS servers of the link's router advertisements (`ra`, whose lifetimes are
    judged at `now`, monotonic). api_uri: networkd's, else the RAs' RFC 8910 option.
    """
    route = primary_route(routes, links)
    if route is None:
        return None
    link = links[route.index]
    state = link_states.get(route.index, NetworkdLink())
    own = tuple(a.address for a in addresses if a.index == route.index and not a.link_local)
    venue = state.dns or tuple(s for s in resolv_conf if not is_loopback(s.host))
    advertised = (ra or {}).get(route.index, RaLink())
    venue_hosts = tuple(s.host for s in venue)
    venue_hosts += tuple(s for s in live_dns(advertised, now=now) if s not in venue_hosts)
    return Network(
        id=f"link:{link.name}:{route.gateway}",
        name=link.name,
        interface=link.name,
        kind=link.kind,
        addresses=tuple(sorted(own, key=lambda a: (":" in a, a))),
        venue_dns=venue_hosts,
        api_uri=state.captive_portal or advertised.captive_portal,
    )


def upstreams_from_tables(
    links: Mapping[int, Link],
    routes: Iterable[Route],
    *,
    link_states: Mapping[int, NetworkdLink],
    resolv_conf: tuple[Upstream, ...] = (),
    exclude: Iterable[Upstream] = (),
) -> tuple[Upstream, ...]:
    """Where the stub should forward: networkd's per-link servers, primary link first, else
    resolv.conf. `exclude` (the stub's own listen addresses) is dropped so it never forwards to
    itself when resolv.conf lists it first.
    """
    skip = set(exclude)
    route_list = list(routes)
    first = primary_route(route_list, links)
    order = sorted(
        (i for i in link_states if i in links and links[i].up),
        key=lambda i: (first is None or i != first.index, i),
    )
    servers: list[Upstream] = []
    for index in order:
        servers.extend(link_states[index].dns)
    if not servers:
        servers = list(resolv_conf)
    result: list[Upstream] = []
    for server in servers:
        if server not in skip and server not in result:
            result.append(server)
    return tuple(result[:MAX_SERVERS])
