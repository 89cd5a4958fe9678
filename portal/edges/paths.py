"""The paths edge: ask the kernel where the network's traffic goes (VPNs, address clashes).

`PathWatcher.run()` joins the rtnetlink groups for links, routes and policy rules first, then
answers the daemon's `watch(target)` (core/paths.py PathTarget; None stops it) by asking the
kernel, as `ip route get fibmatch ADDR` does, where each address of interest goes, and emits
`PathsObserved(facts)` (core/events.py) when the answers change. A later change of links,
routes or rules asks again; nothing is polled, so an idle network costs no wakeup.

Every question is one RTM_GETROUTE request on a netlink socket of its own, answered by the
kernel at once (nothing is sent on the network); links and rules are dumped beside it with
portal/edges/netlink.py's `Dumper`. It must not decide anything (core/paths.py does) and never
raises out of run() for kernel trouble: it logs "..., ignoring" and carries on.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from pathlib import Path

from portal.core import rtnetlink as rtnl
from portal.core.events import PathsObserved
from portal.core.paths import INTERNET_PROBES, Hop, PathFacts, PathTarget, hop_of, subnet_probes
from portal.edges.netlink import DEFAULT_SYSFS_NET, Dumper, open_socket

log = logging.getLogger(__name__)

Emit = Callable[[object], None]


def _nobody(_event: object) -> None:
    pass


GROUPS = (
    rtnl.RTMGRP_LINK
    | rtnl.RTMGRP_IPV4_ROUTE
    | rtnl.RTMGRP_IPV6_ROUTE
    | rtnl.RTMGRP_IPV4_RULE
    | rtnl.RTMGRP_IPV6_RULE
)
SETTLE_S = 0.05  # coalesce the burst one change (a VPN coming up) makes
RETRY_MAX_S = 30.0
QUERY_TIMEOUT_S = 2.0  # the kernel answers at once; this bounds a broken answer only


class PathWatcher:
    def __init__(self, *, sysfs_net: str | Path = DEFAULT_SYSFS_NET) -> None:
        self._emit: Emit = _nobody
        self._sysfs_net = Path(sysfs_net)
        self._target: PathTarget | None = None
        self._dirty = asyncio.Event()
        self._last: PathFacts | None = None

    def watch(self, target: PathTarget | None) -> None:
        """What to ask about from now on (None: nothing, no network)."""
        if target != self._target:
            self._target = target
            self._dirty.set()

    async def run(self, emit: Emit) -> None:
        """Watch until cancelled, emitting PathsObserved. Never raises for kernel trouble."""
        self._emit = emit
        delay_s = 0.5
        while True:
            try:
                await self._watch()
            except (OSError, ValueError) as exc:
                log.warning("watching routes failed: %s, retrying in %ss", exc, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RETRY_MAX_S)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        sock = open_socket(groups=GROUPS)  # subscribe first: no change falls in between
        try:
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._on_readable, sock)
            dumper = Dumper(timeout_s=QUERY_TIMEOUT_S)
            try:
                self._dirty.set()
                while True:
                    await self._dirty.wait()
                    await asyncio.sleep(SETTLE_S)
                    self._dirty.clear()
                    target = self._target
                    if target is None:
                        self._last = None
                        continue
                    try:
                        facts = observe(dumper, target, sysfs_net=self._sysfs_net)
                    except OSError as exc:
                        log.warning("asking the kernel for routes failed: %s, ignoring", exc)
                        continue
                    if facts != self._last and target == self._target:
                        self._last = facts
                        self._emit(PathsObserved(facts))
            finally:
                dumper.close()
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()

    def _on_readable(self, sock: socket.socket) -> None:
        while True:
            try:
                if not sock.recv(65536):
                    break
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    log.warning("netlink receive failed: %s, ignoring", exc)
                    break
        self._dirty.set()


def query(dumper: Dumper, address: str, *, oif: int = 0) -> rtnl.RouteEntry | int | None:
    """Where the kernel sends `address` (from a socket bound to `oif`, when given)."""
    dumper.seq = (dumper.seq + 1) & 0x7FFFFFFF
    seq = dumper.seq
    try:
        request = rtnl.route_request(address, seq=seq, oif=oif)
    except ValueError:
        return None
    dumper.sock.send(request)
    buf = bytearray(65536)
    while True:
        size, (sender, _groups) = dumper.sock.recvfrom_into(buf)
        if sender != 0:
            continue  # only the kernel answers
        answer = rtnl.route_reply(bytes(buf[:size]), seq=seq)
        if answer is not None:
            return answer


def observe(dumper: Dumper, target: PathTarget, *, sysfs_net: Path) -> PathFacts:
    """One round of questions to the kernel about `target`."""
    from portal.edges.netlink import read_links

    links = read_links(dumper, sysfs_net=sysfs_net)
    index = next((i for i, link in links.items() if link.name == target.interface), 0)
    routes = [r for payload in dumper.dump(rtnl.RTM_GETROUTE) if (r := rtnl.parse_route(payload))]
    rules = tuple(
        rule for payload in dumper.dump(rtnl.RTM_GETRULE) if (rule := rtnl.parse_rule(payload))
    )

    def hop(address: str, *, oif: int = 0) -> rtnl.RouteEntry | int | None:
        return query(dumper, address, oif=oif)

    internet = tuple(
        hop_of(a, answer, links)
        for a in INTERNET_PROBES
        if isinstance(answer := hop(a), rtnl.RouteEntry)
    )
    bound = (
        tuple(
            hop_of(a, answer, links)
            for a in INTERNET_PROBES
            if isinstance(answer := hop(a, oif=index), rtnl.RouteEntry)
        )
        if index
        else ()
    )
    gateways = [
        ("gateway", r.gateway)
        for r in routes
        if r.oif == index and r.prefix_len == 0 and r.gateway and r.table == rtnl.RT_TABLE_MAIN
    ]
    wanted = [*gateways, *target.venue, *subnet_probes(index, routes)] if index else []
    venue: list[tuple[str, Hop]] = []
    asked: set[str] = set()
    for role, address in wanted:
        if address not in asked:  # one role per address: the first (gateway before subnet)
            asked.add(address)
            venue.append((role, hop_of(address, hop(address), links)))
    return PathFacts(
        interface=target.interface,
        internet=internet,
        bound=bound,
        resolvers=tuple(hop_of(a, hop(a), links) for a in target.resolvers),
        venue=tuple(venue),
        rules=rules,
    )
