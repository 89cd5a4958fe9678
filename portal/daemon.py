"""`portal daemon`: wiring only. Feed events to the session, carry out its actions with the edges
the daemon was given, serve the control API.

    daemon = build(config)   # the one place that picks the real edges and binds the sockets
    await daemon.run()       # until stop()

`Daemon(config, *, stub, store, prober, watcher, wiring, bus, venue)` takes its edges as
arguments, the way httpx's `Client(transport=...)` does, so a test builds it in-process with a
real stub on loopback and stand-ins for what cannot exist there (tests/test_daemon.py).
What the daemon holds: the session (core/session.py: everything about the portal state; the
status is read from it alone), the override service (portal/overrides_service.py: the table,
its lock and its save policy), and which upstreams the stub forwards to.

Order at start: the overrides are loaded and handed to the stub, DNS is served at once (queries
that queued in the kernel meanwhile are answered first), then the bus, the network watcher and
the resolver wiring come up; their D-Bus modules are imported only then. `portal daemon` does
the first part even before this module is imported (portal/early.py `serve`, handed to
`build`). The DNS path never awaits D-Bus or disk: the stub reads a ready view that is swapped
whenever overrides, routes or the network change. Every action that can fail logs
"..., ignoring" and never stops DNS.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from portal import __version__
from portal.config import Config
from portal.core import actions as act
from portal.core import session as sess
from portal.core import user_dns
from portal.core.answer import local_entries
from portal.core.choices import Choices, NetworkChoice
from portal.core.events import (
    CheckRequested,
    ConnectivityReported,
    DnsTroubleSeen,
    NetworkChanged,
    PathsObserved,
    UpstreamsChanged,
    VpnsReported,
)
from portal.core.expiry import AnswerWatch
from portal.core.inet import parse_host_port, parse_server
from portal.core.model import Connectivity, Network, Override, Source, Upstream
from portal.core.overrides import Limits, OverrideTable, format_duration, parse_domain
from portal.core.paths import NmVpn, PathFacts, PathReport, PathTarget, assess
from portal.core.probe_model import ProbeFinished, ProbeSpec, failed_round
from portal.core.report import OverrideView, StatusReport
from portal.early import Early, open_sockets, resolv_conf_upstreams
from portal.edges import systemd
from portal.edges.dns_stub import DnsStub
from portal.edges.network_source import NetworkSource
from portal.edges.reactor import ThreadReactor
from portal.edges.store import Store
from portal.edges.upstream import Forwarder
from portal.errors import InvalidAddress, NoNetwork, NoSuchNetwork, PortalError, StateError
from portal.logsetup import setup_logging
from portal.overrides_service import OverrideService

if TYPE_CHECKING:
    from portal.edges.control import ControlServer

log = logging.getLogger("portal")

PROBE_TIMEOUT_S = 5.0
WIRING_SETTLE_S = 5.0  # the wiring's own wait: twice HELPER_WAIT_S at most, when it asks twice
VENUE_LOOKUP_TIMEOUT_S = 3.0
FIRST_BUS_ATTEMPT_S = 10.0  # ready without the control API if the bus is slower than this
WIRING_CLOSE_S = 3.0

Emit = Callable[[object], None]


# --- the edges the daemon takes --------------------------------------------------------------


class Watcher(Protocol):
    """Where network events come from (portal/edges/network_source.py)."""

    async def run(self, emit: Emit) -> None: ...
    async def check_connectivity(self) -> object: ...


class Prober(Protocol):
    """One probe round (portal/edges/probe_child.py `probe_network_in_child`)."""

    async def __call__(
        self,
        network: Network,
        specs: Sequence[ProbeSpec],
        *,
        probe_id: int,
        timeout_s: float,
        ca_file: str | None = None,
    ) -> ProbeFinished: ...


class VenueLookup(Protocol):
    """A and AAAA through the venue's own DNS (portal/edges/venue_dns.py `resolve_via`)."""

    async def __call__(
        self, host: str, servers: Sequence[str], *, timeout_s: float, network: Network | None
    ) -> list[str]: ...


class PathSource(Protocol):
    """Where the network's traffic goes (portal/edges/paths.py `PathWatcher`): emits
    PathsObserved for what `watch()` names, until cancelled."""

    def watch(self, target: PathTarget | None) -> None: ...
    async def run(self, emit: Emit) -> None: ...


class Wiring(Protocol):
    """How the stub joins name resolution (portal/edges/resolver.py)."""

    def listen(self, on_change: Callable[[], None]) -> None:
        """Call `on_change` whenever name resolution changed under us (resolv.conf rewritten)."""

    async def apply(self, names: Sequence[str], *, episode: bool) -> None:
        """The names the stub must receive, and whether a portal episode is under way."""

    async def settle(self) -> None:
        """Return once what apply() asked has reached name resolution (the caller bounds it)."""

    async def describe(self) -> str:
        """The `wiring` line of `portal status`."""

    def system_servers(self) -> tuple[str, ...]:
        """While wired through resolv.conf, the servers it lists besides the stub; else ()."""

    async def close(self) -> None:
        """Leave name resolution as the system has it without portal."""


class BusKeeper(Protocol):
    """The daemon's connection to its bus (portal/edges/control.py `keep_bus`, bound to a bus
    and an admin group): serves `service` until cancelled."""

    async def __call__(
        self,
        service: Daemon,
        *,
        emit: Emit,
        connected: Callable[[ControlServer | None], None],
        first_attempt: asyncio.Event,
    ) -> None: ...


# --- the daemon ------------------------------------------------------------------------------


class Daemon:
    """Everything that runs in the daemon, and the Service the control API calls."""

    def __init__(
        self,
        config: Config,
        *,
        stub: DnsStub,
        store: Store,
        prober: Prober,
        watcher: Watcher | None = None,
        wiring: Wiring | None = None,
        bus: BusKeeper | None = None,
        venue: VenueLookup | None = None,
        paths: PathSource | None = None,
    ) -> None:
        self.config = config
        self.stub = stub
        self.forwarder = stub.forwarder
        self.prober = prober
        self.watcher = watcher
        self.wiring = wiring
        self.keep_bus = bus
        self.venue = venue or _resolve_via
        self.store = store
        self._saved_network: Network | None = None  # what network.json says
        self._network_lock = asyncio.Lock()
        self.overrides_service = OverrideService(
            store, limits=Limits(max_overrides=config.max_overrides), on_change=self._changed
        )
        self.session = sess.Session()
        self.choices = Choices()  # the user's "don't ask again", loaded by run()
        self.path_watcher = paths
        self.paths_report = PathReport()  # the VPN and clashes on the current network
        self._path_facts: PathFacts | None = None
        self._nm_vpns: tuple[NmVpn, ...] = ()
        self._choices_lock = asyncio.Lock()
        self.upstream_source = "config" if config.upstreams else "none"
        # never forward to ourselves: the addresses we listen on, as configured and as bound
        self.own_addresses = {parse_host_port(a)[0] for a in config.listen} | {
            host for host, _ in stub.listen_addresses()
        }
        self.control: ControlServer | None = None
        self.wiring_text = "none"
        self._wiring_on = False  # the wiring is told nothing before DNS is served
        self._wired: tuple[tuple[str, ...], bool] | None = None  # what the wiring was last given
        self._probe_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._exit_code = 0
        self._rewiring: asyncio.Task[None] | None = None  # the latest apply() to the wiring
        # the user's own resolver, asked about the portal (core/user_dns.py): question, answer
        self._user_dns: tuple[user_dns.Question | None, str] = (None, user_dns.NOT_ASKED)
        if wiring is not None:
            wiring.listen(self._wiring_changed)

    # -- state -------------------------------------------------------------------------------

    @property
    def network(self) -> Network | None:
        return self.session.network

    @property
    def network_id(self) -> str | None:
        return self.network.id if self.network else None

    def _active(self) -> dict[str, Override]:
        return self.overrides_service.table.active(network_id=self.network_id, now=time.time())

    def _changed(self) -> None:
        """The overrides changed: new view for the stub, tell listeners."""
        self._refresh_view()
        self._watch_paths()  # a pin is the portal's address
        if self.control is not None:
            self.control.emit_overrides_changed()

    def _refresh_view(self) -> None:
        """What answers on this network now: the stub's view, the status line, the wiring."""
        active = self._active()
        self.stub.set_entries(local_entries(active))
        systemd.notify(f"STATUS={self._status_line(len(active))}")
        self._rewire()

    async def _wiring_settled(self) -> None:
        """Let a change just made reach name resolution before it is acknowledged, so that a
        lookup right after `portal add` already goes through the stub (the wiring bounds it)."""
        task = self._rewiring
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=WIRING_SETTLE_S)
        elif self.wiring is not None and self._wiring_on:
            # Nothing new to ask, but the file may be in flux (its owner rewrote it a moment
            # ago and the helper is putting the stub back).
            try:
                await asyncio.wait_for(self.wiring.settle(), WIRING_SETTLE_S)
            except TimeoutError:
                pass

    def _status_line(self, active: int | None = None) -> str:
        if active is None:
            active = len(self._active())
        return f"serving {active} override(s), {len(self.forwarder.upstreams)} upstream(s)"

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- Service (called by the control API) -------------------------------------------------

    def _prepare(
        self, any_network: bool, ttl_s: float | None, caller: str
    ) -> Callable[[OverrideTable, str, list[str], float], Override]:
        """How a user's override is made now: on this network (or any), with this lifetime.

        With no network known (not connected, or the watcher has not spoken yet) an override
        has no network to belong to: the caller is told so rather than silently given one that
        answers everywhere. Without a network watcher at all (`network_source = "none"`) there
        are no networks, and every override answers on any network."""
        scope, scope_name = (None, "")
        if not any_network and self.network is not None:
            scope, scope_name = self.network.id, self.network.name
        elif not any_network and self.watcher is not None:
            raise NoNetwork(
                "no network is known yet (not connected?), so the override would belong to "
                "none: connect first, or add --any-network to make it answer on every network"
            )
        ttl = self.config.default_ttl_s if ttl_s is not None and ttl_s < 0 else ttl_s

        def prepare(table: OverrideTable, name: str, addrs: list[str], now: float) -> Override:
            return table.prepare(
                name,
                addrs,
                ttl_s=ttl,
                now=now,
                scope=scope,
                scope_name=scope_name,
                created_by=caller,
            )

        return prepare

    async def add(
        self, name: str, addresses: list[str], ttl_s: float | None, any_network: bool, caller: str
    ) -> OverrideView:
        if not addresses:
            addresses = await self._resolve_at_venue(name)
        prepare = self._prepare(any_network, ttl_s, caller)

        def put(table: OverrideTable, now: float) -> Override:
            o = prepare(table, name, addresses, now)
            table.put(o)
            return o

        o = await self.overrides_service.change(put, what=f"adding {name}")
        assert o is not None  # a user's change raises rather than return nothing
        await self._wiring_settled()
        now = time.time()
        life = "until removed" if o.expires_at is None else format_duration(o.expires_at - now)
        where = f"network {o.scope_name or o.scope}" if o.scope else "any network"
        log.info(
            "override %s -> %s added by %s, %s, %s",
            o.name,
            " ".join(o.addresses),
            caller,
            life,
            where,
        )
        return OverrideView.of(o, active=o.applies_to(self.network_id) and not o.is_expired(now))

    async def _resolve_at_venue(self, name: str) -> list[str]:
        norm = parse_domain(name)
        net = self.network
        if net is None or not net.venue_dns:
            raise InvalidAddress(
                f"no address given for {norm}, and no network DNS is known to "
                "look it up: give the address (portal add NAME IP)"
            )
        found = await self.venue(norm, net.venue_dns, timeout_s=VENUE_LOOKUP_TIMEOUT_S, network=net)
        if not found:
            raise InvalidAddress(
                f"{norm} does not resolve through the network's DNS "
                f"({', '.join(net.venue_dns)}); give the address"
            )
        return found

    async def remove(self, name: str, caller: str) -> None:
        o = await self.overrides_service.change(
            lambda t, now: t.remove(name), what=f"removing {name}"
        )
        assert o is not None
        log.info("override %s removed by %s", o.name, caller)

    async def import_entries(
        self,
        entries: list[tuple[str, list[str]]],
        ttl_s: float | None,
        any_network: bool,
        caller: str,
    ) -> int:
        prepare = self._prepare(any_network, ttl_s, caller)

        def add_all(table: OverrideTable, now: float) -> int:
            made: list[Override] = []
            for i, (name, addrs) in enumerate(entries, 1):
                try:
                    made.append(prepare(table, name, addrs, now))
                except PortalError as exc:
                    raise type(exc)(f"entry {i} ({name}): {exc}") from exc
            table.add_many(made)
            return len(made)

        count = await self.overrides_service.change(
            add_all, what=f"importing {len(entries)} override(s)"
        )
        assert count is not None
        log.info("%d override(s) imported by %s", count, caller)
        return count

    def overrides(self) -> list[OverrideView]:
        now = time.time()
        return [
            OverrideView.of(o, active=not o.is_expired(now) and o.applies_to(self.network_id))
            for o in self.overrides_service.table.entries()
        ]

    def status(self) -> StatusReport:
        """Read from the session alone (and the edges' facts: listen, upstreams, wiring)."""
        portal = sess.status(self.session)
        net = portal.network
        report = StatusReport(
            version=__version__,
            listen=tuple(self.stub.addresses()),
            upstreams=tuple(str(u) for u in self.forwarder.upstreams),
            upstream_source=self.upstream_source,
            network=net.name if net else "",
            network_id=net.id if net else "",
            interface=net.interface if net else "",
            state=portal.state,
            portal_url=portal.portal_url,
            venue_dns=net.venue_dns if net else (),
            seconds_remaining=portal.seconds_remaining,
            overrides=len(self._active()),
            wiring=self.wiring_text,
            portal_hosts=portal.portal_hosts,
            probe_error=portal.probe_error,
            # NM's word is about its primary connection, which is the network portal follows.
            nm_connectivity=self.session.nm if net else Connectivity.UNKNOWN,
            user_dns=self._user_dns_answer(),
            expired=portal.expired,
            expiry_watch=portal.expiry_watch,
        )
        return self._on_this_network(with_mac(report, net))

    # -- on real networks: the user's choices, and what the network's paths look like ---------

    def _on_this_network(self, report: StatusReport) -> StatusReport:
        """The status fields about this network beyond the portal's state (issue 15)."""
        paths = self.paths_report
        return replace(
            report,
            quiet=self.choices.is_quiet(self.network_id),
            quiet_networks=self.choices.labels(),
            vpn=paths.vpn,
            vpn_name=paths.vpn_name,
            vpn_routing=paths.vpn_routing,
            vpn_dns=paths.vpn_dns,
            vpn_bypass=paths.vpn_bypass,
            clashes=tuple(c.format() for c in paths.clashes),
        )

    def _watch_paths(self) -> None:
        """Tell the paths edge what to ask the kernel about now: the network's interface, the
        venue's DNS and portal addresses, the user's resolvers (None: no network)."""
        if self.path_watcher is None:
            return
        net = self.network
        if net is None or not net.interface:
            self.path_watcher.watch(None)
            return
        pinned = [
            a
            for o in self.overrides_service.table.entries()
            if o.source is Source.AUTO and o.scope == net.id
            for a in o.addresses
        ]
        portal = dict.fromkeys((*self.session.portal_addresses, *pinned))
        venue = [("dns", parse_host_port(d)[0]) for d in net.venue_dns if _is_address(d)]
        self.path_watcher.watch(
            PathTarget(
                interface=net.interface,
                venue=(*venue, *(("portal", a) for a in portal)),
                resolvers=tuple(u.host for u in self.forwarder.upstreams),
            )
        )

    def _paths_seen(self, event: PathsObserved | VpnsReported) -> None:
        if isinstance(event, PathsObserved):
            self._path_facts = event.facts
        else:
            self._nm_vpns = event.vpns
        facts = self._path_facts
        if facts is None or self.network is None or facts.interface != self.network.interface:
            report = PathReport()
        else:
            report = assess(facts, vpns=self._nm_vpns)
        if report != self.paths_report:
            if report.vpn != self.paths_report.vpn:
                log.info(
                    "VPN: %s",
                    f"{report.vpn_name} on {report.vpn} ({report.vpn_routing or 'DNS only'})"
                    if report.vpn
                    else "none in the way",
                )
            for clash in report.clashes:
                if clash not in self.paths_report.clashes:
                    log.warning(
                        "the venue's %s %s is routed into %s, not %s",
                        clash.role,
                        clash.address,
                        clash.interface,
                        self.network.interface if self.network else "?",
                    )
            self.paths_report = report
            self._publish()

    async def dont_ask(self, network: str, caller: str) -> str:
        """Remember not to ask to sign in on the current network; return its name. `network`
        "" means the current one; else it must name it (its id or name): a click on a
        notification about a network we left since must not mark the new one."""
        net = self.network
        if net is None:
            raise NoNetwork("no network to remember: not connected")
        if network and network not in (net.id, net.name):
            raise NoSuchNetwork(f"not on {network} any more (now on {net.name or net.id})")

        def remember(choices: Choices) -> Choices:
            try:
                return choices.dont_ask(net.id, net.name, now=time.time())
            except ValueError as exc:
                raise StateError(str(exc)) from exc

        await self._change_choices(remember)
        label = net.name or net.id
        log.info("not asking again on %s (by %s)", label, caller)
        return label

    async def ask_again(self, network: str, caller: str) -> list[str]:
        """Forget "don't ask again" for `network` (an id or name; "" the current network, "*"
        every one); return the names forgotten. NoSuchNetwork when none matched."""
        query = network.strip() or (self.network_id or "")
        if not query:
            raise NoNetwork("no network named and not connected: name one (portal status)")
        gone: tuple[NetworkChoice, ...] = ()

        def forget(choices: Choices) -> Choices:
            nonlocal gone
            choices, gone = choices.ask_again(query)
            return choices

        await self._change_choices(forget)
        if not gone:
            raise NoSuchNetwork(f"portal asks on {network.strip() or 'this network'} already")
        labels = [c.label for c in gone]
        log.info("asking again on %s (by %s)", ", ".join(labels), caller)
        return labels

    async def _change_choices(self, change: Callable[[Choices], Choices]) -> None:
        """Apply `change`, save, and only then make it the daemon's (a user's call gets the
        save's error, and nothing changes)."""
        async with self._choices_lock:
            new = change(self.choices)
            if new == self.choices:
                return
            await asyncio.to_thread(self.store.save_choices, new)
            self.choices = new
        self._publish()

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

    async def run(self) -> int:
        """Serve until stop(); return the exit code."""
        self.overrides_service.load()
        self.choices = self.store.load_choices()
        self._assume_the_last_network()
        self._use_fallback_upstreams()
        # the overrides first: the DNS thread answers what queued in the kernel at once
        self._refresh_view()
        await self.stub.start(on_fatal=self._dns_failed)
        log.info(
            "portal %s serving DNS on %s with %d override(s); upstreams: %s",
            __version__,
            ", ".join(self.stub.addresses()),
            len(self.overrides_service.table),
            ", ".join(str(u) for u in self.forwarder.upstreams) or "none",
        )
        if self.keep_bus is not None:
            # Ready once DNS is served and the first bus attempt is over (ok or not): callers
            # that wait for readiness can then use the control API at once.
            first_attempt = asyncio.Event()
            self._spawn(
                self.keep_bus(
                    self, emit=self.emit, connected=self._connected, first_attempt=first_attempt
                )
            )
            try:
                await asyncio.wait_for(first_attempt.wait(), FIRST_BUS_ATTEMPT_S)
            except TimeoutError:
                log.warning("the bus is slow to answer; ready without the control API for now")
        systemd.notify("READY=1")
        self._wiring_on = True
        self._rewire()
        if self.watcher is not None:
            self._spawn(self._guard(self.watcher.run(self.emit), "network watcher"))
        if self.path_watcher is not None:
            self._spawn(self._guard(self.path_watcher.run(self.emit), "route watcher"))
            self._watch_paths()
        interval = systemd.watchdog_interval_s()
        if interval:
            self._spawn(self._watchdog(interval))
        await self._stop.wait()
        systemd.notify("STOPPING=1")
        log.info("stopping")
        self._cancel_probe()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.wiring is not None:
            try:
                await asyncio.wait_for(self.wiring.close(), WIRING_CLOSE_S)
            except Exception as exc:
                log.warning("undoing the resolver wiring failed: %s", exc)
        self.overrides_service.close()
        await self.stub.close()
        return self._exit_code

    def stop(self) -> None:
        self._stop.set()

    # -- the last network, across restarts (a restart never changes an answer) --------------

    def _assume_the_last_network(self) -> None:
        """Start on the network we were last on, so that overrides scoped to it answer from the
        first query (queries may have queued in the socket while we restarted), until the
        network watcher reports."""
        network = self.store.load_network()
        self._saved_network = network
        if network is None:
            return
        pinned = tuple(
            sorted(
                o.name
                for o in self.overrides_service.table.entries()
                if o.source is Source.AUTO and o.scope == network.id
            )
        )
        self.session = sess.restore(network, pinned)
        log.info(
            "assuming the last network, %s, until the network watcher reports",
            network.name or network.id,
        )

    async def _save_network(self) -> None:
        # One writer at a time, and always the newest network: a quick succession of changes
        # ends with the last one on disk.
        async with self._network_lock:
            network = self.session.network
            if network == self._saved_network:
                return
            try:
                await asyncio.to_thread(self.store.save_network, network)
            except PortalError as exc:
                log.warning("%s; a restart will not assume this network", exc)
                return
            self._saved_network = network

    def _connected(self, control: ControlServer | None) -> None:
        self.control = control

    def _dns_failed(self, exc: BaseException) -> None:
        """The UDP thread died (a bug): exit with an error so that systemd restarts us; the
        socket stays open in the socket unit meanwhile."""
        log.critical("the DNS stub stopped (%s), exiting", exc)
        self._exit_code = 1
        self._stop.set()

    async def _guard(self, coro: Awaitable[object], what: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; DNS and overrides keep working", what)

    async def _watchdog(self, interval_s: float) -> None:
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval_s)

    # -- upstreams: where the stub forwards (outside the portal session's concern) ------------

    def _use_fallback_upstreams(self) -> None:
        """Without static upstreams and before the watcher says anything: resolv.conf's."""
        if self.config.upstreams:
            return
        found = resolv_conf_upstreams(self.config.resolv_conf, self.own_addresses)
        if found:
            self.forwarder.set_upstreams(found)
            self.upstream_source = f"resolv.conf ({self.config.resolv_conf})"

    def _set_upstreams(self, upstreams: tuple[Upstream, ...], source: str) -> None:
        if self.config.upstreams:
            return  # static upstreams from the config win
        if self._follow_resolv_conf():
            return  # wired through resolv.conf: its other servers are the system's resolvers
        usable = tuple(u for u in upstreams if u.host not in self.own_addresses)
        if not usable:
            self._use_fallback_upstreams()
            return
        if usable != self.forwarder.upstreams or self.upstream_source != source:
            self.forwarder.set_upstreams(usable)
            self.upstream_source = source
            log.info("upstreams: %s (%s)", ", ".join(str(u) for u in usable), source)
            self._publish()

    # -- detection: events in, actions out ----------------------------------------------------

    def emit(self, event: object) -> None:
        """Edges call this with events (portal/core/events.py); never raises."""
        try:
            self.handle(event)
        except Exception:
            log.exception("handling %s failed, ignoring", type(event).__name__)

    def handle(self, event: object) -> None:
        if isinstance(event, PathsObserved | VpnsReported):
            self._paths_seen(event)  # where traffic goes: beside the session, as upstreams are
            return
        if isinstance(event, UpstreamsChanged):
            # Which servers the stub forwards to is no part of the portal state: the session
            # never sees it; the status reports it beside the session's.
            self._set_upstreams(event.upstreams, event.source)
            self._watch_paths()
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
            log.info(
                "%s reports connectivity %s%s",
                event.source,
                event.connectivity.value,
                "" if event.checked else " (it runs no check of its own: portal's probe decides)",
            )
        elif isinstance(event, DnsTroubleSeen):
            log.info("the DNS stub saw a burst of %s answers", event.reason)
        before = self.session
        self.session, actions = sess.step(before, event, now=time.monotonic())
        for action in actions:
            self.perform(action, before)
        if self.session.network != before.network:
            self._spawn(self._save_network())
        if self.network_id != (before.network.id if before.network else None):
            self._changed()  # network-scoped overrides start or stop answering
        else:
            self._rewire()  # a portal episode began or ended, or its routed names changed
        self._watch_paths()

    def perform(self, action: act.Action, before: sess.Session) -> None:
        """Carry out one action; failures are logged by the task, never raised."""
        if isinstance(action, act.StartProbe):
            self._cancel_probe()
            self._probe_task = asyncio.get_running_loop().create_task(self._probe(action))
        elif isinstance(action, act.CancelProbe):
            self._cancel_probe()
        elif isinstance(action, act.PinPortalHosts):
            self._spawn(self._pin(action))
        elif isinstance(action, act.RouteToVenue):
            venue = tuple(s for text in action.venue_dns if (s := parse_server(text)) is not None)
            routes = {name: venue for name in action.names}
            self.stub.set_portal_routes(routes)
            log.info(
                "routing %s to the venue DNS %s",
                ", ".join(action.names) or "nothing",
                ", ".join(action.venue_dns),
            )
        elif isinstance(action, act.StopRouting):
            if self.stub.portal_routes:
                log.info("routing every name to the usual upstreams again")
                self.stub.set_portal_routes({})
        elif isinstance(action, act.UnpinPortalHosts):
            self._spawn(self._unpin(action.network_id))
        elif isinstance(action, act.PublishStatus):
            old, new = sess.status(before), action.status
            if (old.state, old.portal_url) != (new.state, new.portal_url):
                log.info(
                    "state %s%s",
                    new.state.value,
                    f", sign in at {new.portal_url}" if new.portal_url else "",
                )
            self._publish()
        elif isinstance(action, act.AskNMToRecheck):
            if self.watcher is not None:
                self._spawn(self._guard(self.watcher.check_connectivity(), "asking NM"))
        elif isinstance(action, act.WatchDns):
            self.stub.set_watch(AnswerWatch(action.portal_addresses), self._dns_alarm)
        elif isinstance(action, act.StopWatchingDns):
            self.stub.set_watch(None, self._dns_alarm)

    def _dns_alarm(self, reason: str) -> None:
        """The stub's DNS alarm fired (called on the loop, once per arming)."""
        self.emit(DnsTroubleSeen(reason))

    def _publish(self) -> None:
        self._ask_user_dns()
        systemd.notify(f"STATUS={self._status_line()}")
        if self.control is not None:
            self.control.emit_state_changed(self.status())

    # -- the user's own resolver and the portal (what a desktop's own prompt would meet) --------

    def _user_dns_question(self) -> user_dns.Question | None:
        upstreams = tuple(str(u) for u in self.forwarder.upstreams)
        return user_dns.question(sess.status(self.session), upstreams)

    def _user_dns_answer(self) -> str:
        asked, answer = self._user_dns
        if asked is None or asked != self._user_dns_question():
            return user_dns.NOT_ASKED  # about another portal, network or resolver
        return answer

    def _ask_user_dns(self) -> None:
        """Ask the user's resolver about the portal, once per portal, network and resolver."""
        question = self._user_dns_question()
        if question is None or question == self._user_dns[0]:
            return
        self._user_dns = (question, user_dns.CHECKING)
        self._spawn(self._guard(self._answer_user_dns(question), "asking the user's resolver"))

    async def _answer_user_dns(self, question: user_dns.Question) -> None:
        # Plain queries on our own sockets, routed as the system routes them (no interface
        # binding, unlike the venue's lookups): a VPN that captures the user's resolver
        # captures these too, as it would a desktop's sign-in window.
        found = await self.venue(
            question.host, question.servers, timeout_s=VENUE_LOOKUP_TIMEOUT_S, network=None
        )
        if self._user_dns[0] != question:
            return  # another portal or resolver was asked about meanwhile
        answer = user_dns.RESOLVES if found else user_dns.FAILS
        self._user_dns = (question, answer)
        log.info(
            "your resolver (%s) %s %s",
            ", ".join(question.servers),
            "resolves" if found else "cannot resolve",
            question.host,
        )
        self._publish()

    def _cancel_probe(self) -> None:
        if self._probe_task is not None and not self._probe_task.done():
            self._probe_task.cancel()
        self._probe_task = None

    def _probe_specs(self, network: Network) -> tuple[ProbeSpec, ...]:
        from portal.core.detect import default_probe_specs, parse_probe_spec

        configured = []
        for text in self.config.probe_urls:
            try:
                configured.append(parse_probe_spec(text))
            except ValueError as exc:
                log.warning("probe URL %r: %s, ignoring", text, exc)
        return default_probe_specs(network.check_uri, configured)

    async def _probe(self, action: act.StartProbe) -> None:
        if action.delay_s > 0:
            await asyncio.sleep(action.delay_s)
            if sess.status(self.session).expiry_watch:
                # the sparse re-probe of a network that was captive (core/expiry.py)
                log.debug("re-probing %s for the portal's return", action.network.id)
        network = action.network
        if not network.api_uri and self.config.portal_api_uri:
            network = replace(network, api_uri=self.config.portal_api_uri)
        specs = self._probe_specs(network)
        try:
            result = await self.prober(
                network,
                specs,
                probe_id=action.probe_id,
                timeout_s=PROBE_TIMEOUT_S,
                ca_file=self.config.ca_file or None,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Failures are data: the session hears of a round with no answer, retries it with
            # backoff, and `portal status` says why (never "probing" for good).
            log.exception("probe of %s failed", action.network.id)
            result = failed_round(
                network, specs, probe_id=action.probe_id, why=f"the probe failed: {exc}"
            )
        self.emit(result)

    async def _pin(self, action: act.PinPortalHosts) -> None:
        """Resolve the portal's names through the venue DNS; pin them on that network."""
        net = self.session.network
        if net is None or net.id != action.network_id or not net.venue_dns:
            return
        found: dict[str, list[str]] = {}
        for host in action.hosts:
            try:
                name = parse_domain(host)
            except PortalError:
                continue  # an address literal or an odd name: nothing to pin
            addrs = await self.venue(
                name, net.venue_dns, timeout_s=VENUE_LOOKUP_TIMEOUT_S, network=net
            )
            if addrs:
                found[name] = addrs
        if not found:
            return

        def pin(table: OverrideTable, now: float) -> list[Override]:
            made, refused = table.pin(
                found,
                network_id=net.id,
                network_name=net.name,
                ttl_s=self.config.default_ttl_s,
                now=now,
            )
            for name, why in refused:
                log.info("cannot pin %s: %s, ignoring", name, why)
            return made

        made = await self.overrides_service.change(
            pin, what=f"pinning {', '.join(found)}", automatic=True
        )
        for o in made or ():
            log.info(
                "pinned %s -> %s on %s",
                o.name,
                " ".join(o.addresses),
                net.name or net.id,
            )

    async def _unpin(self, network_id: str) -> None:
        def unpin(table: OverrideTable, now: float) -> list[Override]:
            return table.unpin(network_id)

        gone = await self.overrides_service.change(
            unpin, what="removing the pinned portal names", automatic=True
        )
        if gone:
            names = ", ".join(o.name for o in gone)
            log.info("unpinned %s", names)

    # -- resolver wiring: how the stub joins name resolution ---------------------------------

    def _rewire(self) -> None:
        """Tell the wiring, when what it needs to know changed: the names answering on this
        network (pinned portal names included; during a portal episode also the portal's names
        routed to the venue's DNS) and whether a portal episode is under way."""
        if self.wiring is None or not self._wiring_on:
            return
        episode = self.session.episode
        names = set(self._active())
        if episode:
            names |= set(self.stub.portal_routes)
        wanted = (tuple(sorted(names)), episode)
        if wanted != self._wired:
            self._wired = wanted
            task = asyncio.ensure_future(self._apply_wiring(*wanted))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self._rewiring = task

    async def _apply_wiring(self, names: tuple[str, ...], episode: bool) -> None:
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
        if self.config.upstreams or self.wiring is None or not self._wiring_on:
            return False
        servers = tuple(
            server
            for text in self.wiring.system_servers()
            if (server := parse_server(text)) is not None and server.host not in self.own_addresses
        )
        if not servers:
            return False
        if servers != self.forwarder.upstreams or not self.upstream_source.startswith("resolv"):
            self.forwarder.set_upstreams(servers)
            self.upstream_source = f"resolv.conf ({self.config.resolv_conf})"
            log.info("upstreams: %s (resolv.conf)", ", ".join(str(u) for u in servers))
            self._publish()
        return True


async def _resolve_via(
    host: str, servers: Sequence[str], *, timeout_s: float, network: Network | None
) -> list[str]:
    # loaded at the first lookup (a portal detected, `portal add NAME`), not before DNS is served
    from portal.edges.venue_dns import resolve_via

    return await resolve_via(host, servers, timeout_s=timeout_s, network=network)


def _is_address(text: str) -> bool:
    """An IP address (with or without a port), not a name: only addresses have routes."""
    import ipaddress

    try:
        ipaddress.ip_address(parse_host_port(text)[0].partition("%")[0])
    except ValueError:
        return False
    return True


# --- the composition root --------------------------------------------------------------------


def build(config: Config, early: Early | None = None) -> Daemon:
    """The daemon with its real edges: the only place that picks them and binds sockets, or
    takes them from `early` (portal/early.py: the stub already answering, the table read).

    D-Bus, the venue lookups and the probe child are imported when first used, after DNS is
    served.
    """
    store: Store
    if early is not None:
        stub, store = early.stub, early.store
    else:
        stub = DnsStub(open_sockets(config), Forwarder(ThreadReactor(), config.upstreams))
        store = Store(config.state_dir)
    listening = stub.listen_addresses() or [parse_host_port(config.listen[0])]
    own = {parse_host_port(a)[0] for a in config.listen} | {host for host, _ in listening}
    watcher = None
    if config.network_source != "none":
        watcher = NetworkSource(
            config.network_source,
            bus=config.bus,
            resolv_conf=config.resolv_conf,
            exclude=[Upstream(a) for a in sorted(own)],
        )
    wiring = None
    if config.wiring != "none":
        host, port = listening[0]
        wiring = _ResolverWiring(
            stub=host, port=port, mode=config.wiring, bus=config.bus, resolv_conf=config.resolv_conf
        )
    paths = None
    if config.network_source != "none":
        from portal.edges.paths import PathWatcher

        paths = PathWatcher()
    return Daemon(
        config,
        stub=stub,
        store=store,
        prober=_probe_in_child,
        watcher=watcher,
        wiring=wiring,
        bus=functools.partial(_keep_bus, config.bus, admin_group=config.admin_group),
        venue=_resolve_via,
        paths=paths,
    )


async def _probe_in_child(
    network: Network,
    specs: Sequence[ProbeSpec],
    *,
    probe_id: int,
    timeout_s: float,
    ca_file: str | None = None,
) -> ProbeFinished:
    from portal.edges.probe_child import probe_network_in_child

    return await probe_network_in_child(
        network, specs, probe_id=probe_id, timeout_s=timeout_s, ca_file=ca_file
    )


async def _keep_bus(
    choice: str,
    service: Daemon,
    *,
    admin_group: str,
    emit: Emit,
    connected: Callable[[ControlServer | None], None],
    first_attempt: asyncio.Event,
) -> None:
    # One turn of the loop first: queries that waited in the kernel while we started (socket
    # activation, a restart) are answered before the D-Bus imports hold the loop.
    await asyncio.sleep(0)
    from portal.edges.control import keep_bus
    from portal.edges.control_api import resolve_bus

    await keep_bus(
        resolve_bus(choice),
        service,
        admin_group=admin_group,
        emit=emit,
        connected=connected,
        first_attempt=first_attempt,
    )


class _ResolverWiring:
    """portal/edges/resolver.py's ResolverWiring, made at its first use so that its D-Bus
    imports come after DNS is served."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._on_change: Callable[[], None] | None = None
        self._wiring: Any = None

    def _get(self) -> Any:
        if self._wiring is None:
            from portal.edges.control_api import resolve_bus
            from portal.edges.resolver import ResolverWiring

            # systemd-resolved lives on the system bus; a daemon on the session bus (a test, a
            # user's own run) still wires there
            choice = resolve_bus(self._options.pop("bus"))
            bus = choice if choice != "session" else "system"
            self._wiring = ResolverWiring(bus=bus, on_change=self._on_change, **self._options)
        return self._wiring

    def listen(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change

    async def apply(self, names: Sequence[str], *, episode: bool) -> None:
        await self._get().apply(names, episode=episode)

    async def settle(self) -> None:
        await self._get().settle()

    async def describe(self) -> str:
        text: str = await self._get().describe()
        return text

    def system_servers(self) -> tuple[str, ...]:
        if self._wiring is None or not self._wiring.via_resolv_conf():
            return ()
        servers: tuple[str, ...] = self._wiring.system_servers()
        return servers

    async def close(self) -> None:
        if self._wiring is not None:
            await self._wiring.close()


# --- `portal daemon` -------------------------------------------------------------------------


async def main(config: Config, early: Early | None = None) -> int:
    daemon = build(config, early)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)
    return await daemon.run()


def run(config: Config, early: Early | None = None) -> int:
    """`portal daemon`; with `early`, logging is set up already (portal/cli.py)."""
    if early is None:
        setup_logging(config.log_level, "portal")
    try:
        return asyncio.run(main(config, early))
    except PortalError as exc:
        log.error("%s", exc)
        return 1


def with_mac(report: StatusReport, network: Network | None) -> StatusReport:
    """The status with what core/mac.py says of the connection's MAC address (issue 15)."""
    from portal.core.mac import random_mac, stable_mac_command

    if not random_mac(network) or network is None:
        return report
    return replace(report, random_mac=True, stable_mac_command=stable_mac_command(network))
