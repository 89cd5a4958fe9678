"""Carrying resolver wiring out: systemd-resolved over D-Bus, resolv.conf through the helper.

Thin: it gathers facts (is org.freedesktop.resolve1 on the bus, what /etc/resolv.conf and
nsswitch.conf say, the link's index), hands them to portal/core/wiring.py, and performs what
that decided:

- systemd-resolved: SetLinkDefaultRoute / SetLinkDNS / SetLinkDomains / SetLinkDNSOverTLS /
  SetLinkDNSSEC / RevertLink on the dedicated link, one route-only domain per name;
- resolv.conf (NetworkManager writing it itself or through resolvconf/openresolv, dhclient,
  dhcpcd, by hand): the stub request in the daemon's runtime directory, which the root helper
  `portal wire` (portal-wire.path) turns into the stub's line at the top of resolv.conf.

It follows resolv.conf with inotify, so the status line (and the system's own servers, which
the daemon forwards to) are current after any rewrite. It must not decide anything itself,
must never write /etc/resolv.conf (it is root's; the helper does), and must never touch
resolved's global settings or a link it was not given.

The daemon calls `apply(names, episode=...)` whenever the names answering on this network or
the portal episode change; it is cheap to repeat. `close()` at stop leaves resolution as the
system has it: the link reverted, the request withdrawn.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.message import Message

from portal.core.wiring import (
    AF_INET,
    DEFAULT_LINK,
    LinkPlan,
    ResolvedLink,
    WiringMode,
    choose_mode,
    describe_none,
    describe_resolv_wiring,
    describe_resolved_link,
    format_server,
    nsswitch_uses_resolve,
    parse_resolv_conf,
    plan_resolv_conf,
    plan_resolved_link,
    system_servers,
    wants_stub,
)
from portal.edges import resolv_conf
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
RESOLV_CONF_MODES = (WiringMode.FILE, WiringMode.RESOLVCONF)
# How long apply() waits for the helper to put the stub first (it takes a tenth of a second or
# two), so that a lookup right after `portal add` already goes through the stub.
HELPER_WAIT_S = 2.0


class WiringError(PortalError):
    """The resolver could not be told about the stub (resolved refused, link missing...)."""


def _read(path: str) -> str | None:
    return resolv_conf.read_text(path)


class ResolverWiring:
    """Wire the DNS stub into the system's name resolution while it has work; report whether
    it is.

    `bus` is "system" (where systemd-resolved lives), or a D-Bus address (tests run a private
    resolved on a private bus). The connection is opened on first use and kept. `request` is
    the file the helper reads; `helper` says whether something acts on it (None: whenever
    systemd runs, which starts portal-wire.path). `on_change` is called (on the loop) after
    resolv.conf changed, so the caller can read `describe()` and `system_servers()` again.
    """

    def __init__(
        self,
        *,
        stub: str = "127.0.0.153",
        port: int = 53,
        mode: WiringMode | str = WiringMode.AUTO,
        link: str = DEFAULT_LINK,
        bus: str = "system",
        resolv_conf: str = resolv_conf.DEFAULT_RESOLV_CONF,
        nsswitch_conf: str = "/etc/nsswitch.conf",
        request: str = resolv_conf.DEFAULT_REQUEST,
        helper: bool | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.stub = stub
        self.port = port
        self.link = link
        self._requested = WiringMode(mode)
        self._bus_choice = bus
        self._resolv_conf = resolv_conf
        self._nsswitch_conf = nsswitch_conf
        self._request = request
        self._helper = os.path.isdir("/run/systemd/system") if helper is None else helper
        self._on_change = on_change
        self._bus: MessageBus | None = None
        self._routed = False  # this process has set the link since the last revert
        self._names: list[str] | None = None  # what the last apply() asked for
        self._episode = False
        self._wanted = False  # the stub has work (the last apply)
        self._mode: WiringMode | None = None  # the mode the last apply() wired in
        self._asked: bool | None = None  # what the request file says (None: never written)
        self._request_error = ""
        self._follower: asyncio.Task[None] | None = None
        self._watch: Any = None  # FileWatch on resolv.conf, once started
        self._tasks: set[asyncio.Task[None]] = set()
        self._rewritten = asyncio.Event()  # resolv.conf changed since it was last cleared
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

    def _resolv(self) -> tuple[str | None, str]:
        """resolv.conf's text (None: none) and the path it resolves to (a symlink's target)."""
        text = _read(self._resolv_conf)
        try:
            target = os.path.realpath(self._resolv_conf)
        except OSError:
            target = ""
        return text, target

    async def detect(self) -> WiringMode:
        """The mode in force: the requested one, or what `auto` finds on this machine now.

        Not cached: systemd-resolved may start after the daemon, and resolv.conf may be
        rewritten at any time. It costs one NameHasOwner call and two small file reads.
        """
        text, target = self._resolv()
        running = False
        if self._requested is WiringMode.AUTO:
            running = await self._resolved_running()
        return choose_mode(
            self._requested,
            resolved_running=running,
            resolv_conf=parse_resolv_conf(text) if text is not None else None,
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

    async def apply(self, names: Sequence[str], *, episode: bool = False) -> None:
        """Route exactly `names` (and their sub-names) to the stub, or put the stub first in
        resolv.conf while `names` or `episode` give it work. Raise WiringError."""
        async with self._lock:
            self._names = list(names)
            self._episode = episode
            await self._apply()

    async def _apply(self) -> None:
        names = self._names or []
        self._wanted = wants_stub(names, episode=self._episode)
        self._start_watching()
        mode = await self.detect()
        self._mode = mode
        errors: list[str] = []
        # Whatever the mode, the other mechanism is left as the system has it (the mode can
        # change at run time: resolved started, resolv.conf rewritten).
        if mode in RESOLV_CONF_MODES:
            ask = self._wanted and self.port == 53
            try:
                self._set_request(self.stub if ask else None)
            except WiringError as exc:
                errors.append(str(exc))
            else:
                if ask and self._helper:
                    await self.settle()
        elif self._asked:
            try:
                self._set_request(None)
            except WiringError as exc:
                errors.append(str(exc))
        if mode is WiringMode.RESOLVED and names:
            plan = plan_resolved_link(names, stub=self.stub, port=self.port)
            ifindex = self._ifindex()
            await self._ensure_following()
            self._routed = True  # even a partial failure below leaves something to revert
            await self._set_link(ifindex, plan)
            if plan.dropped:
                errors.append(
                    f"systemd-resolved takes {len(plan.domains)} domains per link; "
                    f"{len(plan.dropped)} overrides are not routed (first: {plan.dropped[0]})"
                )
        elif self._routed:
            await self._revert_link()
        if errors:
            raise WiringError("; ".join(errors))

    async def settle(self) -> None:
        """Wait (at most HELPER_WAIT_S) until resolv.conf lists the stub first, or cannot, when
        the stub is wanted there; return at once otherwise. When the time is up and the file
        still disagrees, ask the helper again and wait once more as long: a path unit drops a
        change made while its service runs, so a request written during another run of the
        helper waits for nothing else (a `portal add` on the same network asks for no new
        request), and the lookup right after `portal add` must find the stub first."""
        if not (self._asked and self._helper and self._mode in RESOLV_CONF_MODES):
            return
        deadline = asyncio.get_running_loop().time() + HELPER_WAIT_S
        asked_again = False
        while True:
            self._rewritten.clear()
            text = _read(self._resolv_conf)
            if text is None:
                return
            servers = parse_resolv_conf(text).nameservers
            if servers[:1] == (self.stub,) or not servers:
                return  # wired; or nothing to put it before (the status line says so)
            if not self._watch:
                return
            left = deadline - asyncio.get_running_loop().time()
            if left > 0:
                try:
                    await asyncio.wait_for(self._rewritten.wait(), left)
                    continue
                except TimeoutError:
                    pass
            if asked_again:
                return  # twice unanswered: the status line says it is not wired
            self._nudge_helper()  # time is up and the file still disagrees
            asked_again = True
            deadline = asyncio.get_running_loop().time() + HELPER_WAIT_S

    def _set_request(self, stub: str | None) -> None:
        """Write the request when it changes (and once at the first apply, see write_request)."""
        wanted = stub is not None
        if self._asked is wanted and not self._request_error:
            return
        try:
            resolv_conf.write_request(self._request, stub, force=self._asked is None)
        except resolv_conf.ResolvConfError as exc:
            self._request_error = str(exc)
            raise WiringError(f"cannot ask for the stub in resolv.conf: {exc}") from exc
        self._request_error = ""
        self._asked = wanted

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
        # The link's own DNS-over-TLS and DNSSEC modes before any name is routed to it:
        # without them it takes resolved's global ones, and strict DNS-over-TLS (TLS to the
        # stub: nothing answers) or DNSSEC=yes (unsigned answers rejected) would make every
        # overridden name fail. Both stay in force for every other name and link.
        await self._call("SetLinkDNSOverTLS", "is", [ifindex, plan.dns_over_tls])
        await self._call("SetLinkDNSSEC", "is", [ifindex, plan.dnssec])
        await self._call("SetLinkDomains", "ia(sb)", [ifindex, [list(d) for d in plan.domains]])

    async def revert(self) -> None:
        """Give the link back to resolved's defaults (no servers, no domains)."""
        async with self._lock:
            self._names = None
            await self._stop_following()
            if not self._routed and await self.detect() is not WiringMode.RESOLVED:
                return
            await self._revert_link()

    async def _revert_link(self) -> None:
        try:
            ifindex = self._ifindex()
        except WiringError:
            self._routed = False
            return  # no link, nothing routed through it
        await self._call("RevertLink", "i", [ifindex])
        self._routed = False

    async def describe(self) -> str:
        """One line for `portal status`: how (and whether) lookups reach the stub, or why not."""
        mode = await self.detect()
        if mode is WiringMode.NONE:
            if self._requested is WiringMode.AUTO:
                return (
                    f"not wired: no {self._resolv_conf} to put the stub in, "
                    "and systemd-resolved does not run"
                )
            return describe_none()
        if mode is WiringMode.RESOLVED:
            try:
                state = await self._link_state()
            except WiringError as exc:
                return f"not wired: {exc}"
            wanted = bool(self._names)
            return describe_resolved_link(state, stub=self.stub, port=self.port, wanted=wanted)
        if self._request_error and self._wanted:
            return f"not wired: cannot ask for the stub: {self._request_error}"
        text, target = self._resolv()
        return describe_resolv_wiring(
            text,
            stub=self.stub,
            port=self.port,
            wanted=self._wanted,
            helper=self._helper,
            link_target=target,
        )

    def via_resolv_conf(self) -> bool:
        """The stub is wired (or would be) through resolv.conf, as of the last apply()."""
        return self._mode in RESOLV_CONF_MODES

    def system_servers(self) -> tuple[str, ...]:
        """The system's own nameservers from resolv.conf (the stub's line left out)."""
        text = _read(self._resolv_conf)
        return system_servers(text or "", own=(self.stub,))

    # --- following resolv.conf ---------------------------------------------------------------

    def _start_watching(self) -> None:
        if self._watch is not None:
            return
        from portal.edges.inotify import FileWatch, InotifyError

        watch = FileWatch(self._resolv_conf, self._resolv_conf_changed)
        self._watch = watch
        try:
            watch.start()
        except InotifyError as exc:
            log.warning("%s; the wiring line follows resolv.conf only at the next change", exc)
            watch.close()
            self._watch = False  # tried once: not again

    def _resolv_conf_changed(self) -> None:
        self._rewritten.set()
        task = asyncio.get_running_loop().create_task(self._after_resolv_conf_change())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _after_resolv_conf_change(self) -> None:
        """resolv.conf was rewritten: follow a change of mode (resolved started or stopped,
        NetworkManager switched its rc-manager), ask the helper again if the file is not what
        the request says (a path unit drops changes made while its service runs), then let the
        caller look again."""
        try:
            if self._names is not None and await self.detect() is not self._mode:
                async with self._lock:
                    await self._apply()
            elif self._asked is not None and self._helper and self._mode in RESOLV_CONF_MODES:
                self._nudge_helper()
        except WiringError as exc:
            log.warning("resolver wiring: %s, ignoring", exc)
        if self._on_change is not None:
            self._on_change()

    def _nudge_helper(self) -> None:
        """Write the request again (a rename the path unit sees) when resolv.conf disagrees
        with it and the helper could fix that."""
        text = _read(self._resolv_conf)
        if text is None:
            return
        plan = plan_resolv_conf(text, self.stub if self._asked else None)
        if plan.text == text:
            return  # as asked, or nothing the helper could do (the status line says why)
        log.debug("resolv.conf is not as asked; asking the helper again")
        try:
            resolv_conf.write_request(self._request, self.stub if self._asked else None, force=True)
        except resolv_conf.ResolvConfError as exc:
            log.warning("%s, ignoring", exc)

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
            dns_over_tls=str(props["DNSOverTLS"].value) if "DNSOverTLS" in props else "",
            dnssec=str(props["DNSSEC"].value) if "DNSSEC" in props else "",
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
                    await self.apply(names, episode=self._episode)
                    log.info("systemd-resolved restarted; routed %d name(s) again", len(names))
                except WiringError as exc:
                    log.warning("%s, ignoring", exc)
        finally:
            gone.cancel()
            bus.remove_message_handler(on_message)

    async def close(self) -> None:
        """Leave name resolution as the system has it: the request withdrawn (the helper takes
        the stub out of resolv.conf), the link reverted, nothing followed any more."""
        async with self._lock:
            await self._stop_following()
            if self._watch:
                self._watch.close()
            self._watch = None
            for task in list(self._tasks):
                task.cancel()
            try:
                if self._asked is not None:
                    resolv_conf.remove_request(self._request)
                    self._asked = None
            except resolv_conf.ResolvConfError as exc:
                log.warning("%s, ignoring", exc)
            try:
                if self._routed:
                    await self._revert_link()
            except WiringError as exc:
                log.warning("%s, ignoring", exc)
            if self._bus is not None:
                bus, self._bus = self._bus, None
                await close(bus)
