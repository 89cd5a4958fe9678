"""The clients' side of the control API: call the daemon's methods, follow its state.

    Client(bus, choice)                the daemon's methods (GetStatus, ListOverrides, ...)
    DaemonLink(bus, choice, emit)      the daemon followed: its status and overrides read,
                                       then kept current through its signals (the agent and
                                       `portal open` both)

Low-level messages only (no introspection round trip), so a command costs one connection and
one call. D-Bus errors become portal's own exceptions through control_api.error_from_reply,
as in the CLI's light client (sync_client.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from dbus_next import Message, MessageFlag, MessageType
from dbus_next.aio import MessageBus

from portal.core.agent_logic import DaemonVanished, OverridesListed, StatusChanged
from portal.core.report import OverrideView, StatusReport
from portal.edges.bus import (
    CallFailed,
    add_match,
    call,
    close,
    connect,
    from_variants,
    name_owner,
    name_owner_changed,
    name_owner_rule,
    unwrap,
)
from portal.edges.control_api import BUS_NAME, INTERFACE, OBJECT_PATH, error_from_reply
from portal.errors import DaemonUnreachable, PortalError

log = logging.getLogger("portal.client")

CALL_TIMEOUT_S = 30.0  # polkit may prompt for a password
STATUS_READ_ATTEMPTS = 3


class Client:
    def __init__(self, bus: MessageBus, choice: str) -> None:
        self.bus = bus
        self.choice = choice

    @classmethod
    async def open(cls, choice: str) -> Client:
        return cls(await connect(choice), choice)

    async def aclose(self) -> None:
        """Disconnect and wait until the socket is really closed."""
        await close(self.bus)

    async def call(
        self, member: str, signature: str = "", body: list[Any] | None = None
    ) -> list[Any]:
        try:
            reply = await call(
                self.bus,
                BUS_NAME,
                OBJECT_PATH,
                INTERFACE,
                member,
                signature,
                body,
                flags=MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION,
                timeout_s=CALL_TIMEOUT_S,
            )
        except TimeoutError:
            raise DaemonUnreachable(
                f"the daemon did not answer {member} within {CALL_TIMEOUT_S:.0f} s"
            ) from None
        except CallFailed as exc:
            raise self._translate(member, exc) from None
        return [unwrap(v) for v in reply.body]

    def _translate(self, member: str, exc: CallFailed) -> PortalError:
        """A D-Bus error → portal's own exception, with the daemon's one-line message."""
        return error_from_reply(member, exc.name, exc.text or exc.name, self.choice)

    async def status(self) -> StatusReport:
        (raw,) = await self.call("GetStatus")
        return from_variants(StatusReport, raw)

    async def overrides(self) -> list[OverrideView]:
        (rows,) = await self.call("ListOverrides")
        return [from_variants(OverrideView, row) for row in rows]

    async def add(
        self, name: str, addresses: list[str], ttl_s: int, *, any_network: bool
    ) -> OverrideView:
        (raw,) = await self.call("AddOverride", "sastb", [name, addresses, ttl_s, any_network])
        return from_variants(OverrideView, raw)

    async def watch(self, on_signal: Callable[[str, list[Any]], None]) -> None:
        """Call on_signal(member, body) for every signal of the daemon until disconnected."""
        await add_match(self.bus, f"type='signal',interface='{INTERFACE}',path='{OBJECT_PATH}'")

        def handler(msg: Message) -> None:
            if (
                msg.message_type == MessageType.SIGNAL
                and msg.interface == INTERFACE
                and msg.path == OBJECT_PATH
            ):
                on_signal(msg.member, [unwrap(v) for v in msg.body])

        self.bus.add_message_handler(handler)
        await self.bus.wait_for_disconnect()


DaemonEvent = StatusChanged | OverridesListed | DaemonVanished


class DaemonLink:
    """The daemon as a follower sees it: its status and overrides, then their changes.

    Everything it learns goes to `emit`, in the order it happened: `StatusChanged` (from
    `StateChanged` or a read), `OverridesListed` (read at the start, after `OverridesChanged`
    and when the daemon comes back), `DaemonVanished`. Signals count only from the current
    owner of the daemon's name: anyone on the bus can emit a `StateChanged`, and a forged
    sign-in URL or venue DNS would be phishing.
    """

    def __init__(self, bus: MessageBus, choice: str, emit: Callable[[DaemonEvent], None]) -> None:
        self._bus = bus
        self._client = Client(bus, choice)
        self._emit = emit
        self._owner: str | None = None
        self._signals_seen = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> bool:
        """Subscribe to the daemon's signals and arrivals; True when it is on the bus now."""
        # Subscribe before reading, so that no change falls between the read and the signals.
        self._bus.add_message_handler(self._on_message)
        for rule in (
            f"type='signal',sender='{BUS_NAME}',interface='{INTERFACE}',path='{OBJECT_PATH}'",
            name_owner_rule(BUS_NAME),
        ):
            await add_match(self._bus, rule)
        self._owner = await name_owner(self._bus, BUS_NAME)
        return self._owner is not None

    def stop(self) -> None:
        self._bus.remove_message_handler(self._on_message)
        for task in self._tasks:
            task.cancel()

    async def read(self) -> None:
        """Read the status and the overrides and emit them; raise PortalError on failure.

        A signal that arrives while GetStatus is under way was sent before the answer and is
        emitted before it (the bus keeps the daemon's order); the status is read again then,
        so that the last status emitted is the daemon's newest.
        """
        for _ in range(STATUS_READ_ATTEMPTS):
            seen = self._signals_seen
            status = await self._client.status()
            if self._signals_seen == seen:
                break
        self._emit(StatusChanged(status))
        self._emit(OverridesListed(tuple(await self._client.overrides())))

    async def refresh(self) -> None:
        """`read()`, logging a failure instead of raising it."""
        try:
            await self.read()
        except PortalError as exc:
            log.warning("cannot read the daemon's status and overrides: %s", exc)

    async def check(self) -> None:
        try:
            await self._client.call("Check")
        except PortalError as exc:
            log.warning("check now: %s", exc)

    async def dont_ask(self, network_id: str) -> None:
        try:
            (label,) = await self._client.call("DontAskAgain", "s", [network_id])
            log.info("portal will not ask to sign in on %s again", label)
        except PortalError as exc:
            log.warning("don't ask again: %s", exc)

    async def ask_again(self, network_id: str) -> None:
        try:
            await self._client.call("AskAgain", "s", [network_id])
        except PortalError as exc:
            log.warning("ask again: %s", exc)

    async def _refresh_overrides(self) -> None:
        try:
            rows = await self._client.overrides()
        except PortalError as exc:
            log.warning("cannot list overrides: %s", exc)
            return
        self._emit(OverridesListed(tuple(rows)))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        new_owner = name_owner_changed(msg, BUS_NAME)
        if new_owner is not None:
            if not new_owner:
                log.info("the portal daemon left the bus; waiting for it to come back")
                self._owner = None
                self._emit(DaemonVanished())
                return
            log.info("the portal daemon is on the bus (%s)", new_owner)
            self._owner = new_owner
            self._spawn(self.refresh())
            return
        if msg.interface != INTERFACE or msg.path != OBJECT_PATH:
            return
        if msg.sender != self._owner:
            log.debug("%s from %s, not the daemon, ignoring", msg.member, msg.sender)
            return
        if msg.member == "StateChanged" and msg.signature == "a{sv}":
            self._signals_seen += 1
            self._emit(StatusChanged(from_variants(StatusReport, msg.body[0])))
        elif msg.member == "OverridesChanged":
            self._spawn(self._refresh_overrides())
