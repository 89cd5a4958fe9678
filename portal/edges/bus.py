"""Connecting to a D-Bus bus named by the user: 'system', 'session' or an address.

All D-Bus code of portal imports dbus_next only through the edges, so the maintained drop-in
fork dbus-fast can replace it by changing these imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from dbus_next import BusType, Message, MessageType
from dbus_next.aio import MessageBus

from portal.errors import (
    DaemonUnreachable,
    InvalidAddress,
    InvalidDomain,
    InvalidTTL,
    NoSuchOverride,
    NotAuthorized,
    PortalError,
    StateError,
    TooManyOverrides,
)

BUS_NAME = "org.portalhelper.Portal1"
OBJECT_PATH = "/org/portalhelper/Portal1"
INTERFACE = "org.portalhelper.Portal1"
ERROR_PREFIX = "org.portalhelper.Portal1.Error."

#: D-Bus error names (after ERROR_PREFIX) of the control API, both ways; "Failed" otherwise.
ERRORS: dict[str, type[PortalError]] = {
    "InvalidDomain": InvalidDomain,
    "InvalidAddress": InvalidAddress,
    "InvalidTTL": InvalidTTL,
    "TooManyOverrides": TooManyOverrides,
    "NoSuchOverride": NoSuchOverride,
    "StateError": StateError,
    "NotAuthorized": NotAuthorized,
}


def error_name(exc: PortalError) -> str:
    for name, cls in ERRORS.items():
        if isinstance(exc, cls):
            return ERROR_PREFIX + name
    return ERROR_PREFIX + "Failed"


def resolve_bus(choice: str | None) -> str:
    """The bus to use: the flag, else $PORTAL_BUS, else 'system'."""
    return choice or os.environ.get("PORTAL_BUS") or "system"


def describe(choice: str) -> str:
    if choice == "system":
        addr = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/dbus/system_bus_socket")
        return f"the system bus ({addr})"
    if choice == "session":
        return f"the session bus ({os.environ.get('DBUS_SESSION_BUS_ADDRESS', 'not set')})"
    return f"the bus at {choice}"


async def connect(choice: str) -> MessageBus:
    """Connect, translating every failure into DaemonUnreachable with a one-line reason."""
    try:
        if choice == "system":
            bus = MessageBus(bus_type=BusType.SYSTEM)
        elif choice == "session":
            if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
                raise DaemonUnreachable("no session bus: DBUS_SESSION_BUS_ADDRESS is not set")
            bus = MessageBus(bus_type=BusType.SESSION)
        else:
            bus = MessageBus(bus_address=choice)
        try:
            return await bus.connect()
        except BaseException:
            close_socket(bus)
            raise
    except DaemonUnreachable:
        raise
    except Exception as exc:  # dbus_next raises OSError, ValueError, InvalidAddressError...
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise DaemonUnreachable(f"cannot connect to {describe(choice)}: {reason}") from exc


def close_socket(bus: MessageBus) -> None:
    """dbus-next 0.2.3 only shuts its socket down, never closes it (nor its file object), not
    even when connecting fails: close both so no descriptor leaks."""
    for attr in ("_stream", "_sock"):
        with contextlib.suppress(Exception):
            getattr(bus, attr).close()


async def call_bus_daemon(
    bus: MessageBus, member: str, signature: str = "", body: list[object] | None = None
) -> Message | None:
    """Call a method of the bus itself (org.freedesktop.DBus: AddMatch, GetNameOwner,
    NameHasOwner, GetConnectionCredentials...); the reply, or None when it is an error."""
    reply = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    if reply is None or reply.message_type == MessageType.ERROR:
        return None
    return reply


async def close(
    bus: MessageBus, gone: asyncio.Future[None] | None = None, timeout_s: float = 2.0
) -> None:
    """Disconnect and wait until the connection is really closed, then close the socket.

    A round trip first flushes dbus-next's write queue: a call cancelled just after it was
    queued would otherwise be written to the shut-down socket, failing a future nobody reads.
    `gone` is a pending `wait_for_disconnect()` of this bus, if the caller started one; its
    outcome (an EOF is the disconnect we asked for) is retrieved here.
    """
    if bus.connected:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                bus.call(
                    Message(
                        destination="org.freedesktop.DBus",
                        path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus.Peer",
                        member="Ping",
                    )
                ),
                1.0,
            )
    with contextlib.suppress(Exception):
        bus.disconnect()
    if gone is None:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(bus.wait_for_disconnect()), timeout_s)
    else:
        await asyncio.wait([gone], timeout=timeout_s)
        if not gone.done():
            gone.cancel()
        elif not gone.cancelled():
            gone.exception()
    close_socket(bus)
