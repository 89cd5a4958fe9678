"""The desktop's own captive-portal prompt in this session, as the session bus shows it.

Looks for the two that prompt by themselves when NetworkManager says PORTAL, and follows them
coming and going, emitting `DesktopChanged` (core/agent_logic.py) when the answer changes:

- GNOME Shell: `org.gnome.Shell` owned, and its portal helper `org.gnome.Shell.PortalHelper`
  running or D-Bus activatable (Shell starts it by calling it: js/ui/status/network.js);
- plasma-nm: kded (`org.kde.kded6`, or `org.kde.kded5` on Plasma 5) with the module
  "networkmanagement" among its `loadedModules()` on `/kded` (KDE/kded src/kdedadaptor.h).
  kded loads that module in its first phase; a module that registers later announces itself
  with `moduleRegistered` on its own path (kdbusaddons' KDEDModule::setModuleName), which is
  followed too.

The rule that turns these facts into a handler is core/agent_logic.py `desktop_handler`; this
module only looks, and never raises into the agent: a call that fails or hangs counts as "not
there", logged. XDG_CURRENT_DESKTOP is logged beside the answer but not used for it: a user
unit sees it only when the session imported it into the user manager, while the bus names are
there whenever the components that would prompt actually run.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus

from portal.core.agent_logic import AgentEvent, DesktopChanged, DesktopHandler, desktop_handler
from portal.edges.bus import (
    BUS_DAEMON,
    CallFailed,
    add_match,
    call,
    call_bus_daemon,
    name_owner,
    name_owner_changed,
    name_owner_rule,
)

log = logging.getLogger(__name__)

GNOME_SHELL = "org.gnome.Shell"
GNOME_PORTAL_HELPER = "org.gnome.Shell.PortalHelper"
KDED_PATH = "/kded"
KDEDS = ("org.kde.kded6", "org.kde.kded5")  # each serves /kded under an interface of its name
PLASMA_NM_MODULE = "networkmanagement"
CALL_TIMEOUT_S = 5.0  # a hung component must not hold the agent's loop
WATCHED = (GNOME_SHELL, GNOME_PORTAL_HELPER, *KDEDS)


class DesktopWatch:
    """Which desktop prompt answers in the session of `bus`; `handler` is the last answer."""

    def __init__(self, bus: MessageBus, emit: Callable[[AgentEvent], None]) -> None:
        self._bus = bus
        self._emit = emit
        self.handler: DesktopHandler | None = None  # None until first looked
        self._again = asyncio.Event()  # something changed: look again
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe to the names' comings and goings, then look (emitting the first answer)."""
        self._bus.add_message_handler(self._on_message)
        rules = [name_owner_rule(name) for name in WATCHED]
        rules.append("type='signal',member='moduleRegistered',path_namespace='/modules'")
        for rule in rules:
            await add_match(self._bus, rule)
        await self.look()
        self._task = asyncio.get_running_loop().create_task(self._follow())

    def stop(self) -> None:
        self._bus.remove_message_handler(self._on_message)
        if self._task is not None:
            self._task.cancel()

    async def look(self) -> DesktopHandler:
        """Read the session bus now; emit DesktopChanged when the answer changed."""
        gnome_shell = await self._owned(GNOME_SHELL)
        gnome_helper = gnome_shell and (
            await self._owned(GNOME_PORTAL_HELPER) or await self._activatable(GNOME_PORTAL_HELPER)
        )
        plasma_nm = False
        for kded in KDEDS:
            if await self._owned(kded) and PLASMA_NM_MODULE in await self._kded_modules(kded):
                plasma_nm = True
                break
        handler = desktop_handler(
            gnome_shell=gnome_shell, gnome_helper=gnome_helper, plasma_nm=plasma_nm
        )
        if handler != self.handler:
            log.info(
                "desktop prompt for captive portals: %s (XDG_CURRENT_DESKTOP=%s)",
                handler.value,
                os.environ.get("XDG_CURRENT_DESKTOP", ""),
            )
            self.handler = handler
            self._emit(DesktopChanged(handler))
        return handler

    async def _follow(self) -> None:
        while True:
            await self._again.wait()
            self._again.clear()
            try:
                await self.look()
            except Exception as exc:  # a bus going away ends the agent elsewhere; not here
                log.warning("cannot look for the desktop's portal prompt: %s, ignoring", exc)

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        if msg.member == "moduleRegistered" and msg.sender != BUS_DAEMON:
            self._again.set()  # a kded module appeared (the sender is kded's unique name)
            return
        if any(name_owner_changed(msg, name) is not None for name in WATCHED):
            self._again.set()

    async def _owned(self, name: str) -> bool:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return await name_owner(self._bus, name) is not None
        except (CallFailed, TimeoutError) as exc:
            log.debug("cannot ask who owns %s: %s, ignoring", name, exc)
            return False

    async def _activatable(self, name: str) -> bool:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                reply = await call_bus_daemon(self._bus, "ListActivatableNames")
        except (CallFailed, TimeoutError) as exc:
            log.debug("cannot list activatable names: %s, ignoring", exc)
            return False
        return bool(reply.body) and name in reply.body[0]

    async def _kded_modules(self, kded: str) -> list[str]:
        try:
            reply = await call(
                self._bus, kded, KDED_PATH, kded, "loadedModules", timeout_s=CALL_TIMEOUT_S
            )
        except (CallFailed, TimeoutError) as exc:
            log.debug("cannot list %s's modules: %s, ignoring", kded, exc)
            return []
        body = reply.body[0] if reply.body else []
        return [m for m in body if isinstance(m, str)] if isinstance(body, list) else []
