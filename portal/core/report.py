"""What the daemon reports through its control API, as one type each.

    StatusReport   GetStatus() and StateChanged: network, portal state, DNS, wiring
    OverrideView   one row of ListOverrides() (and AddOverride's answer)

The daemon builds them, edges/control.py sends them, and the CLI and the agent read them back;
portal/edges/bus.py is the one place that turns them into D-Bus a{sv} and back
(`to_variants`, `from_variants`), the CLI prints `to_plain()` as its JSON. To add a field, add
it below with a default: the D-Bus dictionary, the JSON and the readers follow (a reader of an
older daemon gets the default). Field order is the dictionary's and the JSON's key order.

Also the control API's lifetimes: `ttl_s` 0 asks for the daemon's default, TTL_FOREVER for
"until removed" (docs/dbus-api.md).

Pure: frozen dataclasses and plain values; no D-Bus, no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields

from portal.core.connectivity import Connectivity

# typing.TYPE_CHECKING without importing typing (about 5 ms of a one-shot command)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from portal.core.model import Override

    T = TypeVar("T")

TTL_DEFAULT = 0
TTL_FOREVER = 0xFFFFFFFFFFFFFFFF  # the largest `t`: until removed


@dataclass(frozen=True, slots=True)
class StatusReport:
    """The daemon's status, as `portal status` and the agent see it."""

    version: str = ""
    listen: tuple[str, ...] = ()  # ADDR:PORT the stub answers on
    upstreams: tuple[str, ...] = ()
    upstream_source: str = ""  # "config", "NetworkManager", "resolv.conf (PATH)", "none"
    network: str = ""  # human name, "" when none
    network_id: str = ""
    interface: str = ""
    state: Connectivity = Connectivity.UNKNOWN
    portal_url: str = ""  # the sign-in page, "" when none is known
    venue_dns: tuple[str, ...] = ()
    seconds_remaining: int = -1  # RFC 8908 session time, -1 when unknown
    overrides: int = 0  # overrides answering on this network now
    wiring: str = ""  # how the stub is wired into name resolution (one line)
    portal_hosts: tuple[str, ...] = ()  # names routed to the venue's DNS
    auth: str = ""  # "polkit" or "credentials"
    probe_error: str = ""  # why the last probe round failed as a whole, "" when it ran
    nm_connectivity: Connectivity = Connectivity.UNKNOWN  # NM's own verdict (desktops act on it)
    user_dns: str = ""  # the portal's name via the user's resolver: resolves, fails, checking
    # -- staying signed in (issue 15)
    expired: bool = False  # signed in on this connection, and the portal took the network back
    expiry_watch: bool = False  # re-probing while online: the network was captive
    quiet: bool = False  # the user asked not to be asked to sign in on this network
    quiet_networks: tuple[str, ...] = ()  # the names of every such network
    # -- where the traffic goes (issue 15): a VPN in the way, venue addresses routed elsewhere
    vpn: str = ""  # the VPN's interface, "" when none carries the traffic or the DNS
    vpn_name: str = ""  # NetworkManager's name for it, else its kind ("WireGuard", "tun/tap")
    vpn_routing: str = ""  # "policy" (wg-quick's rules), "split" (def1), "default", "" (DNS only)
    vpn_dns: bool = False  # the user's resolvers are reached through the VPN
    vpn_bypass: bool = True  # a socket bound to the network's interface gets around it
    clashes: tuple[str, ...] = ()  # "ROLE ADDRESS INTERFACE": venue addresses routed elsewhere
    # -- the MAC address the network knows us by (issue 15)
    random_mac: bool = False  # a new random MAC each connection: why the portal asks again
    stable_mac_command: str = ""  # how to keep one MAC on this network only, "" when unknown


@dataclass(frozen=True, slots=True)
class OverrideView:
    """One override as the API shows it."""

    name: str = ""
    addresses: tuple[str, ...] = ()
    expires_at: int = 0  # Unix seconds, 0 = until removed
    scope: str = ""  # the network id it answers on, "" = any network
    scope_name: str = ""
    source: str = "user"  # "user" or "auto" (pinned by portal detection)
    active: bool = False  # answers on the current network right now
    created_by: str = ""

    @classmethod
    def of(cls, o: Override, *, active: bool) -> OverrideView:
        return cls(
            name=o.name,
            addresses=o.addresses,
            expires_at=0 if o.expires_at is None else int(o.expires_at),
            scope=o.scope or "",
            scope_name=o.scope_name,
            source=o.source.value,
            active=active,
            created_by=o.created_by,
        )


def to_plain(report: object) -> dict[str, Any]:
    """Field name → value, in field order: text, numbers, truth values, lists of text."""
    out: dict[str, Any] = {}
    for f in fields(report):  # type: ignore[arg-type]
        value = getattr(report, f.name)
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def from_plain(cls: type[T], raw: Mapping[str, Any]) -> T:
    """Read a report from plain values. Tolerant on purpose, so that an older or newer daemon
    never stops a reader: unknown keys are ignored, and a missing or mistyped value (a number
    where text belongs, an unknown state) takes the field's default."""
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in raw:
            value = _coerce(raw[f.name], f.default)
            if value is not _MISSING:
                values[f.name] = value
    return cls(**values)


_MISSING: Any = object()


def _coerce(value: Any, default: Any) -> Any:
    if isinstance(default, enum.Enum):
        try:
            return type(default)(value)
        except ValueError:
            return _MISSING
    if isinstance(default, bool):
        return value if isinstance(value, bool) else _MISSING
    if isinstance(default, int):
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISSING
    if isinstance(default, str):
        return value if isinstance(value, str) else _MISSING
    if isinstance(default, tuple):
        if isinstance(value, list | tuple):
            return tuple(v for v in value if isinstance(v, str))
        return _MISSING
    return _MISSING
