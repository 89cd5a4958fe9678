"""Carrying resolver wiring out: systemd-resolved over D-Bus, resolv.conf by reading it.

Thin: it gathers facts (is org.freedesktop.resolve1 on the bus, what /etc/resolv.conf and
nsswitch.conf say, the link's index), hands them to portal/core/wiring.py, and performs what
that decided: SetLinkDNS / SetLinkDomains / SetLinkDefaultRoute / RevertLink on the dedicated
link. It must not decide anything itself, must never write /etc/resolv.conf (on NixOS and
openresolv systems the system owns that file; the stub is placed there at build time), and
must never touch resolved's global settings or a link it was not given.

The daemon calls `apply(names)` whenever the active overrides change; it is cheap to repeat.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.message import Message

from portal.core.wiring import (
    AF_INET,
    DEFAULT_LINK,
    LinkPlan,
    ResolvConf,
    ResolvedLink,
    WiringMode,
    choose_mode,
    describe_none,
    describe_resolv_conf,
    describe_resolved_link,
    format_server,
    nsswitch_uses_resolve,
    parse_resolv_conf,
    plan_resolved_link,
)
from portal.edges.bus import (
    BUS_DAEMON,
    BUS_DAEMON_PATH,
    CallFailed,
    add_match,
    call,
    close,
    connect,
    name_owner_changed,
    name_owner_rule,
)
from portal.errors import DaemonUnreachable, PortalError

log = logging.getLogger("portal")

RESOLVE1 = "org.freedesktop.resolve1"
RESOLVE1_PATH = "/org/freedesktop/resolve1"
MANAGER = "org.freedesktop.resolve1.Manager"
LINK = "org.freedesktop.resolve1.Link"


class WiringError(PortalError):
    """The resolver could not be told about the stub (resolved refused, link missing...)."""


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


class ResolverWiring:
    """Wire the DNS stub into the system's name resolution, and report whether it is.

    `bus` is "system" (where systemd-resolved lives), or a D-Bus address (tests run a private
    resolved on a private bus). The connection is opened on first use and kept.
    """

    def __init__(
        self,
        *,
        stub: str = "127.0.0.153",
        port: int = 53,
        mode: WiringMode | str = WiringMode.AUTO,
        link: str = DEFAULT_LINK,
        bus: str = "system",
        resolv_conf: str = "/etc/resolv.conf",
        nsswitch_conf: str = "/etc/nsswitch.conf",
    ) -> None:
        self.stub = stub
        self.port = port
        self.link = link
        self._requested = WiringMode(mode)
        self._bus_choice = bus
        self._resolv_conf = resolv_conf
        self._nsswitch_conf = nsswitch_conf
        self._bus: MessageBus | None = None
        self._routed = False  # this process has set the link since the last revert
        self._names: list[str] | None = None  # what the last apply() asked for
        self._follower: asyncio.Task[None] | None = None
        # One change at a time, in call order (asyncio.Lock is FIFO): interleaved SetLinkDomains
        # calls from two overlapping applies could leave the older list on the link.
        self._lock = asyncio.Lock()

    # --- facts -------------------------------------------------------------------------------

    async def _connect(self) -> MessageBus:
        if self._bus is None or not self._bus.connected:
            try:
                self._bus = await connect(self._bus_choice)
            except DaemonUnreachable as exc:
                raise WiringError(
                    f"cannot reach the system bus for systemd-resolved: {exc}"
                ) from exc
        return self._bus

    async def _call(
        self,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        *,
        destination: str = RESOLVE1,
        path: str = RESOLVE1_PATH,
        interface: str = MANAGER,
    ) -> list[Any]:
        bus = await self._connect()
        try:
            reply = await call(bus, destination, path, interface, member, signature, body)
        except CallFailed as exc:
            raise WiringError(
                f"{interface.rsplit('.', 1)[-1]}.{member} failed: {exc.name} {exc.text}"
            ) from None
        return list(reply.body)

    async def _resolved_running(self) -> bool:
        try:
            body = await self._call(
                "NameHasOwner",
                "s",
                [RESOLVE1],
                destination=BUS_DAEMON,
                path=BUS_DAEMON_PATH,
                interface=BUS_DAEMON,
            )
        except WiringError:
            return False  # no bus at all: certainly no resolved to wire
        return bool(body[0])

    def _resolv(self) -> tuple[ResolvConf | None, str]:
        text = _read(self._resolv_conf)
        try:
            target = os.path.realpath(self._resolv_conf)
        except OSError:
            target = ""
        return (parse_resolv_conf(text) if text is not None else None), target

    async def detect(self) -> WiringMode:
        """The mode in force: the requested one, or what `auto` finds on this machine now.

        Not cached: systemd-resolved may start after the daemon, and resolv.conf may be
        rewritten at any time. It costs one NameHasOwner call and two small file reads.
        """
        conf, target = self._resolv()
        running = False
        if self._requested is WiringMode.AUTO:
            running = await self._resolved_running()
        return choose_mode(
            self._requested,
            resolved_running=running,
            resolv_conf=conf,
            link_target=target,
            nss_resolve=nsswitch_uses_resolve(_read(self._nsswitch_conf) or ""),
        )

    def _ifindex(self) -> int:
        try:
            return socket.if_nametoindex(self.link)
        except OSError as exc:
            raise WiringError(
                f"no link {self.link}: the portal-link unit creates it when dns integration "
                "is 'resolved'"
            ) from exc

    # --- actions -----------------------------------------------------------------------------

    async def apply(self, names: list[str]) -> None:
        """Route exactly `names` (and their sub-names) to the stub. Raise WiringError."""
        async with self._lock:
            self._names = list(names)
            await self._apply(self._names)

    async def _apply(self, names: list[str]) -> None:
        if await self.detect() is not WiringMode.RESOLVED:
            return  # resolv.conf modes send every name to the stub already; nothing per name
        plan = plan_resolved_link(names, stub=self.stub, port=self.port)
        ifindex = self._ifindex()
        await self._ensure_following()
        self._routed = True  # even a partial failure below leaves something to revert
        await self._set_link(ifindex, plan)
        if plan.dropped:
            raise WiringError(
                f"systemd-resolved takes {len(plan.domains)} domains per link; "
                f"{len(plan.dropped)} overrides are not routed (first: {plan.dropped[0]})"
            )

    async def _ensure_following(self) -> None:
        """Start following resolved restarts (once), and wait until the subscription holds."""
        if self._follower is not None and not self._follower.done():
            return
        ready = asyncio.Event()
        self._follower = asyncio.ensure_future(self._follow_logged(ready))
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait({waiter, self._follower}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()

    async def _follow_logged(self, ready: asyncio.Event) -> None:
        try:
            await self.follow(ready)
        except WiringError as exc:
            log.warning("%s; not following systemd-resolved restarts until the next change", exc)

    async def _stop_following(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None and follower is not asyncio.current_task():
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    async def _set_link(self, ifindex: int, plan: LinkPlan) -> None:
        # Default route off first: between the calls the link must never catch every name.
        await self._call("SetLinkDefaultRoute", "ib", [ifindex, plan.default_route])
        if plan.port == 53:
            await self._call("SetLinkDNS", "ia(iay)", [ifindex, [list(d) for d in plan.dns]])
        else:
            servers = [[family, packed, plan.port, ""] for family, packed in plan.dns]
            await self._call("SetLinkDNSEx", "ia(iayqs)", [ifindex, servers])
        await self._call("SetLinkDomains", "ia(sb)", [ifindex, [list(d) for d in plan.domains]])

    async def revert(self) -> None:
        """Give the link back to resolved's defaults (no servers, no domains)."""
        async with self._lock:
            self._names = None
            await self._revert()

    async def _revert(self) -> None:
        await self._stop_following()
        if not self._routed and await self.detect() is not WiringMode.RESOLVED:
            return
        try:
            ifindex = self._ifindex()
        except WiringError:
            return  # no link, nothing routed through it
        await self._call("RevertLink", "i", [ifindex])
        self._routed = False

    async def describe(self) -> str:
        """One line for `portal status`: how (and whether) the stub is wired in."""
        mode = await self.detect()
        if mode is WiringMode.NONE:
            return describe_none()
        if mode is WiringMode.RESOLVED:
            try:
                state = await self._link_state()
            except WiringError as exc:
                return f"not wired: {exc}"
            return describe_resolved_link(state, stub=self.stub, port=self.port)
        conf, _ = self._resolv()
        text = describe_resolv_conf(conf, stub=self.stub, port=self.port)
        return text + " (openresolv)" if mode is WiringMode.RESOLVCONF and conf else text

    async def _link_state(self) -> ResolvedLink:
        try:
            ifindex = self._ifindex()
        except WiringError:
            return ResolvedLink(name=self.link, exists=False)
        (path,) = await self._call("GetLink", "i", [ifindex])
        (props,) = await self._call(
            "GetAll", "s", [LINK], path=path, interface="org.freedesktop.DBus.Properties"
        )
        servers: list[str] = []
        for family, packed, port, _name in props["DNSEx"].value:
            host = socket.inet_ntop(
                socket.AF_INET if family == AF_INET else socket.AF_INET6, packed
            )
            servers.append(format_server(host, port or 53))
        return ResolvedLink(
            name=self.link,
            exists=True,
            dns=tuple(servers),
            domains=tuple((str(n), bool(r)) for n, r in props["Domains"].value),
            default_route=bool(props["DefaultRoute"].value),
        )

    async def follow(self, ready: asyncio.Event | None = None) -> None:
        """Re-apply the last names whenever systemd-resolved (re)takes its bus name.

        apply() starts this by itself in resolved mode (and revert()/close() stop it); call it
        directly only to follow without applying.

        Link settings made over D-Bus live in resolved's memory: after a restart (a package
        upgrade, a NixOS switch) the link would be empty and the overrides silently unrouted
        until the next change. Runs until cancelled; raises WiringError if the bus goes away.
        `ready` is set once the subscription is in place.
        """
        bus = await self._connect()
        try:
            await add_match(bus, name_owner_rule(RESOLVE1))
        except CallFailed as exc:
            raise WiringError(f"DBus.AddMatch failed: {exc.name} {exc.text}") from None
        appeared = asyncio.Event()

        def on_message(msg: Message) -> None:
            if name_owner_changed(msg, RESOLVE1):  # a new owner, not a departure
                appeared.set()

        bus.add_message_handler(on_message)
        if ready is not None:
            ready.set()
        gone = asyncio.ensure_future(bus.wait_for_disconnect())
        try:
            while True:
                waiting = asyncio.ensure_future(appeared.wait())
                await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    waiting.cancel()
                    raise WiringError("lost the bus of systemd-resolved")
                appeared.clear()
                names = self._names
                if names is None:
                    continue  # nothing applied (or reverted since): nothing to restore
                try:
                    await self.apply(names)
                    log.info("systemd-resolved restarted; routed %d name(s) again", len(names))
                except WiringError as exc:
                    log.warning("%s, ignoring", exc)
        finally:
            gone.cancel()
            bus.remove_message_handler(on_message)

    async def close(self) -> None:
        await self._stop_following()
        if self._bus is not None:
            bus, self._bus = self._bus, None
            await close(bus)
