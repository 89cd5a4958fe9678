"""`portal daemon`: wiring only. Start the edges, keep the state, carry out what core decides.

Order at start: bind (or take from systemd) the DNS sockets and serve at once — queries that
arrive meanwhile wait in the kernel — then load D-Bus and the rest. The DNS path never awaits
D-Bus or disk: the stub reads a ready mapping that is swapped whenever overrides or the network
change. Every action that can fail logs "..., ignoring" and never stops DNS.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from portal import __version__
from portal.config import Config
from portal.core import actions as act
from portal.core import session as sess
from portal.core.answer import local_entries
from portal.core.events import (
    CheckRequested,
    ConnectivityReported,
    NetworkChanged,
    Resumed,
    UpstreamsChanged,
)
from portal.core.model import Network, Override, PortalStatus, Upstream
from portal.core.overrides import Limits, OverrideTable, format_duration, parse_domain
from portal.edges import store, systemd
from portal.edges.dns_stub import DnsStub, bind_sockets, parse_listen
from portal.edges.upstream import Forwarder
from portal.errors import InvalidAddress, PortalError
from portal.logsetup import setup_logging

if TYPE_CHECKING:
    from dbus_next.aio import MessageBus

    from portal.edges.control import ControlServer

log = logging.getLogger("portal")

BUS_RETRY_MAX_S = 60.0
PROBE_TIMEOUT_S = 5.0
WIRING_SETTLE_S = 3.0
VENUE_LOOKUP_TIMEOUT_S = 3.0


def resolv_conf_upstreams(path: str, exclude: set[str]) -> tuple[Upstream, ...]:
    """Nameservers from a resolv.conf, minus our own listen addresses (never forward to self)."""
    try:
        text = open(path, encoding="utf-8").read()
    except OSError:
        return ()
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and parts[1] not in exclude:
            out.append(Upstream(parts[1].split("%")[0]))
    return tuple(out)


class Daemon:
    """All run-time state of the daemon and the Service the control API calls."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.limits = Limits(max_overrides=config.max_overrides)
        self.table = OverrideTable(limits=self.limits)
        self.portal = PortalStatus()
        self.forwarder = Forwarder(config.upstreams)
        self.stub: DnsStub | None = None
        self.bus: MessageBus | None = None
        self.control: ControlServer | None = None
        self._lock = asyncio.Lock()
        self._expiry: asyncio.TimerHandle | None = None
        self._stop = asyncio.Event()
        self._exit_code = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.upstream_source = "config" if config.upstreams else "none"
        self.session = sess.Session()
        self._probe_task: asyncio.Task[None] | None = None
        self.nm: Any = None  # NetworkManagerWatcher when NetworkManager is used
        self.wiring: Any = None  # ResolverWiring
        self.wiring_text = "none"
        self._wired: tuple[tuple[str, ...], bool] | None = None  # (names, episode) last applied
        self._episode = False  # a portal episode: from a captive verdict until online or gone
        self._rewiring: asyncio.Task[None] | None = None  # the latest apply() to the wiring
        self._own_addresses: set[str] = set()

    # -- state -------------------------------------------------------------------------------

    @property
    def network(self) -> Network | None:
        return self.portal.network

    @property
    def network_id(self) -> str | None:
        return self.network.id if self.network else None

    def _refresh(self, *, changed: bool = True) -> None:
        """Swap the stub's view, reschedule expiry, tell listeners."""
        active = self.table.active(network_id=self.network_id, now=time.time())
        if self.stub is not None:
            self.stub.set_entries(local_entries(active))
        self._schedule_expiry()
        systemd.notify(f"STATUS={self._status_line(len(active))}")
        if changed and self.control is not None:
            self.control.emit_overrides_changed()
        self._rewire_if_changed(active)

    def _rewire_if_changed(self, active: Any = None) -> None:
        """Hand the wiring the names the stub must receive, and whether a portal episode is
        under way, whenever either changes."""
        if self.wiring is None:
            return
        if active is None:
            active = self.table.active(network_id=self.network_id, now=time.time())
        names = set(active)
        if self._episode and self.stub is not None:
            names |= set(self.stub.portal_routes)  # the portal's names go to the venue's DNS
        wired = (tuple(sorted(names)), self._episode)
        if wired != self._wired:
            self._wired = wired
            task = asyncio.get_running_loop().create_task(self._rewire(*wired))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self._rewiring = task

    async def _wiring_settled(self) -> None:
        """Let a change just made reach name resolution before it is acknowledged, so that a
        lookup right after `portal add` already goes through the stub (the wiring bounds it)."""
        task = self._rewiring
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=WIRING_SETTLE_S)
        elif self.wiring is not None:
            # Nothing new to ask, but the file may be in flux (its owner rewrote it a moment
            # ago and the helper is putting the stub back).
            try:
                await asyncio.wait_for(self.wiring.settle(), WIRING_SETTLE_S)
            except TimeoutError:
                pass

    def _status_line(self, active: int | None = None) -> str:
        if active is None:
            active = len(self.table.active(network_id=self.network_id, now=time.time()))
        return f"serving {active} override(s), {len(self.forwarder.upstreams)} upstream(s)"

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        when = self.table.next_expiry()
        if when is None:
            return  # nothing will expire: no timer, no wakeups
        delay = max(0.0, when - time.time()) + 0.05
        self._expiry = asyncio.get_running_loop().call_later(delay, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry = None
        self._spawn(self._purge())

    async def _purge(self) -> None:
        async with self._lock:
            new = self._copy()
            gone = new.expire(time.time())
            if gone:
                try:
                    await asyncio.to_thread(store.save, self.config.state_dir, new)
                except PortalError as exc:
                    log.error("%s; expired overrides stay on disk until the next save", exc)
                self.table = new
                for o in gone:
                    log.info("override %s expired", o.name)
            self._refresh(changed=bool(gone))

    def _copy(self) -> OverrideTable:
        return OverrideTable(self.table.entries(), limits=self.limits)

    async def _commit(self, new: OverrideTable) -> None:
        """Save first; only a durable change becomes visible (nothing acknowledged is lost)."""
        await asyncio.to_thread(store.save, self.config.state_dir, new)
        self.table = new
        self._refresh()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- Service (called by the control API) -------------------------------------------------

    def _ttl(self, ttl_s: float | None) -> float | None:
        return self.config.default_ttl_s if ttl_s is not None and ttl_s < 0 else ttl_s

    def _scope(self, any_network: bool) -> tuple[str | None, str]:
        if any_network or self.network is None:
            return None, ""
        return self.network.id, self.network.name

    async def add(
        self, name: str, addresses: list[str], ttl_s: float | None, any_network: bool, caller: str
    ) -> Override:
        if not addresses:
            addresses = await self._resolve_at_venue(name)
        scope, scope_name = self._scope(any_network)
        async with self._lock:
            new = self._copy()
            o = new.prepare(
                name,
                addresses,
                ttl_s=self._ttl(ttl_s),
                now=time.time(),
                scope=scope,
                scope_name=scope_name,
                created_by=caller,
            )
            new.put(o)
            await self._commit(new)
        await self._wiring_settled()
        life = (
            "until removed" if o.expires_at is None else format_duration(o.expires_at - time.time())
        )
        where = f"network {o.scope_name or o.scope}" if o.scope else "any network"
        log.info(
            "override %s -> %s added by %s, %s, %s",
            o.name,
            " ".join(o.addresses),
            caller,
            life,
            where,
        )
        return o

    async def _resolve_at_venue(self, name: str) -> list[str]:
        norm = parse_domain(name)
        net = self.network
        if net is None or not net.venue_dns:
            raise InvalidAddress(
                f"no address given for {norm}, and no network DNS is known to "
                "look it up: give the address (portal add NAME IP)"
            )
        from portal.edges.venue_dns import resolve_via

        found = await resolve_via(
            norm, net.venue_dns, timeout_s=VENUE_LOOKUP_TIMEOUT_S, network=net
        )
        if not found:
            raise InvalidAddress(
                f"{norm} does not resolve through the network's DNS "
                f"({', '.join(net.venue_dns)}); give the address"
            )
        return found

    async def remove(self, name: str, caller: str) -> None:
        async with self._lock:
            new = self._copy()
            o = new.remove(name)
            await self._commit(new)
        log.info("override %s removed by %s", o.name, caller)

    async def import_entries(
        self,
        entries: list[tuple[str, list[str]]],
        ttl_s: float | None,
        any_network: bool,
        caller: str,
    ) -> int:
        scope, scope_name = self._scope(any_network)
        async with self._lock:
            new = self._copy()
            now = time.time()
            made: list[Override] = []
            for i, (name, addrs) in enumerate(entries, 1):
                try:
                    made.append(
                        new.prepare(
                            name,
                            addrs,
                            ttl_s=self._ttl(ttl_s),
                            now=now,
                            scope=scope,
                            scope_name=scope_name,
                            created_by=caller,
                        )
                    )
                except PortalError as exc:
                    raise type(exc)(f"entry {i} ({name}): {exc}") from exc
            new.add_many(made)
            await self._commit(new)
        await self._wiring_settled()
        log.info("%d override(s) imported by %s", len(made), caller)
        return len(made)

    def overrides(self) -> list[tuple[Override, bool]]:
        now = time.time()
        return [
            (o, not o.is_expired(now) and o.applies_to(self.network_id))
            for o in self.table.entries()
        ]

    def status(self) -> dict[str, Any]:
        net = self.network
        return {
            "version": __version__,
            "listen": self.stub.addresses() if self.stub else [],
            "upstreams": [str(u) for u in self.forwarder.upstreams],
            "upstream_source": self.upstream_source,
            "network": net.name if net else "",
            "network_id": net.id if net else "",
            "interface": net.interface if net else "",
            "state": self.portal.state.value,
            "portal_url": self.portal.portal_url,
            "venue_dns": list(net.venue_dns) if net else [],
            "seconds_remaining": self.portal.seconds_remaining,
            "overrides": len(self.table.active(network_id=self.network_id, now=time.time())),
            "wiring": self.wiring_text,
            "portal_hosts": list(self.portal.portal_hosts),
        }

    async def check(self, caller: str) -> None:
        log.info("check requested by %s", caller)
        if self.network is None:
            raise PortalError("no network to check: not connected")
        self.handle(CheckRequested())
        task = self._probe_task
        if task is not None:
            # answer when the probe has spoken, so `portal check` prints the new state
            try:
                await asyncio.wait_for(asyncio.shield(task), PROBE_TIMEOUT_S * 3)
            except (TimeoutError, asyncio.CancelledError):
                pass
            await asyncio.sleep(0)  # let the pinning/publishing it triggered start

    # -- running -----------------------------------------------------------------------------

    def _take_sockets(self) -> list[Any]:
        socks = systemd.listen_fds()
        if socks:
            log.info("using %d socket(s) from systemd", len(socks))
            return socks
        try:
            return bind_sockets([parse_listen(a) for a in self.config.listen])
        except OSError as exc:
            raise PortalError(
                f"cannot listen on {', '.join(self.config.listen)}: {exc.strerror or exc}"
            ) from exc

    def _load_upstreams(self) -> None:
        if self.config.upstreams:
            return
        own = {parse_listen(a)[0] for a in self.config.listen}
        found = resolv_conf_upstreams(self.config.resolv_conf, own)
        if found:
            self.forwarder.set_upstreams(found)
            self.upstream_source = f"resolv.conf ({self.config.resolv_conf})"

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.table = store.load(self.config.state_dir, limits=self.limits)
        self.table.expire(time.time())
        self._own_addresses = {parse_listen(a)[0] for a in self.config.listen}
        self._load_upstreams()
        self.stub = DnsStub(self._take_sockets(), self.forwarder, threaded=True)
        self._own_addresses |= {a.rsplit(":", 1)[0].strip("[]") for a in self.stub.addresses()}
        # the overrides first: the DNS thread answers what queued in the kernel at once
        self._refresh(changed=False)
        await self.stub.start(on_fatal=self._dns_failed)
        log.info(
            "portal %s serving DNS on %s with %d override(s); upstreams: %s",
            __version__,
            ", ".join(self.stub.addresses()),
            len(self.table),
            ", ".join(str(u) for u in self.forwarder.upstreams) or "none",
        )
        # Ready once DNS is served and the first bus attempt is over (ok or not): callers that
        # wait for readiness can then use the control API at once.
        first_attempt = asyncio.Event()
        self._spawn(self._keep_bus(first_attempt))
        try:
            await asyncio.wait_for(first_attempt.wait(), 10.0)
        except TimeoutError:
            log.warning("the bus is slow to answer; ready without the control API for now")
        systemd.notify("READY=1")
        if self.config.network_source != "none":
            self._spawn(self._guard(self._watch_network(), "network watcher"))
        if self.config.wiring != "none":
            self._spawn(self._guard(self._start_wiring(), "resolver wiring"))
        interval = systemd.watchdog_interval_s()
        if interval:
            self._spawn(self._watchdog(interval))
        await self._stop.wait()
        systemd.notify("STOPPING=1")
        log.info("stopping")
        self._cancel_probe()
        for task in list(self._tasks):
            task.cancel()
        if self.wiring is not None:
            try:
                await asyncio.wait_for(self.wiring.close(), 3.0)
            except Exception as exc:
                log.warning("undoing the resolver wiring failed: %s", exc)
        if self._expiry:
            self._expiry.cancel()
        await self.stub.close()
        if self.bus is not None:
            from portal.edges.bus import close

            await close(self.bus)
        return self._exit_code

    def _dns_failed(self, exc: BaseException) -> None:
        """The UDP thread died (a bug): exit with an error so that systemd restarts us; the
        socket stays open in the socket unit meanwhile."""
        log.critical("the DNS stub stopped (%s), exiting", exc)
        self._exit_code = 1
        self._stop.set()

    async def _guard(self, coro: Any, what: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; DNS and overrides keep working", what)

    async def _start_wiring(self) -> None:
        from portal.edges.bus import resolve_bus
        from portal.edges.resolver import ResolverWiring

        host, port = parse_listen(self.config.listen[0])
        if self.stub is not None and self.stub.addresses():
            host, _, p = self.stub.addresses()[0].rpartition(":")
            host, port = host.strip("[]"), int(p)
        choice = resolve_bus(self.config.bus)
        self.wiring = ResolverWiring(
            stub=host,
            port=port,
            mode=self.config.wiring,
            bus=choice if choice != "session" else "system",
            resolv_conf=self.config.resolv_conf,
            on_change=self._wiring_changed,
        )
        self._wired = None
        self._refresh(changed=False)

    async def _watchdog(self, interval_s: float) -> None:
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval_s)

    async def _keep_bus(self, first_attempt: asyncio.Event) -> None:
        """Connect to the bus and export the control API; reconnect with backoff if it goes."""
        # One turn of the loop first: queries that waited in the kernel while we started (socket
        # activation, a restart) are answered before the D-Bus imports hold the loop.
        await asyncio.sleep(0)
        from portal.edges.bus import connect, describe, resolve_bus

        choice = resolve_bus(self.config.bus)
        delay = 1.0
        while True:
            try:
                from portal.edges.control import ControlServer

                bus = await connect(choice)
                control = ControlServer(bus, self, admin_group=self.config.admin_group)
                await control.start()
            except Exception as exc:  # PortalError, or a D-Bus error while claiming the name
                first_attempt.set()
                log.error("%s; DNS keeps working, retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BUS_RETRY_MAX_S)
                continue
            self.bus, self.control = bus, control
            first_attempt.set()
            self._spawn(self._watch_sleep(bus))
            delay = 1.0
            log.info(
                "control API on %s as %s (authorisation: %s)",
                describe(choice),
                "org.portalhelper.Portal1",
                control.auth_mode,
            )
            try:
                # shielded: cancelling a wait_for_disconnect() would cancel dbus-next's own future
                await asyncio.shield(bus.wait_for_disconnect())
            except Exception as exc:
                # dbus-next ends the wait with its reader's error (EOFError when the bus daemon
                # dies): a lost bus like any other, or this task would end and never reconnect
                log.debug("bus connection ended: %r", exc)
            self.bus, self.control = None, None
            log.warning("lost %s; reconnecting", describe(choice))
            await asyncio.sleep(1.0)

    # -- detection: events in, actions out ----------------------------------------------------

    def emit(self, event: object) -> None:
        """Edges call this with events (portal/core/events.py); never raises."""
        try:
            self.handle(event)
        except Exception:
            log.exception("handling %s failed, ignoring", type(event).__name__)

    def handle(self, event: object) -> None:
        if isinstance(event, UpstreamsChanged):
            self._set_upstreams(event.upstreams)
            return
        if isinstance(event, NetworkChanged):
            net = event.network
            log.info(
                "network: %s",
                f"{net.name or net.id} on {net.interface or '?'}, venue DNS "
                f"{', '.join(net.venue_dns) or 'unknown'}"
                if net
                else "none",
            )
        elif isinstance(event, ConnectivityReported):
            log.info("%s reports connectivity %s", event.source, event.connectivity.value)
        old_network = self.network_id
        self.session, actions = sess.step(self.session, event, now=time.monotonic())
        for action in actions:
            self.perform(action)
        if self.session.network is not None and self.portal.network != self.session.network:
            # keep the published network current even when the portal status is unchanged
            self.portal = sess.status(self.session)
        if self.network_id != old_network:
            self._refresh(changed=True)  # network-scoped overrides start or stop answering
            self._publish()
        self._update_episode(same_network=self.network_id == old_network)

    def _update_episode(self, *, same_network: bool) -> None:
        from portal.core.wiring import in_episode

        self._episode = in_episode(self._episode, self.portal.state, same_network=same_network)
        self._rewire_if_changed()

    def _set_upstreams(self, upstreams: tuple[Upstream, ...]) -> None:
        if self.config.upstreams:
            return  # static upstreams from the config win
        if self._follow_resolv_conf():
            return  # wired through resolv.conf: its other servers are the system's resolvers
        usable = tuple(u for u in upstreams if u.host not in self._own_addresses)
        if not usable:
            self._load_upstreams()
            return
        if usable != self.forwarder.upstreams or self.upstream_source != "NetworkManager":
            self.forwarder.set_upstreams(usable)
            self.upstream_source = "NetworkManager"
            log.info("upstreams: %s", ", ".join(str(u) for u in usable))
            systemd.notify(f"STATUS={self._status_line()}")
            self._publish()

    def perform(self, action: act.Action) -> None:
        """Carry out one action; failures are logged by the task, never raised."""
        if isinstance(action, act.StartProbe):
            self._cancel_probe()
            self._probe_task = asyncio.get_running_loop().create_task(self._probe(action))
        elif isinstance(action, act.CancelProbe):
            self._cancel_probe()
        elif isinstance(action, act.ResolveAndPinPortalHosts):
            self._spawn(self._pin(action))
        elif isinstance(action, act.RouteToVenue):
            routes = {n: tuple(Upstream(ip) for ip in action.venue_dns) for n in action.names}
            if self.stub is not None:
                self.stub.set_portal_routes(routes)
            log.info(
                "routing %s to the venue DNS %s",
                ", ".join(action.names) or "nothing",
                ", ".join(action.venue_dns),
            )
        elif isinstance(action, act.StopRouting):
            if self.stub is not None and self.stub.portal_routes:
                log.info("routing every name to the usual upstreams again")
                self.stub.set_portal_routes({})
        elif isinstance(action, act.RemoveAutoOverrides):
            self._spawn(self._unpin(action.network_id))
        elif isinstance(action, act.PublishStatus):
            old = self.portal
            self.portal = action.status
            if old.state != action.status.state or old.portal_url != action.status.portal_url:
                log.info(
                    "state %s%s",
                    action.status.state.value,
                    f", sign in at {action.status.portal_url}" if action.status.portal_url else "",
                )
            self._publish()
        elif isinstance(action, act.AskNMToRecheck):
            if self.nm is not None:
                self._spawn(self.nm.check_connectivity())

    def _publish(self) -> None:
        systemd.notify(f"STATUS={self._status_line()}")
        if self.control is not None:
            self.control.emit_state_changed(self.status())

    def _cancel_probe(self) -> None:
        if self._probe_task is not None and not self._probe_task.done():
            self._probe_task.cancel()
        self._probe_task = None

    def _probe_specs(self, network: Network) -> tuple[Any, ...]:
        from portal.core.detect import default_probe_specs, parse_probe_spec

        configured = []
        for text in self.config.probe_urls:
            try:
                configured.append(parse_probe_spec(text))
            except ValueError as exc:
                log.warning("probe URL %r: %s, ignoring", text, exc)
        return default_probe_specs(network.check_uri, configured)

    async def _probe(self, action: act.StartProbe) -> None:
        try:
            if action.delay_s > 0:
                await asyncio.sleep(action.delay_s)
            from portal.edges.probe_child import probe_network

            network = action.network
            if not network.api_uri and self.config.portal_api_uri:
                from dataclasses import replace

                network = replace(network, api_uri=self.config.portal_api_uri)
            result = await probe_network(
                network,
                self._probe_specs(network),
                probe_id=action.probe_id,
                timeout_s=PROBE_TIMEOUT_S,
                ca_file=self.config.ca_file or None,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("probe of %s failed, ignoring", action.network.id)
            return
        self.emit(result)

    async def _pin(self, action: act.ResolveAndPinPortalHosts) -> None:
        """Resolve the portal's names through the venue DNS; AUTO overrides on that network."""
        net = self.session.network
        if net is None or net.id != action.network_id or not net.venue_dns:
            return
        from portal.edges.venue_dns import resolve_via

        found: dict[str, list[str]] = {}
        for host in action.hosts:
            try:
                name = parse_domain(host)
            except PortalError:
                continue  # an address literal or an odd name: nothing to pin
            addrs = await resolve_via(
                name, net.venue_dns, timeout_s=VENUE_LOOKUP_TIMEOUT_S, network=net
            )
            if addrs:
                found[name] = addrs
        if not found:
            return
        async with self._lock:
            new = self._copy()
            made, refused = new.pin_auto(
                found,
                network_id=net.id,
                network_name=net.name,
                ttl_s=self.config.default_ttl_s,
                now=time.time(),
            )
            for name, why in refused:
                log.info("cannot pin %s: %s, ignoring", name, why)
            if not made:
                return
            try:
                await self._commit(new)
            except PortalError as exc:
                log.error("%s; portal names not pinned", exc)
                return
        for o in made:
            log.info(
                "pinned %s -> %s for %s (automatic)",
                o.name,
                " ".join(o.addresses),
                net.name or net.id,
            )

    async def _unpin(self, network_id: str) -> None:
        async with self._lock:
            new = self._copy()
            gone = new.remove_auto(network_id)
            if not gone:
                return
            try:
                await self._commit(new)
            except PortalError as exc:
                log.error("%s; automatic overrides stay on disk until the next save", exc)
                self.table = new
                self._refresh()
        log.info("removed %d automatic override(s): %s", len(gone), ", ".join(o.name for o in gone))

    async def _rewire(self, names: tuple[str, ...], episode: bool) -> None:
        assert self.wiring is not None
        try:
            await self.wiring.apply(names, episode=episode)
        except Exception as exc:
            log.warning("resolver wiring: %s, ignoring", exc)
        await self._after_wiring_change()

    def _wiring_changed(self) -> None:
        """resolv.conf was rewritten (by its owner, or by the helper for us)."""
        self._spawn(self._after_wiring_change())

    async def _after_wiring_change(self) -> None:
        assert self.wiring is not None
        try:
            text = await self.wiring.describe()
        except Exception as exc:
            text = f"unknown ({exc})"
        self._follow_resolv_conf()
        if text != self.wiring_text:
            self.wiring_text = text
            log.info("wiring: %s", text)
            self._publish()

    def _follow_resolv_conf(self) -> bool:
        """While the stub is wired through resolv.conf, forward to the servers resolv.conf lists
        besides it: exactly the system's own resolvers, in its order. NetworkManager's list
        leaves out what others add to resolv.conf (NixOS's networking.nameservers through
        openresolv) and bypasses its own dnsmasq (split DNS for VPNs). True when used."""
        if self.config.upstreams or self.wiring is None or not self.wiring.via_resolv_conf():
            return False
        servers = tuple(
            Upstream(s.split("%")[0])
            for s in self.wiring.system_servers()
            if s.split("%")[0] not in self._own_addresses
        )
        if not servers:
            return False
        if servers != self.forwarder.upstreams or not self.upstream_source.startswith("resolv"):
            self.forwarder.set_upstreams(servers)
            self.upstream_source = f"resolv.conf ({self.config.resolv_conf})"
            log.info("upstreams: %s (resolv.conf)", ", ".join(str(u) for u in servers))
            self._publish()
        return True

    async def _watch_network(self) -> None:
        """NetworkManager when it is on the bus; the kernel's tables (netlink) otherwise."""
        from portal.edges.bus import resolve_bus
        from portal.edges.nm import NetworkManagerWatcher, nm_available

        choice = resolve_bus(self.config.bus)
        address = (
            None
            if choice == "system"
            else (os.environ.get("DBUS_SESSION_BUS_ADDRESS") if choice == "session" else choice)
        )
        source = self.config.network_source
        use_nm = source == "nm" or (source == "auto" and await nm_available(address))
        if use_nm:
            log.info("watching NetworkManager")
            self.nm = NetworkManagerWatcher(address, self.emit)
            await self.nm.run()
            return
        try:
            from portal.edges.netlink import NetlinkWatcher
        except ImportError:
            log.warning("NetworkManager is not on the bus and netlink is unavailable; no detection")
            return
        log.info("NetworkManager is not on the bus: watching the kernel's links (netlink)")
        watcher = NetlinkWatcher(
            self.emit,
            resolv_conf=self.config.resolv_conf,
            exclude_upstreams=[Upstream(a) for a in sorted(self._own_addresses)],
        )
        netlink = asyncio.get_running_loop().create_task(watcher.run())
        if source == "auto" and await self._nm_appears():
            # NetworkManager started after us (boot order, or installed later): follow it
            netlink.cancel()
            log.info("NetworkManager appeared on the bus: watching it instead of netlink")
            self.nm = NetworkManagerWatcher(address, self.emit)
            await self.nm.run()
        else:
            await netlink

    async def _nm_appears(self) -> bool:
        """Wait until NetworkManager takes its name on our bus; False when we cannot watch."""
        from dbus_next import MessageType

        from portal.edges.bus import call_bus_daemon

        for _ in range(100):  # the control connection comes up right after start
            if self.bus is not None:
                break
            await asyncio.sleep(0.1)
        bus = self.bus
        if bus is None:
            return False
        appeared: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        name = "org.freedesktop.NetworkManager"

        def on_message(msg: Any) -> None:
            if (
                msg.message_type == MessageType.SIGNAL
                and msg.member == "NameOwnerChanged"
                and msg.body
                and msg.body[0] == name
                and msg.body[2]
                and not appeared.done()
            ):
                appeared.set_result(True)

        rule = (
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
            f"member='NameOwnerChanged',arg0='{name}'"
        )
        bus.add_message_handler(on_message)
        try:
            await call_bus_daemon(bus, "AddMatch", "s", [rule])
            disconnected = asyncio.ensure_future(asyncio.shield(bus.wait_for_disconnect()))
            done, _ = await asyncio.wait(
                {appeared, disconnected}, return_when=asyncio.FIRST_COMPLETED
            )
            disconnected.cancel()
            return appeared in done
        except Exception as exc:
            log.debug("cannot watch for NetworkManager: %s", exc)
            return False
        finally:
            bus.remove_message_handler(on_message)

    async def _watch_sleep(self, bus: Any) -> None:
        """Resume from suspend (logind PrepareForSleep(false)) is a reason to re-probe."""
        from dbus_next import MessageType

        from portal.edges.bus import call_bus_daemon

        rule = "type='signal',interface='org.freedesktop.login1.Manager',member='PrepareForSleep'"
        try:
            await call_bus_daemon(bus, "AddMatch", "s", [rule])
        except Exception as exc:
            log.debug("cannot watch for resume: %s, ignoring", exc)
            return

        def on_message(msg: Any) -> None:
            if (
                msg.message_type == MessageType.SIGNAL
                and msg.member == "PrepareForSleep"
                and msg.body == [False]
            ):
                log.info("resumed from suspend")
                self.emit(Resumed())

        bus.add_message_handler(on_message)


def run(config: Config) -> int:
    setup_logging(config.log_level, "portal")
    daemon = Daemon(config)
    try:
        return asyncio.run(daemon.run())
    except PortalError as exc:
        log.error("%s", exc)
        return 1
