"""The daemon's first step: answer DNS while the rest of the daemon is still being imported.

    early = serve(config)              # no asyncio, D-Bus or detection imported yet
    daemon.run(config, early=early)    # portal/daemon.py takes the stub and the table over

Most of a start is importing: asyncio, the session and detection modules, later D-Bus. Queries
that arrive meanwhile (socket activation, a restart under load) would wait in the kernel. So the
first part of the composition root runs here, on modules that do not import asyncio: take
systemd's sockets or bind the configured addresses, read the state file (a corrupt one is moved
aside, as always) and the network the daemon was last on, and start the DNS thread answering
from those overrides and forwarding to the configured upstreams, or else resolv.conf's, exactly
as the daemon's own first view does. The daemon then takes over the same stub, reactor and table
(`Early.store` hands the table read here to its first load), swaps in its own view and attaches
its loop: nothing is read or bound twice, and no answer changes at the hand-over.

It must not import asyncio, D-Bus or detection modules (bench/: they are most of a start's CPU
time), nor decide anything the daemon decides: it only does, earlier, what `daemon.build()` and
the first lines of `Daemon.run()` would do.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import NamedTuple

from portal.config import Config
from portal.core.answer import local_entries
from portal.core.inet import parse_host_port
from portal.core.model import Network, Upstream
from portal.core.overrides import Limits, OverrideTable
from portal.core.resolvconf import parse_resolv_conf
from portal.edges import systemd
from portal.edges.dns_stub import DnsStub, bind_sockets
from portal.edges.reactor import ThreadReactor
from portal.edges.store import Store
from portal.edges.upstream import Forwarder
from portal.errors import PortalError

log = logging.getLogger("portal")


class LoadedStore(Store):
    """The state directory's Store, whose first load() and load_network() return what was
    read at the start (the daemon takes it over; nothing is read twice)."""

    def __init__(self, state_dir: str, table: OverrideTable, network: Network | None) -> None:
        super().__init__(state_dir)
        self._table: OverrideTable | None = table
        self._network = network
        self._network_read = True

    def load(self, *, limits: Limits) -> OverrideTable:
        table, self._table = self._table, None
        if table is not None and table.limits == limits:
            return table
        return super().load(limits=limits)

    def load_network(self) -> Network | None:
        if self._network_read:
            self._network_read = False
            return self._network
        return super().load_network()


class Early(NamedTuple):
    """What the first step made: the stub (its DNS thread answering) and the store."""

    stub: DnsStub
    store: LoadedStore


def open_sockets(config: Config) -> list[socket.socket]:
    """systemd's sockets (socket activation), or the configured addresses bound here."""
    sockets = systemd.listen_fds()
    if sockets:
        log.info("using %d socket(s) from systemd", len(sockets))
        return sockets
    try:
        return bind_sockets([parse_host_port(a) for a in config.listen])
    except OSError as exc:
        raise PortalError(
            f"cannot listen on {', '.join(config.listen)}: {exc.strerror or exc}"
        ) from exc


def own_addresses(config: Config, stub: DnsStub) -> set[str]:
    """The addresses the stub listens on, as configured and as bound: never forwarded to."""
    return {parse_host_port(a)[0] for a in config.listen} | {
        host for host, _ in stub.listen_addresses()
    }


def resolv_conf_upstreams(path: str, own: set[str]) -> tuple[Upstream, ...]:
    """The servers of resolv.conf at `path`, the stub's own addresses left out: where the stub
    forwards without static upstreams, before anything else is known."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return ()
    return tuple(u for u in parse_resolv_conf(text).upstreams if u.host not in own)


def serve(config: Config) -> Early:
    """Bind, load, answer: the DNS thread runs when this returns. Raises PortalError when the
    addresses cannot be bound."""
    sockets = open_sockets(config)
    stub = DnsStub(sockets, Forwarder(ThreadReactor(), config.upstreams))
    if not config.upstreams:
        stub.forwarder.set_upstreams(
            resolv_conf_upstreams(config.resolv_conf, own_addresses(config, stub))
        )
    store = Store(config.state_dir)
    now = time.time()
    table = store.load(limits=Limits(max_overrides=config.max_overrides))
    table.expire(now)
    # the network the daemon was last on, which it assumes until its watcher reports
    # (Daemon._assume_the_last_network): overrides scoped to it answer from the first query
    network = store.load_network()
    stub.set_entries(
        local_entries(table.active(network_id=network.id if network else None, now=now))
    )
    stub.serve_udp()
    return Early(stub, LoadedStore(config.state_dir, table, network))
