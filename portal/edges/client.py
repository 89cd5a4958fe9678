"""The CLI's side of the control API: call the daemon's methods, follow its signals.

Low-level messages only (no introspection round trip), so a command costs one connection and
one call. D-Bus errors become portal's own exceptions through control_api.error_from_reply,
as in the CLI's light client (sync_client.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dbus_next import Message, MessageFlag, MessageType
from dbus_next.aio import MessageBus

from portal.core.report import OverrideView, StatusReport
from portal.edges.bus import CallFailed, add_match, call, close, connect, from_variants, unwrap
from portal.edges.control_api import BUS_NAME, INTERFACE, OBJECT_PATH, error_from_reply
from portal.errors import DaemonUnreachable, PortalError

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
