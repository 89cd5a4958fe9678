"""Plain data shared by every layer: overrides, networks, connectivity.

Frozen dataclasses and enums only; no behaviour beyond small derived properties.
Times are floats in seconds: wall-clock Unix time for anything persisted (`expires_at`),
monotonic time for in-memory timers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

# One name across all layers; its own module so that readers of the status need not build
# these dataclasses (portal/core/report.py, the CLI).
from portal.core.connectivity import Connectivity as Connectivity


class Source(enum.StrEnum):
    """Who made an override."""

    USER = "user"
    AUTO = "auto"  # a pin: made by portal detection, removed when the portal clears


@dataclass(frozen=True, slots=True)
class Override:
    """A name answered locally instead of by the upstream resolver."""

    name: str  # normalised: lower-case ASCII (IDNA), no trailing dot
    addresses: tuple[str, ...]  # normalised textual IPv4/IPv6 addresses
    expires_at: float | None  # wall-clock seconds; None = until removed
    scope: str | None = None  # network id it was made on; None = any network
    scope_name: str = ""  # human name of that network (SSID or connection id)
    source: Source = Source.USER
    created_at: float = 0.0
    created_by: str = ""

    @property
    def ipv4(self) -> tuple[str, ...]:
        return tuple(a for a in self.addresses if ":" not in a)

    @property
    def ipv6(self) -> tuple[str, ...]:
        return tuple(a for a in self.addresses if ":" in a)

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def applies_to(self, network_id: str | None) -> bool:
        """True when the override answers on the network `network_id` (None: no network)."""
        return self.scope is None or self.scope == network_id


@dataclass(frozen=True, slots=True)
class Network:
    """The network the laptop is on, as far as an edge (NM, netlink) can tell."""

    id: str  # stable id: NM connection UUID, or "link:<ifname>:<gateway>" without NM
    name: str = ""  # SSID or connection id, for people
    interface: str = ""
    kind: str = ""  # "wifi", "ethernet", ...
    addresses: tuple[str, ...] = ()  # our own addresses on it (probe source)
    venue_dns: tuple[str, ...] = ()  # the network's own DNS servers (DHCP-given)
    api_uri: str = ""  # RFC 8910 captive-portal API URI, when known
    check_uri: str = ""  # the NM connectivity check URI, when known
    # The MAC address the network knows us by (portals remember signed-in devices by it):
    mac_address: str = ""  # the interface's now (NM: the device's HwAddress)
    permanent_mac: str = ""  # the hardware's own ("" where there is none, as on a veth)
    mac_setting: str = ""  # the profile's cloned-mac-address ("random", "stable", ...; "" unset)
    profile: str = ""  # the NM connection profile's id (what nmcli takes), "" without NM


@dataclass(frozen=True, slots=True)
class Upstream:
    """A DNS server the stub forwards to."""

    host: str
    port: int = 53

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PortalStatus:
    """The portal state of the current network, as published to the CLI and agents."""

    network: Network | None = None
    state: Connectivity = Connectivity.UNKNOWN
    portal_url: str = ""
    seconds_remaining: int = -1
    portal_hosts: tuple[str, ...] = field(default=())  # names routed to the venue DNS
    probe_error: str = ""  # why the last probe round failed as a whole, "" when it ran
    # the network was signed in to in this connection and the portal took it back
    expired: bool = False
    # re-probing while online, because the network was captive in this connection
    expiry_watch: bool = False
