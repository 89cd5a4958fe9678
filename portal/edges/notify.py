"""Client of the desktop notification server (org.freedesktop.Notifications, session bus).

Translates: `Notification` → `Notify` calls, and the server's signals and comings and goings →
agent events (`ServerChanged`, `ActionInvoked`, `NotificationClosed`). It must not decide what to
show or when (that is `portal/core/agent_logic.py`), and must never raise into the agent for a
missing or misbehaving server: failures become `NotifyFailed`, which the agent logs.

Spec: Desktop Notifications Specification 1.2 (https://specifications.freedesktop.org/
notification-spec/). Servers are often D-Bus activated, so the first call is made even when no
one owns the name yet; the bus starts the server if it can.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus

from portal.core.agent_logic import (
    ActionInvoked,
    AgentEvent,
    Notification,
    NotificationClosed,
    ServerChanged,
)
from portal.edges.bus import (
    CallFailed,
    add_match,
    call,
    name_owner,
    name_owner_changed,
    name_owner_rule,
)
from portal.errors import PortalError

log = logging.getLogger(__name__)

NAME = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"
INTERFACE = "org.freedesktop.Notifications"
APP_NAME = "portal"
DESKTOP_ENTRY = "portal-agent"  # lets servers find our .desktop file (name, icon, settings)
CALL_TIMEOUT_S = 5.0  # a hung server must not hold the agent's loop


class NotifyFailed(PortalError):
    """The notification server refused a call or is not there."""


class NotificationServer:
    """The notification server on one session bus, as the agent sees it."""

    def __init__(self, bus: MessageBus, emit: Callable[[AgentEvent], None]) -> None:
        self._bus = bus
        self._emit = emit
        self._owner: str | None = None  # unique name of the current server
        self._reported: str | None = None  # the server last logged
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Subscribe to the server's signals and its arrivals, then report what is there now."""
        self._bus.add_message_handler(self._on_message)
        for rule in (f"type='signal',interface='{INTERFACE}',path='{PATH}'", name_owner_rule(NAME)):
            await add_match(self._bus, rule)
        await self._refresh()

    def stop(self) -> None:
        self._bus.remove_message_handler(self._on_message)
        for task in self._tasks:
            task.cancel()

    async def show(self, note: Notification, replaces_id: int = 0) -> tuple[int, int]:
        """Send `note` (in place of `replaces_id` when non-zero); return the server's id and
        the serial of its reply (which orders it among the server's signals)."""
        actions: list[str] = []
        for key, label in note.actions:
            actions += [key, label]
        hints = {
            "urgency": Variant("y", note.urgency),
            "category": Variant("s", note.category),
            "desktop-entry": Variant("s", DESKTOP_ENTRY),
        }
        if note.transient:
            hints["transient"] = Variant("b", True)
        reply = await self._call(
            "Notify",
            "susssasa{sv}i",
            [
                APP_NAME,
                replaces_id,
                "network-wireless",
                note.summary,
                note.body,
                actions,
                hints,
                note.expire_timeout_ms,
            ],
        )
        nid = reply.body[0] if reply.body else 0
        if not isinstance(nid, int) or nid <= 0:
            raise NotifyFailed(f"notification server returned id {nid!r}")
        return nid, reply.serial

    async def close(self, notification_id: int) -> None:
        await self._call("CloseNotification", "u", [notification_id])

    async def _call(self, member: str, signature: str, body: list[object]) -> Message:
        try:
            return await call(
                self._bus, NAME, PATH, INTERFACE, member, signature, body, timeout_s=CALL_TIMEOUT_S
            )
        except (CallFailed, TimeoutError, OSError, EOFError) as exc:
            raise NotifyFailed(f"{member}: {exc or type(exc).__name__}") from exc

    async def _refresh(self) -> None:
        """Ask for the capabilities (which may activate a server) and report the result."""
        try:
            reply = await self._call("GetCapabilities", "", [])
        except NotifyFailed as exc:
            log.info("no notification server on the session bus (%s); waiting for one", exc)
            self._owner = None
            self._emit(ServerChanged(None))
            return
        caps = reply.body[0] if reply.body else []
        self._owner = await name_owner(self._bus, NAME) or reply.sender
        capabilities = frozenset(c for c in caps if isinstance(c, str))
        if self._owner != self._reported:
            self._reported = self._owner
            log.info(
                "notification server %s, capabilities: %s",
                self._owner,
                ", ".join(sorted(capabilities)) or "none",
            )
        self._emit(ServerChanged(capabilities, self._owner or ""))

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        new_owner = name_owner_changed(msg, NAME)
        if new_owner is not None:
            if not new_owner:
                log.info("notification server left the session bus")
                self._owner = None
                self._emit(ServerChanged(None))
                return
            self._owner = new_owner
            task = asyncio.get_running_loop().create_task(self._refresh())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if msg.interface != INTERFACE or msg.path != PATH:
            return
        if self._owner is not None and msg.sender != self._owner:
            # Anyone on the session bus can send a signal; only the server's count.
            log.debug("%s from %s, not the notification server, ignoring", msg.member, msg.sender)
            return
        if msg.member == "ActionInvoked" and msg.signature == "us":
            self._emit(ActionInvoked(msg.body[0], msg.body[1]))
        elif msg.member == "NotificationClosed" and msg.signature == "uu":
            self._emit(NotificationClosed(msg.body[0], msg.body[1], msg.serial))
