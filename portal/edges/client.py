"""The CLI's side of the control API: call the daemon's methods, follow its signals.

Low-level messages only (no introspection round trip), so a command costs one connection and
one call. D-Bus errors are translated into portal's own exceptions here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dbus_next import Message, MessageFlag, MessageType
from dbus_next.aio import MessageBus

from portal.core.report import OverrideView, StatusReport
from portal.edges.bus import (
    BUS_NAME,
    ERROR_PREFIX,
    ERRORS,
    INTERFACE,
    OBJECT_PATH,
    CallFailed,
    add_match,
    call,
    close,
    connect,
    describe,
    from_variants,
    unwrap,
)
from portal.errors import DaemonUnreachable, NotAuthorized, PortalError

CALL_TIMEOUT_S = 30.0  # polkit may prompt for a password


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
        text = exc.text or exc.name
        if exc.name.startswith(ERROR_PREFIX):
            return ERRORS.get(exc.name[len(ERROR_PREFIX) :], PortalError)(text)
        if exc.name in (
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "org.freedesktop.DBus.Error.NameHasNoOwner",
        ):
            # Where portal is installed the bus starts the daemon itself (D-Bus activation of
            # portal.service): this bus cannot.
            return DaemonUnreachable(
                f"the portal daemon is not running on {describe(self.choice)}; start it "
                "(systemctl enable --now portal.service) or pass --bus to reach another bus"
            )
        if exc.name.startswith(("org.freedesktop.DBus.Error.Spawn.", "org.freedesktop.systemd1.")):
            return DaemonUnreachable(
                f"the bus could not start the portal daemon: {text} "
                "(see: journalctl -u portal.service)"
            )
        if exc.name in (
            "org.freedesktop.DBus.Error.AccessDenied",
            "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
        ):
            return NotAuthorized(f"not authorised: {text}")
        return PortalError(f"{member} failed: {text}")

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
