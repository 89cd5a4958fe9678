"""The one D-Bus layer of portal: connecting, calling, matching signals, closing.

    connect(choice) -> MessageBus          'system', 'session' or an address; DaemonUnreachable
    close(bus)                             flush, disconnect, wait, close the socket
    call(bus, destination, path, interface, member, signature, body) -> Message   CallFailed
    call_bus_daemon(bus, member, ...)      org.freedesktop.DBus itself (AddMatch, GetNameOwner...)
    add_match(bus, rule), name_owner(bus, name), name_owner_rule(name)
    name_owner_changed(msg, name)          a NameOwnerChanged signal about `name`, read
    unwrap(value)                          Variants (nested) to plain values
    to_variants(report), from_variants(cls, a{sv})   portal's API reports on the wire

The names of portal's own control API (BUS_NAME, OBJECT_PATH, INTERFACE, its errors) and the
bus a user names are in control_api.py, which the CLI's light client imports without dbus-next.
Every edge that speaks D-Bus (control, client, nm, notify, tray, resolver, logind, the agent)
goes through these, with raw messages rather than introspected proxies: one round trip per call
and no dependence on a peer's introspection data.

All D-Bus code of portal imports dbus_next only through the edges, so the maintained drop-in
fork dbus-fast can replace it by changing these imports. It must not decide anything: it
carries messages and translates dbus-next's failures into CallFailed / DaemonUnreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from typing import Any, TypeVar

from dbus_next import BusType, Message, MessageFlag, MessageType, Variant
from dbus_next.aio import MessageBus

from portal.core.report import from_plain, to_plain
from portal.edges.control_api import describe
from portal.errors import (
    DaemonUnreachable,
    PortalError,
)

BUS_DAEMON = "org.freedesktop.DBus"  # the bus's own name and interface
BUS_DAEMON_PATH = "/org/freedesktop/DBus"
PROPERTIES = "org.freedesktop.DBus.Properties"


class CallFailed(PortalError):
    """A D-Bus call was answered with an error (or not at all). `name` is the D-Bus error name,
    `text` its message; callers translate it into their own terms."""

    def __init__(self, member: str, name: str, text: str = "") -> None:
        super().__init__(f"{name}: {text}" if text else name)
        self.member = member
        self.name = name
        self.text = text


# --- connections -------------------------------------------------------------------------------


async def connect(choice: str) -> MessageBus:
    """Connect to 'system', 'session' or a bus address, translating every failure into
    DaemonUnreachable with a one-line reason."""
    bus: MessageBus | None = None
    try:
        if choice == "system":
            bus = MessageBus(bus_type=BusType.SYSTEM)
        elif choice == "session":
            if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
                raise DaemonUnreachable("no session bus: DBUS_SESSION_BUS_ADDRESS is not set")
            bus = MessageBus(bus_type=BusType.SESSION)
        else:
            bus = MessageBus(bus_address=choice)
        return await bus.connect()
    except DaemonUnreachable:
        raise
    except Exception as exc:  # dbus_next raises OSError, ValueError, InvalidAddressError...
        _close_leftovers(bus, exc)
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise DaemonUnreachable(f"cannot connect to {describe(choice)}: {reason}") from exc


def _close_leftovers(bus: MessageBus | None, exc: BaseException | None = None) -> None:
    """dbus-next 0.2.3 only shuts its socket down, never closes it (nor its file object), and
    when connecting fails inside `MessageBus()` (`_setup_socket` raises from `__init__`) the
    caller never even gets the object: its frame, still in the traceback, does. Close the socket
    and its file object either way, so no descriptor leaks (and no ResourceWarning later)."""
    holders: list[Any] = [bus]
    tb = exc.__traceback__ if exc is not None else None
    while tb is not None:
        holders.append(tb.tb_frame.f_locals.get("self"))
        tb = tb.tb_next
    for holder in holders:
        if isinstance(holder, MessageBus):
            for attr in ("_stream", "_sock"):
                with contextlib.suppress(Exception):
                    getattr(holder, attr).close()


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
                        destination=BUS_DAEMON,
                        path=BUS_DAEMON_PATH,
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
    _close_leftovers(bus)


def disconnected(bus: MessageBus) -> asyncio.Future[None]:
    """The bus's own disconnect future, to wait on or add callbacks to. Not
    `wait_for_disconnect()` in a task: cancelling that task would cancel dbus-next's own future
    and break the bus for its other users."""
    future: asyncio.Future[None] = bus._disconnect_future
    return future


# --- calls -------------------------------------------------------------------------------------


async def call(
    bus: MessageBus,
    destination: str,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
    *,
    flags: MessageFlag = MessageFlag.NONE,
    timeout_s: float | None = None,
) -> Message:
    """Call a method and return its reply; raise CallFailed for an error reply, TimeoutError
    when `timeout_s` passes first (the bus's own errors, OSError or EOFError, pass through)."""
    msg = Message(
        destination=destination,
        path=path,
        interface=interface,
        member=member,
        signature=signature,
        body=body or [],
        flags=flags,
    )
    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that coincides
    # with the reply, and a caller being stopped would then never stop.
    async with asyncio.timeout(timeout_s):
        reply = await bus.call(msg)
    if reply is None:
        raise CallFailed(member, "no reply")
    if reply.message_type == MessageType.ERROR:
        text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        raise CallFailed(member, reply.error_name or "org.freedesktop.DBus.Error.Failed", text)
    return reply


async def call_bus_daemon(
    bus: MessageBus, member: str, signature: str = "", body: list[Any] | None = None
) -> Message:
    """Call a method of the bus itself (org.freedesktop.DBus: AddMatch, GetNameOwner,
    NameHasOwner, GetConnectionCredentials...)."""
    return await call(bus, BUS_DAEMON, BUS_DAEMON_PATH, BUS_DAEMON, member, signature, body)


async def add_match(bus: MessageBus, rule: str) -> None:
    await call_bus_daemon(bus, "AddMatch", "s", [rule])


async def name_owner(bus: MessageBus, name: str) -> str | None:
    """The unique name that owns `name` now, None when no one does."""
    try:
        reply = await call_bus_daemon(bus, "GetNameOwner", "s", [name])
    except CallFailed:
        return None  # org.freedesktop.DBus.Error.NameHasNoOwner
    owner = reply.body[0] if reply.body else None
    return owner if isinstance(owner, str) and owner else None


def name_owner_rule(name: str) -> str:
    """The match rule for the bus's NameOwnerChanged signals about `name`."""
    return (
        f"type='signal',sender='{BUS_DAEMON}',interface='{BUS_DAEMON}',"
        f"member='NameOwnerChanged',arg0='{name}'"
    )


def name_owner_changed(msg: Message, name: str) -> str | None:
    """For the bus's NameOwnerChanged signal about `name`: its new owner ("" when it left).
    None for any other message (anyone can send a signal: only the bus's own counts)."""
    if (
        msg.message_type == MessageType.SIGNAL
        and msg.member == "NameOwnerChanged"
        and msg.interface == BUS_DAEMON
        and msg.sender == BUS_DAEMON
        and msg.signature == "sss"
        and msg.body[0] == name
    ):
        return str(msg.body[2])
    return None


# --- values ------------------------------------------------------------------------------------


def unwrap(value: Any) -> Any:
    """Variants (possibly nested, as `aa{sv}` arrives) → plain Python values."""
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


T = TypeVar("T")


def to_variants(report: object) -> dict[str, Variant]:
    """A report of portal's API (portal/core/report.py) → a{sv}: text 's', a truth value 'b',
    a number 'x', a list of text 'as'. The one way onto the wire."""
    out: dict[str, Variant] = {}
    for key, value in to_plain(report).items():
        if isinstance(value, bool):
            out[key] = Variant("b", value)
        elif isinstance(value, int):
            out[key] = Variant("x", value)
        elif isinstance(value, list):
            out[key] = Variant("as", [str(v) for v in value])
        else:
            out[key] = Variant("s", str(value))
    return out


def from_variants(cls: type[T], raw: Mapping[str, Any]) -> T:
    """a{sv} (or its unwrapped dictionary) → a report of portal's API; the one way off the
    wire. Tolerant: a missing or mistyped key takes the field's default."""
    return from_plain(cls, unwrap(dict(raw)))
