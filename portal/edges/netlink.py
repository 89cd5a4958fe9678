"""Netlink edge: watch links, addresses and default routes when NetworkManager is absent.

`NetlinkWatcher.run()` joins the rtnetlink multicast groups first, then dumps the kernel's
tables, so no change falls between the two. Any later notification triggers a fresh dump (the
messages themselves are not parsed: a dump is small, and a dump cannot get out of step the way
applying deltas can after the kernel drops notifications with ENOBUFS). From the tables plus
systemd-networkd's link state files or a resolv.conf, core/netstate.py derives the network and
the upstreams; this module emits `NetworkChanged` and `UpstreamsChanged` when they change.

It must not decide anything (core/netstate.py does), must not parse file formats (ditto), and
never raises out of run() for kernel or file trouble: it logs "..., ignoring" and carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute

from portal.core.events import NetworkChanged, UpstreamsChanged
from portal.core.model import Network, Upstream
from portal.core.netstate import (
    Address,
    Link,
    NetworkdLink,
    Route,
    network_from_tables,
    parse_link_state,
    upstreams_from_tables,
)
from portal.core.resolvconf import parse_resolv_conf

log = logging.getLogger(__name__)

Emit = Callable[[object], None]

# rtnetlink multicast groups (linux/rtnetlink.h, the legacy bitmask form accepted by bind()).
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
)

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
ARPHRD_ETHER = 1
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_LINK = 253

RCVBUF_BYTES = 1 << 20
MAX_FILE_BYTES = 64 * 1024
SETTLE_S = 0.05  # coalesce the burst of messages one DHCP lease or link flap produces
# networkd and DHCP clients write their state files just after the kernel change that woke us;
# look again a little later, only after real changes (no periodic work).
RECHECK_S = (1.0, 5.0)
RETRY_MAX_S = 30.0

DEFAULT_RESOLV_CONF = Path("/etc/resolv.conf")
DEFAULT_NETWORKD_DIR = Path("/run/systemd/netif/links")
DEFAULT_SYSFS_NET = Path("/sys/class/net")
# resolv.conf lists the stub first on resolv.conf systems; never forward to it. The daemon
# should pass its real listen addresses; this default covers the default one.
DEFAULT_EXCLUDE = (Upstream("127.0.0.153"),)

_UNSET: Any = object()


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return f.read(MAX_FILE_BYTES).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        log.warning("cannot read %s: %s, ignoring", path, exc)
        return ""


def _link(msg: Any, sysfs_net: Path) -> Link | None:
    index = msg.get("index")
    name = msg.get("ifname")
    if not isinstance(index, int) or not isinstance(name, str):
        return None
    flags = int(msg.get("flags") or 0)
    operstate = str(msg.get("operstate") or "UNKNOWN")
    kind = ""
    with contextlib.suppress(Exception):
        kind = str(msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "")
    if not kind:
        if (sysfs_net / name / "wireless").exists() or (sysfs_net / name / "phy80211").exists():
            kind = "wifi"
        elif msg.get("ifi_type") == ARPHRD_ETHER:
            kind = "ethernet"
    return Link(
        index=index,
        name=name,
        kind=kind,
        # "UNKNOWN" is what drivers without carrier reporting say (tun, some veth setups).
        up=bool(flags & IFF_UP) and operstate in ("UP", "UNKNOWN"),
        loopback=bool(flags & IFF_LOOPBACK),
    )


def _address(msg: Any) -> Address | None:
    index = msg.get("index")
    # IFA_LOCAL is our address on point-to-point links; IFA_ADDRESS is then the peer.
    text = msg.get("local") or msg.get("address")
    if not isinstance(index, int) or not isinstance(text, str):
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    link_local = addr.is_link_local or msg.get("scope") == RT_SCOPE_LINK
    return Address(index=index, address=str(addr), link_local=link_local)


def _default_route(msg: Any) -> Route | None:
    if msg.get("dst_len") != 0 or msg.get("type") != RTN_UNICAST:
        return None
    if (msg.get("table") or RT_TABLE_MAIN) != RT_TABLE_MAIN:
        return None
    family = 6 if msg.get("family") == socket.AF_INET6 else 4
    oif = msg.get("oif")
    gateway = msg.get("gateway")
    if oif is None:
        # A multipath default route: the first next hop stands for it.
        hops = msg.get("multipath") or []
        if not hops:
            return None
        oif = hops[0].get("oif")
        gateway = hops[0].get("gateway")
    if not isinstance(oif, int):
        return None
    return Route(
        index=oif,
        gateway=str(gateway or ""),
        metric=int(msg.get("priority") or 0),
        family=family,
    )


class NetlinkWatcher:
    """Watches rtnetlink and emits NetworkChanged and UpstreamsChanged.

    Paths are injectable for tests and for unusual systems: `resolv_conf` (None to ignore it),
    `networkd_dir` (systemd-networkd's per-link state files), `sysfs_net` (to tell Wi-Fi links).
    `exclude_upstreams` are the stub's own listen addresses, never to be forwarded to.
    """

    def __init__(
        self,
        emit: Emit,
        *,
        resolv_conf: str | os.PathLike[str] | None = DEFAULT_RESOLV_CONF,
        networkd_dir: str | os.PathLike[str] = DEFAULT_NETWORKD_DIR,
        sysfs_net: str | os.PathLike[str] = DEFAULT_SYSFS_NET,
        exclude_upstreams: Iterable[Upstream] = DEFAULT_EXCLUDE,
    ) -> None:
        self._emit = emit
        self._resolv_conf = Path(resolv_conf) if resolv_conf else None
        self._networkd_dir = Path(networkd_dir)
        self._sysfs_net = Path(sysfs_net)
        self._exclude = tuple(exclude_upstreams)
        self._dirty = asyncio.Event()
        self._tables: object = _UNSET
        self._rechecks: list[asyncio.TimerHandle] = []
        self._last_network: Network | None = _UNSET
        self._last_upstreams: tuple[Upstream, ...] = _UNSET

    async def run(self) -> None:
        """Watch until cancelled. Never raises for kernel or file trouble."""
        delay_s = 0.5
        while True:
            try:
                await self._watch()
            except (OSError, ValueError, RuntimeError) as exc:
                log.warning("watching netlink failed: %s, retrying in %ss", exc, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RETRY_MAX_S)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        # Subscribe first: the multicast socket exists before the dump starts.
        sock = socket.socket(
            socket.AF_NETLINK,
            socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            socket.NETLINK_ROUTE,
        )
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            sock.bind((0, GROUPS))
            loop.add_reader(sock.fileno(), self._on_readable, sock)
            ipr = AsyncIPRoute()
            try:
                self._dirty.set()
                while True:
                    await self._dirty.wait()
                    await asyncio.sleep(SETTLE_S)
                    self._dirty.clear()
                    await self._refresh(ipr)
            finally:
                ipr.close()
        finally:
            for handle in self._rechecks:
                handle.cancel()
            self._rechecks.clear()
            loop.remove_reader(sock.fileno())
            sock.close()

    def _on_readable(self, sock: socket.socket) -> None:
        # Drain everything queued; the content does not matter, only that something changed.
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
                # The kernel dropped notifications: a dump resynchronises anyway.
                log.debug("netlink receive buffer overflowed; re-reading the tables")
        self._dirty.set()

    async def _refresh(self, ipr: AsyncIPRoute) -> None:
        try:
            links: dict[int, Link] = {}
            async for msg in await ipr.link("dump"):
                link = _link(msg, self._sysfs_net)
                if link is not None:
                    links[link.index] = link
            addresses = []
            async for msg in await ipr.addr("dump"):
                addr = _address(msg)
                if addr is not None:
                    addresses.append(addr)
            routes = []
            async for msg in await ipr.route("dump"):
                route = _default_route(msg)
                if route is not None:
                    routes.append(route)
        except Exception as exc:  # a failed dump must not stop the daemon; the next event retries
            log.warning("netlink dump failed: %s, ignoring", exc)
            return
        tables = (links, sorted(addresses, key=repr), sorted(routes, key=repr))
        if tables != self._tables:
            self._tables = tables
            self._schedule_rechecks()
        states: dict[int, NetworkdLink] = {}
        for index, link in links.items():
            if link.up and not link.loopback:
                text = _read_text(self._networkd_dir / str(index))
                if text:
                    states[index] = parse_link_state(text)
        resolv = (
            parse_resolv_conf(_read_text(self._resolv_conf)).upstreams if self._resolv_conf else ()
        )
        network = network_from_tables(
            links, addresses, routes, link_states=states, resolv_conf=resolv
        )
        upstreams = upstreams_from_tables(
            links, routes, link_states=states, resolv_conf=resolv, exclude=self._exclude
        )
        if network != self._last_network:
            self._last_network = network
            self._emit(NetworkChanged(network))
        if upstreams != self._last_upstreams:
            self._last_upstreams = upstreams
            self._emit(UpstreamsChanged(upstreams))

    def _schedule_rechecks(self) -> None:
        for handle in self._rechecks:
            handle.cancel()
        loop = asyncio.get_running_loop()
        self._rechecks = [loop.call_later(delay_s, self._dirty.set) for delay_s in RECHECK_S]
