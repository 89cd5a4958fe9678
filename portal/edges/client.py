"""The CLI's side of the control API: call the daemon's methods, follow its signals.

Low-level messages only (no introspection round trip), so a command costs one connection and
one call. D-Bus errors are translated into portal's own exceptions here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from dbus_next import Message, MessageFlag, MessageType
from dbus_next.aio import MessageBus

from portal.edges.bus import (
    BUS_NAME,
    ERROR_PREFIX,
    ERRORS,
    INTERFACE,
    OBJECT_PATH,
    call_bus_daemon,
    close,
    connect,
    describe,
)
from portal.errors import DaemonUnreachable, NotAuthorized, PortalError

CALL_TIMEOUT_S = 30.0  # polkit may prompt for a password


def unwrap(value: Any) -> Any:
    """Variants (possibly nested) → plain Python values."""
    if hasattr(value, "signature") and hasattr(value, "value"):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


class Client:
    def __init__(self, bus: MessageBus, choice: str) -> None:
        self.bus = bus
        self.choice = choice

    @classmethod
    async def open(cls, choice: str) -> Client:
        return cls(await connect(choice), choice)

    def close(self) -> None:
        self.bus.disconnect()

    async def aclose(self) -> None:
        """Disconnect and wait until the socket is really closed."""
        await close(self.bus)

    async def call(
        self, member: str, signature: str = "", body: list[Any] | None = None
    ) -> list[Any]:
        msg = Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface=INTERFACE,
            member=member,
            signature=signature,
            body=body or [],
            flags=MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION,
        )
        try:
            reply = await asyncio.wait_for(self.bus.call(msg), CALL_TIMEOUT_S)
        except TimeoutError:
            raise DaemonUnreachable(
                f"the daemon did not answer {member} within {CALL_TIMEOUT_S:.0f} s"
            ) from None
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else reply.error_name
            name = reply.error_name or ""
            if name.startswith(ERROR_PREFIX):
                raise ERRORS.get(name[len(ERROR_PREFIX) :], PortalError)(text)
            if name in (
                "org.freedesktop.DBus.Error.ServiceUnknown",
                "org.freedesktop.DBus.Error.NameHasNoOwner",
            ):
                # Where portal is installed the bus starts the daemon itself (D-Bus
                # activation of portal.service): this bus cannot.
                raise DaemonUnreachable(
                    f"the portal daemon is not running on {describe(self.choice)}; start it "
                    "(systemctl enable --now portal.service) or pass --bus to reach another bus"
                )
            if name.startswith(("org.freedesktop.DBus.Error.Spawn.", "org.freedesktop.systemd1.")):
                raise DaemonUnreachable(
                    f"the bus could not start the portal daemon: {text} "
                    "(see: journalctl -u portal.service)"
                )
            if name in (
                "org.freedesktop.DBus.Error.AccessDenied",
                "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
            ):
                raise NotAuthorized(f"not authorised: {text}")
            raise PortalError(f"{member} failed: {text}")
        return [unwrap(v) for v in reply.body]

    async def watch(self, on_signal: Callable[[str, list[Any]], None]) -> None:
        """Call on_signal(member, body) for every signal of the daemon until disconnected."""
        rule = f"type='signal',interface='{INTERFACE}',path='{OBJECT_PATH}'"
        await call_bus_daemon(self.bus, "AddMatch", "s", [rule])

        def handler(msg: Message) -> None:
            if (
                msg.message_type == MessageType.SIGNAL
                and msg.interface == INTERFACE
                and msg.path == OBJECT_PATH
            ):
                on_signal(msg.member, [unwrap(v) for v in msg.body])

        self.bus.add_message_handler(handler)
        await self.bus.wait_for_disconnect()
