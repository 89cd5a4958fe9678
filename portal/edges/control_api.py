"""The control API's names, its errors both ways, and the bus a user names.

Imports nothing but portal.errors and os: the CLI's light client (sync_client.py) needs these
without loading dbus-next. portal/edges/bus.py re-exports them for the dbus-next side, and
client.py translates errors through `error_from_reply` too; tests/edges/test_sync_client.py
checks that the two clients agree.
"""

from __future__ import annotations

import os

from portal.errors import (
    DaemonUnreachable,
    InvalidAddress,
    InvalidDomain,
    InvalidTTL,
    NoNetwork,
    NoSuchNetwork,
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
    "NoNetwork": NoNetwork,
    "NoSuchNetwork": NoSuchNetwork,
    "StateError": StateError,
    "NotAuthorized": NotAuthorized,
}


def error_name(exc: PortalError) -> str:
    """The D-Bus error name the daemon answers `exc` with."""
    for name, cls in ERRORS.items():
        if isinstance(exc, cls):
            return ERROR_PREFIX + name
    return ERROR_PREFIX + "Failed"


DEFAULT_SYSTEM_BUS = "unix:path=/var/run/dbus/system_bus_socket"  # dbus-next's default too


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


def bus_address(choice: str) -> str:
    """The address string behind 'system', 'session' or an address."""
    if choice == "system":
        return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", DEFAULT_SYSTEM_BUS)
    if choice == "session":
        address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        if not address:
            raise DaemonUnreachable("no session bus: DBUS_SESSION_BUS_ADDRESS is not set")
        return address
    return choice


def error_from_reply(member: str, name: str, text: str, choice: str) -> PortalError:
    """The exception for an error reply `name` ("" when it had none) with message `text`."""
    if name.startswith(ERROR_PREFIX):
        return ERRORS.get(name[len(ERROR_PREFIX) :], PortalError)(text)
    if name in (
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
    ):
        # Where portal is installed the bus starts the daemon itself (D-Bus activation of
        # portal.service): this bus cannot.
        return DaemonUnreachable(
            f"the portal daemon is not running on {describe(choice)}; start it "
            "(systemctl enable --now portal.service) or pass --bus to reach another bus"
        )
    if name.startswith(("org.freedesktop.DBus.Error.Spawn.", "org.freedesktop.systemd1.")):
        return DaemonUnreachable(
            f"the bus could not start the portal daemon: {text} (see: journalctl -u portal.service)"
        )
    if name in (
        "org.freedesktop.DBus.Error.AccessDenied",
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
    ):
        return NotAuthorized(f"not authorised: {text}")
    return PortalError(f"{member} failed: {text}")
