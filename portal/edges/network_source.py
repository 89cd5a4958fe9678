"""Where network events come from: NetworkManager, or the kernel's tables (netlink) without it.

`NetworkSource(mode, bus=..., resolv_conf=..., exclude=...)` is the daemon's watcher. Its
`run(emit)` emits NetworkChanged, UpstreamsChanged and ConnectivityReported (core/events.py)
until cancelled:

- mode "nm": NetworkManager on `bus`, waiting for it if it is not there (portal/edges/nm.py);
- mode "netlink": the kernel's links, addresses and routes, networkd's link files and resolv.conf
  (portal/edges/netlink.py);
- mode "auto": NetworkManager when it owns its name on `bus` at start; netlink otherwise, until
  NetworkManager appears (it started after us, or was installed later): then NetworkManager.

`check_connectivity()` asks NetworkManager to re-run its own check (AskNMToRecheck); without
NetworkManager it does nothing. The choice is this module's only decision; it reads nothing
itself and must not decide anything about portals. It loads no D-Bus or netlink code until run()
(the daemon serves DNS first).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from portal.core.model import Upstream

if TYPE_CHECKING:
    from portal.edges.nm import NetworkManagerWatcher

log = logging.getLogger("portal")

Emit = Callable[[object], None]


class NetworkSource:
    def __init__(
        self, mode: str, *, bus: str, resolv_conf: str, exclude: Sequence[Upstream] = ()
    ) -> None:
        self.mode = mode  # "auto" | "nm" | "netlink"
        self.bus = bus  # 'system', 'session', an address, or "" for $PORTAL_BUS / the system bus
        self.resolv_conf = resolv_conf
        self.exclude = tuple(exclude)  # the stub's own addresses: never upstreams
        self.nm: NetworkManagerWatcher | None = None

    async def run(self, emit: Emit) -> None:
        # D-Bus is imported here, once the daemon serves DNS
        from portal.edges.control_api import resolve_bus
        from portal.edges.nm import nm_appears, nm_available

        self.bus = resolve_bus(self.bus)
        use_nm = self.mode == "nm" or (self.mode == "auto" and await nm_available(self.bus))
        if use_nm:
            log.info("watching NetworkManager")
            await self._watch_nm(emit)
            return
        try:
            from portal.edges.netlink import NetlinkWatcher  # pyroute2, only without NM
        except ImportError:
            log.warning("NetworkManager is not on the bus and netlink is unavailable; no detection")
            return
        log.info("NetworkManager is not on the bus: watching the kernel's links (netlink)")
        watcher = NetlinkWatcher(emit, resolv_conf=self.resolv_conf, exclude_upstreams=self.exclude)
        netlink = asyncio.get_running_loop().create_task(watcher.run())
        try:
            if self.mode == "auto" and await nm_appears(self.bus):
                netlink.cancel()
                log.info("NetworkManager appeared on the bus: watching it instead of netlink")
                await self._watch_nm(emit)
            else:
                await netlink
        finally:
            netlink.cancel()

    async def _watch_nm(self, emit: Emit) -> None:
        from portal.edges.nm import NetworkManagerWatcher

        self.nm = NetworkManagerWatcher(self.bus, emit)
        await self.nm.run()

    async def check_connectivity(self) -> None:
        if self.nm is not None:
            await self.nm.check_connectivity()
