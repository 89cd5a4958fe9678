"""The CLI's light client: one-shot calls to the daemon over a blocking Unix socket.

`portal list`, `status`, `add`... make one or two calls and exit; importing dbus-next's asyncio
client took longer than all the rest of such a command. This client speaks the protocol itself
(portal/core/dbus_message.py holds the marshalling): it connects, authenticates with SASL
EXTERNAL, says Hello and makes the call in one write, then reads the answers, so a command costs
one round trip to the bus. Replies and errors come out exactly as from the dbus-next client
(portal/edges/client.py): plain values, and portal's own exceptions through control_api.py.

It reads `unix:path=` and `unix:abstract=` addresses (every bus a Linux desktop or server
has); for any other address `open_client()` falls back to the dbus-next client, which then
connects (or fails) as it always did. It must not import asyncio or dbus_next but for that
fallback, and is for one-shot calls only: `status --watch`, the agent and the daemon stay on
dbus-next.
"""

from __future__ import annotations

# The C socket object alone: the `socket` module on top of it costs 3 ms of imports
# (selectors, enum conversions) of which this client uses nothing.
import _socket
import os
import time

from portal.core import dbus_message as dm
from portal.edges.control_api import (
    BUS_NAME,
    INTERFACE,
    OBJECT_PATH,
    bus_address,
    describe,
    error_from_reply,
)
from portal.errors import DaemonUnreachable, PortalError

# typing.TYPE_CHECKING without importing typing (about 5 ms of a one-shot command)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CALL_TIMEOUT_S = 30.0  # polkit may prompt for a password (the dbus-next client's bound too)
MAX_AUTH_LINE_BYTES = 16 * 1024
RECV_BYTES = 64 * 1024

# What dbus-next accepts unescaped in an address value; anything else there, and any other
# transport or option, is left to dbus-next (which then fails or connects as it always did).
_ADDRESS_CHARS = frozenset("-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_/.%")
_HEX = frozenset("0123456789abcdefABCDEF")


def _unescape(value: str) -> str | None:
    """Percent-decoding of an address value (D-Bus specification, "Server Addresses")."""
    if not set(value) <= _ADDRESS_CHARS:
        return None
    out = bytearray()
    i = 0
    while i < len(value):
        if value[i] == "%":
            if not set(value[i + 1 : i + 3]) <= _HEX or len(value[i + 1 : i + 3]) != 2:
                return None
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out += value[i].encode()
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return None


def unix_socket_addresses(address: str) -> list[str] | None:
    """The socket addresses ('/path', or '\\0name' for an abstract one) of a D-Bus address
    string, in order; None unless every entry is `unix:path=` or `unix:abstract=`."""
    out = []
    for entry in address.split(";"):
        if not entry:
            continue
        transport, colon, options = entry.partition(":")
        if transport != "unix" or not colon:
            return None
        values: dict[str, str] = {}
        for pair in options.split(","):
            if not pair:
                continue
            key, equals, raw = pair.partition("=")
            value = _unescape(raw)
            if not equals or value is None:
                return None
            values[key] = value
        if values.get("path"):
            out.append(values["path"])
        elif values.get("abstract"):
            out.append("\0" + values["abstract"])
        else:
            return None
    return out or None


def unwrap(value: Any) -> Any:
    """Variants (possibly nested) → plain Python values."""
    if isinstance(value, dm.Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class _Closed(Exception):
    """The bus closed the connection."""


class SyncClient:
    """A connection to the bus for a few calls to the daemon, then close()."""

    def __init__(self, sock: _socket.socket, choice: str) -> None:
        self.sock = sock
        self.choice = choice
        self._buf = bytearray()
        self._serial = 1  # 1 is Hello's
        self._authenticated = False  # the SASL exchange done and Hello answered

    @classmethod
    def open(cls, choice: str) -> SyncClient | None:
        """Connect to 'system', 'session' or an address; None when it is not an address this
        client reads. DaemonUnreachable when it cannot connect."""
        targets = unix_socket_addresses(bus_address(choice))
        if targets is None:
            return None
        error: OSError | None = None
        for target in targets:
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
            try:
                sock.settimeout(CALL_TIMEOUT_S)
                sock.connect(target)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            return cls(sock, choice)
        assert error is not None
        raise DaemonUnreachable(f"cannot connect to {describe(choice)}: {_reason(error)}")

    def close(self) -> None:
        self.sock.close()

    def call(self, member: str, signature: str = "", body: list[Any] | None = None) -> list[Any]:
        """Call `member` of the daemon's interface; its reply's values, or portal's error."""
        deadline = time.monotonic() + CALL_TIMEOUT_S
        self._serial += 1
        serial = self._serial
        msg = dm.method_call(
            serial=serial,
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface=INTERFACE,
            member=member,
            signature=signature,
            body=body or [],
            flags=dm.ALLOW_INTERACTIVE_AUTHORIZATION,
        )
        out = dm.encode_message(msg)
        if not self._authenticated:
            # The SASL exchange, Hello and the call in one write: the bus reads them in order
            # (the specification allows a client to send BEGIN and its messages ahead).
            hello = dm.method_call(
                serial=1,
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="Hello",
            )
            out = dm.auth_external(os.getuid()) + dm.BEGIN + dm.encode_message(hello) + out
        try:
            self.sock.sendall(out)
            if not self._authenticated:
                self._authenticate(deadline)
            reply = self._reply_to(serial, deadline)
        except TimeoutError:
            if not self._authenticated:
                raise self._unreachable("timed out") from None
            raise DaemonUnreachable(
                f"the daemon did not answer {member} within {CALL_TIMEOUT_S:.0f} s"
            ) from None
        except _Closed:
            if not self._authenticated:
                raise self._unreachable("the bus closed the connection") from None
            raise DaemonUnreachable(
                f"lost the connection to {describe(self.choice)} during {member}"
            ) from None
        except OSError as exc:
            if not self._authenticated:
                raise self._unreachable(_reason(exc)) from exc
            raise DaemonUnreachable(
                f"lost the connection to {describe(self.choice)}: {_reason(exc)}"
            ) from exc
        except dm.DBusWireError as exc:
            raise PortalError(f"unreadable message from {describe(self.choice)}: {exc}") from exc
        if reply.type == dm.ERROR:
            text = reply.body[0] if reply.body else reply.error_name
            raise error_from_reply(member, reply.error_name, str(text), self.choice)
        return [unwrap(v) for v in reply.body]

    def _unreachable(self, reason: str) -> DaemonUnreachable:
        return DaemonUnreachable(f"cannot connect to {describe(self.choice)}: {reason}")

    def _recv(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        chunk = self.sock.recv(RECV_BYTES)
        if not chunk:
            raise _Closed
        self._buf += chunk

    def _authenticate(self, deadline: float) -> None:
        while b"\r\n" not in self._buf:
            if len(self._buf) > MAX_AUTH_LINE_BYTES:
                raise self._unreachable("the bus's authentication line is too long")
            self._recv(deadline)
        line, _, rest = bytes(self._buf).partition(b"\r\n")
        self._buf = bytearray(rest)
        ok, said = dm.auth_reply(line)
        if not ok:
            # dbus-next's words, so both clients fail alike
            raise self._unreachable(f"authentication failed: {said}")
        hello = self._reply_to(1, deadline)
        if hello.type == dm.ERROR:
            text = hello.body[0] if hello.body else hello.error_name
            raise self._unreachable(str(text))
        self._authenticated = True  # and connected: the bus said Hello back

    def _reply_to(self, serial: int, deadline: float) -> dm.Message:
        """The METHOD_RETURN or ERROR answering `serial`; signals (NameAcquired...) and other
        messages are skipped."""
        while True:
            while len(self._buf) < dm.FIXED_HEADER_BYTES:
                self._recv(deadline)
            total = dm.message_length(bytes(self._buf[: dm.FIXED_HEADER_BYTES]))
            while len(self._buf) < total:
                self._recv(deadline)
            msg = dm.decode_message(bytes(self._buf[:total]))
            del self._buf[:total]
            if msg.type in (dm.METHOD_RETURN, dm.ERROR) and msg.reply_serial == serial:
                return msg


class DbusNextClient:
    """The dbus-next client behind the same blocking `call()`, for the addresses SyncClient
    does not read (tcp:, ...). Imports asyncio and dbus-next when made, not before."""

    def __init__(self, choice: str) -> None:
        import asyncio

        from portal.edges.client import Client

        self._loop = asyncio.new_event_loop()
        try:
            self._client = self._loop.run_until_complete(Client.open(choice))
        except BaseException:
            self._loop.close()
            raise

    def call(self, member: str, signature: str = "", body: list[Any] | None = None) -> list[Any]:
        return self._loop.run_until_complete(self._client.call(member, signature, body))

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self._client.aclose())
        finally:
            self._loop.close()


def open_client(choice: str) -> SyncClient | DbusNextClient:
    """A connection for one-shot calls: the light client when it reads the address."""
    return SyncClient.open(choice) or DbusNextClient(choice)
