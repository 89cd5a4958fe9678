"""Netlink edge: watch links, addresses and default routes when NetworkManager is absent.

`NetlinkWatcher.run()` joins the rtnetlink multicast groups first, then dumps the kernel's
tables, so no change falls between the two. Any later notification triggers a fresh dump (the
messages themselves are not parsed: a dump is small, and a dump cannot get out of step the way
applying deltas can after the kernel drops notifications with ENOBUFS). From the tables plus
systemd-networkd's link state files or a resolv.conf, core/netstate.py derives the network and
the upstreams; this module emits `NetworkChanged` and `UpstreamsChanged` when they change.

The one kind of notification that is read is RTM_NEWNDUSEROPT (group RTNLGRP_ND_USEROPT): the
options of an IPv6 router advertisement that the kernel has no use for, RDNSS (the venue's DNS
on an IPv6-only network) and RFC 8910's captive-portal URI among them. No table holds them, so
core/ra.py keeps them, per interface, until their lifetimes run out.

The sockets are plain `AF_NETLINK` ones: core/rtnetlink.py builds the requests and reads the
replies. A dump is answered by the kernel while we read it (the next part of the reply is made
during each recvmsg), so reading it blocks only for that: the socket's timeout is a guard.

It must not decide anything (core/netstate.py does), must not parse file formats or netlink
messages (core does), and never raises out of run() for kernel or file trouble: it logs
"..., ignoring" and carries on.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from portal.core import rtnetlink as rtnl
from portal.core.events import NetworkChanged, UpstreamsChanged
from portal.core.inet import parse_server
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
from portal.core.ra import RaLink, apply_options, live_dns, next_expiry
from portal.core.resolvconf import parse_resolv_conf

log = logging.getLogger(__name__)

Emit = Callable[[object], None]

GROUPS = rtnl.GROUPS

RCVBUF_BYTES = 1 << 20
MAX_FILE_BYTES = 64 * 1024
SETTLE_S = 0.05  # coalesce the burst of messages one DHCP lease or link flap produces
# networkd and DHCP clients write their state files just after the kernel change that woke us;
# look again a little later, only after real changes (no periodic work).
RECHECK_S = (1.0, 5.0)
RETRY_MAX_S = 30.0
DUMP_TIMEOUT_S = 2.0  # the kernel answers a dump at once; this only bounds a broken one
DUMP_ATTEMPTS = 3  # an interrupted dump (the table changed meanwhile) is asked again
GROW_ATTEMPTS = 3  # so is one that did not fit the buffer
TRUNCATED = "a reply did not fit the buffer"
# The kernel sends a dump in datagrams of at most 32 KiB (net/netlink/af_netlink.c), more only
# for a link with very many attributes: the buffer grows to what MSG_TRUNC reports.
RECV_BYTES = 64 * 1024

DEFAULT_RESOLV_CONF = Path("/etc/resolv.conf")
DEFAULT_NETWORKD_DIR = Path("/run/systemd/netif/links")
DEFAULT_SYSFS_NET = Path("/sys/class/net")
# resolv.conf lists the stub first on resolv.conf systems; never forward to it. The daemon
# should pass its real listen addresses; this default covers the default one.
DEFAULT_EXCLUDE = (Upstream("127.0.0.153"),)
SOL_NETLINK = getattr(socket, "SOL_NETLINK", 270)
NETLINK_ADD_MEMBERSHIP = 1  # linux/netlink.h

_UNSET: Any = object()

# what each dump request is answered with
_REPLY = {
    rtnl.RTM_GETLINK: rtnl.RTM_NEWLINK,
    rtnl.RTM_GETADDR: rtnl.RTM_NEWADDR,
    rtnl.RTM_GETROUTE: rtnl.RTM_NEWROUTE,
    rtnl.RTM_GETRULE: rtnl.RTM_NEWRULE,
}


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return f.read(MAX_FILE_BYTES).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        log.warning("cannot read %s: %s, ignoring", path, exc)
        return ""


def _wireless(sysfs_net: Path, name: str) -> bool:
    return (sysfs_net / name / "wireless").exists() or (sysfs_net / name / "phy80211").exists()


def open_socket(*, groups: int = 0) -> socket.socket:
    """A NETLINK_ROUTE socket, bound to `groups` (0: none, for dumps)."""
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
    )
    try:
        if groups:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


class Dumper:
    """Asks the kernel for whole tables over a socket of its own (no multicast groups)."""

    def __init__(self, *, timeout_s: float = DUMP_TIMEOUT_S) -> None:
        self.sock = open_socket()
        self.sock.settimeout(timeout_s)
        self.port: int = self.sock.getsockname()[0]
        # any start will do (no secret: only the kernel can answer a netlink socket)
        self.seq = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        self._buf = bytearray(RECV_BYTES)

    def close(self) -> None:
        self.sock.close()

    def dump(self, kind: int) -> list[bytes]:
        """The payloads of every message answering an RTM_GET* dump; OSError when it fails."""
        interrupted = 0
        for _ in range(DUMP_ATTEMPTS + GROW_ATTEMPTS):
            state, payloads, reason = self._dump_once(kind)
            if state is rtnl.DumpState.DONE:
                return payloads
            if state is rtnl.DumpState.INTERRUPTED:
                interrupted += 1
                if interrupted == DUMP_ATTEMPTS:
                    # still changing: take this one; the change's own notification brings a
                    # fresh dump right after
                    return payloads
                continue
            if reason != TRUNCATED:
                raise OSError(errno.EPROTO, reason)
        raise OSError(errno.EPROTO, "the dump did not complete")

    def _dump_once(self, kind: int) -> tuple[rtnl.DumpState, list[bytes], str]:
        self.seq = (self.seq + 1) & 0x7FFFFFFF
        dump = rtnl.Dump(seq=self.seq, port=self.port, kind=_REPLY[kind])
        self.sock.send(rtnl.dump_request(kind, seq=self.seq))
        while dump.state is rtnl.DumpState.RUNNING:
            size, (sender, _groups) = self.sock.recvfrom_into(
                self._buf, len(self._buf), socket.MSG_TRUNC
            )
            if sender != 0:
                continue  # only the kernel answers dumps
            if size > len(self._buf):
                # MSG_TRUNC reports the datagram's real size. Its messages are lost (perhaps
                # the NLMSG_DONE with them): drop the rest of this dump, then ask again with
                # room.
                self._buf = bytearray(2 * size)
                self._drain()
                return rtnl.DumpState.FAILED, [], TRUNCATED
            dump.feed(bytes(self._buf[:size]))
        return dump.state, dump.payloads, dump.error

    def _drain(self) -> None:
        """Read what is left of a dump. The kernel makes each next part of a dump while the
        previous one is read (netlink_recvmsg), so the dump is over when nothing is queued;
        until then it refuses a new dump on this socket (EBUSY)."""
        timeout_s = self.sock.gettimeout()
        self.sock.settimeout(0.0)
        try:
            while True:
                self.sock.recv_into(self._buf, len(self._buf), socket.MSG_TRUNC)
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(timeout_s)


def read_links(dumper: Dumper, *, sysfs_net: Path) -> dict[int, Link]:
    """Every link, by index, from one dump (wireless ones told by their sysfs entry)."""
    links: dict[int, Link] = {}
    for payload in dumper.dump(rtnl.RTM_GETLINK):
        msg = rtnl.parse_link(payload)
        if msg is not None:
            wireless = not msg.info_kind and _wireless(sysfs_net, msg.name)
            links[msg.index] = rtnl.to_link(msg, wireless=wireless)
    return links


def read_tables(
    dumper: Dumper, *, sysfs_net: Path
) -> tuple[dict[int, Link], list[Address], list[Route]]:
    """Links (by index), addresses and default routes, from one dump of each table."""
    links = read_links(dumper, sysfs_net=sysfs_net)
    addresses = [
        addr
        for payload in dumper.dump(rtnl.RTM_GETADDR)
        if (addr := rtnl.parse_address(payload)) is not None
    ]
    routes = [
        route
        for payload in dumper.dump(rtnl.RTM_GETROUTE)
        if (route := rtnl.parse_default_route(payload)) is not None
    ]
    return links, addresses, routes


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
        self._links: dict[int, Link] = {}
        self._ra: dict[int, RaLink] = {}  # what router advertisements said, per interface
        self._ra_expiry: asyncio.TimerHandle | None = None

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
        sock = open_socket(groups=GROUPS)
        try:
            try:
                # Group 20 is past what bind()'s bitmask of groups can name.
                sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, rtnl.RTNLGRP_ND_USEROPT)
            except OSError as exc:
                log.warning("cannot hear router advertisements' options: %s, ignoring", exc)
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._on_readable, sock)
            dumper = Dumper()
            try:
                self._dirty.set()
                while True:
                    await self._dirty.wait()
                    await asyncio.sleep(SETTLE_S)
                    self._dirty.clear()
                    self._refresh(dumper)
            finally:
                dumper.close()
        finally:
            for handle in self._rechecks:
                handle.cancel()
            self._rechecks.clear()
            if self._ra_expiry is not None:
                self._ra_expiry.cancel()
                self._ra_expiry = None
            loop.remove_reader(sock.fileno())
            sock.close()

    def _on_readable(self, sock: socket.socket) -> None:
        # Drain everything queued; the content does not matter, only that something changed.
        while True:
            try:
                data, (sender, _groups) = sock.recvfrom(65536)
                if not data:
                    break
                if sender == 0:  # only the kernel speaks for the tables
                    self._take_ra(data)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    log.warning("netlink receive failed: %s, ignoring", exc)
                    break
                # The kernel dropped notifications: a dump resynchronises anyway.
                log.debug("netlink receive buffer overflowed; re-reading the tables")
        self._dirty.set()

    def _take_ra(self, data: bytes) -> None:
        """Keep the options of a router advertisement (RTM_NEWNDUSEROPT); ignore the rest."""
        messages, _ = rtnl.split_messages(data)
        for msg in messages:
            if msg.type != rtnl.RTM_NEWNDUSEROPT:
                continue
            got = rtnl.parse_nduseropt(msg.payload)
            if got is None:
                continue
            link = self._links.get(got.index)
            name = link.name if link is not None else ""
            before = self._ra.get(got.index, RaLink())
            after = apply_options(before, got.options, ifname=name, now=time.monotonic())
            if after != before:
                log.debug("router advertisement on %s: %s", name or got.index, after)
                self._ra[got.index] = after

    def _ra_dns(self, network: Network | None) -> tuple[Upstream, ...]:
        """The primary link's RDNSS servers, as upstreams."""
        for index, link in self._links.items():
            if network is not None and link.name == network.interface:
                ra = self._ra.get(index, RaLink())
                servers = live_dns(ra, now=time.monotonic())
                return tuple(u for s in servers if (u := parse_server(s)) is not None)
        return ()

    def _schedule_ra_expiry(self) -> None:
        if self._ra_expiry is not None:
            self._ra_expiry.cancel()
            self._ra_expiry = None
        now = time.monotonic()
        when = next_expiry(self._ra.values(), now=now)
        if when is not None:  # only while a server with a lifetime is known: no idle wakeups
            self._ra_expiry = asyncio.get_running_loop().call_later(
                when - now + 0.01, self._dirty.set
            )

    def _refresh(self, dumper: Dumper) -> None:
        try:
            links, addresses, routes = read_tables(dumper, sysfs_net=self._sysfs_net)
        except OSError as exc:  # a failed dump must not stop the daemon; the next event retries
            log.warning("netlink dump failed: %s, ignoring", exc)
            return
        tables = (links, sorted(addresses, key=repr), sorted(routes, key=repr))
        if tables != self._tables:
            self._tables = tables
            self._schedule_rechecks()
        self._links = links
        self._ra = {i: ra for i, ra in self._ra.items() if i in links}  # a link gone: forget it
        self._schedule_ra_expiry()
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
            links,
            addresses,
            routes,
            link_states=states,
            resolv_conf=resolv,
            ra=self._ra,
            now=time.monotonic(),
        )
        upstreams = upstreams_from_tables(
            links, routes, link_states=states, resolv_conf=resolv, exclude=self._exclude
        )
        if network != self._last_network:
            self._last_network = network
            self._emit(NetworkChanged(network))
        # networkd's per-link servers win over resolv.conf (netstate.upstreams_from_tables)
        source = (
            "systemd-networkd"
            if any(s.dns for s in states.values())
            else f"resolv.conf ({self._resolv_conf})"
        )
        if not upstreams and (advertised := self._ra_dns(network)):
            # Nothing else names a server (an IPv6-only network with no RDNSS daemon writing
            # resolv.conf): the router's RDNSS is the only DNS there is.
            upstreams, source = advertised, "router advertisement (RDNSS)"
        if upstreams != self._last_upstreams:
            self._last_upstreams = upstreams
            self._emit(UpstreamsChanged(upstreams, source=source))

    def _schedule_rechecks(self) -> None:
        for handle in self._rechecks:
            handle.cancel()
        loop = asyncio.get_running_loop()
        self._rechecks = [loop.call_later(delay_s, self._dirty.set) for delay_s in RECHECK_S]
