"""NetworkManager edge: translate NM's D-Bus state into portal events.

`NetworkManagerWatcher.run()` subscribes to NM's signals first and reads its state after, so no
change falls between the two, then emits `NetworkChanged`, `UpstreamsChanged` and
`ConnectivityReported` (portal/core/events.py) whenever what they carry actually changes. It
survives NM restarting or being absent at start, and only logs NM-side errors ("..., ignoring").

Every NetworkManager D-Bus name (the CamelCase strings) lives in this module and nowhere else.
This module must not decide anything about portals: no probing, no DNS, no timers beyond
bounding and retrying its own D-Bus reads; it reports what NM says and the core decides.

It talks to the bus through portal/edges/bus.py with raw messages (Properties.GetAll, AddMatch)
rather than introspected proxies: one round trip per object instead of two, no dependence on
NM's introspection data, and signal handlers cannot trip over dbus-next's exact-arity rule.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus

from portal.core.events import (
    ConnectivityReported,
    NetworkChanged,
    UpstreamsChanged,
    VpnsReported,
)
from portal.core.inet import parse_server
from portal.core.model import Connectivity, Network, Upstream
from portal.core.paths import NmVpn
from portal.edges.bus import (
    PROPERTIES,
    CallFailed,
    add_match,
    call,
    call_bus_daemon,
    close,
    connect,
    disconnected,
    name_owner,
    name_owner_changed,
    name_owner_rule,
    unwrap,
)
from portal.errors import DaemonUnreachable

log = logging.getLogger(__name__)

NM_NAME = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
NM_IFACE = "org.freedesktop.NetworkManager"
DNS_PATH = "/org/freedesktop/NetworkManager/DnsManager"
DNS_IFACE = "org.freedesktop.NetworkManager.DnsManager"
ACTIVE_IFACE = "org.freedesktop.NetworkManager.Connection.Active"
ACTIVE_PREFIX = "/org/freedesktop/NetworkManager/ActiveConnection/"
DEVICE_IFACE = "org.freedesktop.NetworkManager.Device"
IP4_IFACE = "org.freedesktop.NetworkManager.IP4Config"
IP6_IFACE = "org.freedesktop.NetworkManager.IP6Config"
DHCP4_IFACE = "org.freedesktop.NetworkManager.DHCP4Config"
DHCP6_IFACE = "org.freedesktop.NetworkManager.DHCP6Config"
AP_IFACE = "org.freedesktop.NetworkManager.AccessPoint"
WIRED_IFACE = "org.freedesktop.NetworkManager.Device.Wired"
WIRELESS_IFACE = "org.freedesktop.NetworkManager.Device.Wireless"
SETTINGS_CONNECTION_IFACE = "org.freedesktop.NetworkManager.Settings.Connection"
# Where a device's PermHwAddress lives, and the profile's section with its cloned MAC, by the
# connection's type.
HARDWARE_IFACES: Mapping[str, str] = {
    "802-3-ethernet": WIRED_IFACE,
    "802-11-wireless": WIRELESS_IFACE,
}

NO_PATH = "/"

# NMConnectivityState (nm-dbus-interface.h).
CONNECTIVITY: Mapping[int, Connectivity] = {
    0: Connectivity.UNKNOWN,
    1: Connectivity.OFFLINE,  # NONE: no route to the internet at all
    2: Connectivity.CAPTIVE,  # PORTAL: the check URL answered something else
    3: Connectivity.LIMITED,  # LIMITED: connected, but the check got no answer
    4: Connectivity.ONLINE,  # FULL
}

# NMSettingConnection "type" → portal's kind names.
KINDS: Mapping[str, str] = {
    "802-11-wireless": "wifi",
    "802-3-ethernet": "ethernet",
    "gsm": "mobile",
    "cdma": "mobile",
    "bluetooth": "bluetooth",
    "vpn": "vpn",
    "wireguard": "wireguard",
    "pppoe": "pppoe",
}

# Signals we listen to. PropertiesChanged is matched for every NM object (sender-wide) rather
# than per path: the paths of the primary connection's config objects change as NM works, and a
# per-path rule added after a read would miss changes made in between. Irrelevant objects are
# filtered in `_on_message`. dbus-daemon matches a well-known `sender` against the name's owner
# at delivery time, so the rule keeps working across NM restarts.
MATCH_RULES = (
    f"type='signal',sender='{NM_NAME}',interface='{PROPERTIES}',member='PropertiesChanged'",
    name_owner_rule(NM_NAME),
)

CALL_TIMEOUT_S = 10.0  # bound on one read of NM's whole state
CHECK_TIMEOUT_S = 30.0  # NM's own connectivity check may take its HTTP timeout (20 s)
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # after a failed read; then wait for NM's next signal
RECONNECT_MAX_S = 30.0

Emit = Callable[[object], None]


# --- pure translation: NM property dictionaries → portal model -------------------------------


def nm_checks(manager: Mapping[str, Any]) -> bool:
    """Whether NetworkManager runs a connectivity check of its own (so that its Connectivity
    means something). Without one (no `[connectivity] uri`, Debian's default; `enabled=false`;
    `interval=0`) it reports FULL on any connected network. `ConnectivityCheckAvailable` is
    false without a URI, `ConnectivityCheckEnabled` false when turned off (both since NM
    1.10; older NMs have only the URI)."""
    uri = manager.get("ConnectivityCheckUri")
    if uri is not None and not uri:
        return False  # no URI configured (an NM too old to have the property is trusted)
    return manager.get("ConnectivityCheckAvailable") is not False and (
        manager.get("ConnectivityCheckEnabled") is not False
    )


def connectivity_from_nm(value: object) -> Connectivity:
    """NM's Connectivity number → Connectivity; anything unexpected is UNKNOWN."""
    return (
        CONNECTIVITY.get(value, Connectivity.UNKNOWN)
        if isinstance(value, int)
        else (Connectivity.UNKNOWN)
    )


def _ip(text: object) -> str | None:
    if not isinstance(text, str):
        return None
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


def _address_data(config: Mapping[str, Any]) -> list[str]:
    found = []
    for entry in config.get("AddressData") or []:
        if isinstance(entry, dict) and (addr := _ip(entry.get("address"))) is not None:
            found.append(addr)
    return found


def nameservers_from_ip_config(ip4: Mapping[str, Any], ip6: Mapping[str, Any]) -> list[str]:
    """The nameservers of an IP4Config and IP6Config, IPv4 first."""
    servers: list[str] = []
    data = ip4.get("NameserverData")
    if isinstance(data, list):
        servers += [a for e in data if isinstance(e, dict) and (a := _ip(e.get("address")))]
    else:
        # NM before 1.14 has only `Nameservers` (au): IPv4 addresses as uint32 in network order.
        for value in ip4.get("Nameservers") or []:
            if isinstance(value, int) and 0 <= value < 2**32:
                servers.append(socket.inet_ntoa(struct.pack("=I", value)))
    for raw in ip6.get("Nameservers") or []:  # aay: 16 raw bytes each
        if isinstance(raw, bytes | bytearray) and len(raw) == 16:
            servers.append(str(ipaddress.IPv6Address(bytes(raw))))
    return servers


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _ssid(access_point: Mapping[str, Any]) -> str:
    raw = access_point.get("Ssid")
    if isinstance(raw, bytes | bytearray | list):
        try:
            return bytes(raw).decode("utf-8", "replace").strip("\x00")
        except (TypeError, ValueError):
            return ""
    return ""


def network_from_nm(
    *,
    manager: Mapping[str, Any],
    active: Mapping[str, Any],
    device: Mapping[str, Any],
    ip4: Mapping[str, Any],
    ip6: Mapping[str, Any],
    dhcp4: Mapping[str, Any],
    access_point: Mapping[str, Any],
    dhcp6: Mapping[str, Any] | None = None,
    hardware: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Network | None:
    """The primary network from the properties of NM's objects; None without an active one."""
    uuid = active.get("Uuid")
    if not isinstance(uuid, str) or not uuid:
        return None
    conn_type = str(active.get("Type") or "")
    name = _ssid(access_point) or str(active.get("Id") or "")
    interface = str(device.get("IpInterface") or device.get("Interface") or "")
    options = dhcp4.get("Options")
    options = options if isinstance(options, dict) else {}
    # The DHCP-given servers, even when the profile ignores them (ignore-auto-dns): those are
    # the venue's DNS, which can resolve its sign-in host when the user's pinned resolver can't.
    dhcp_dns = [a for w in str(options.get("domain_name_servers") or "").split() if (a := _ip(w))]
    venue = dhcp_dns or nameservers_from_ip_config(ip4, {})
    venue += venue_dns_v6(ip6=ip6, dhcp6=dhcp6 or {}, interface=interface)
    # dhclient names DHCP option 114 by its RFC 3679 name, default_url (NM's internal client
    # does not expose it at all in 1.42). Reported as given: core/detect.py judges it (https).
    # Its IPv6 twins are out of reach under NM 1.42: NM takes router advertisements itself
    # (the kernel's accept_ra is off, so no RTM_NEWNDUSEROPT either) and IP6Config has no
    # property for RA option 37; DHCP6Config's Options show only dhcp6_name_servers,
    # dhcp6_client_id and iaid, never option 103, though the venue sends it.
    api_uri = str(options.get("default_url") or "").strip()
    addresses = _address_data(ip4) + [
        a for a in _address_data(ip6) if not ipaddress.ip_address(a).is_link_local
    ]
    return Network(
        id=uuid,
        name=name,
        interface=interface,
        kind=KINDS.get(conn_type, conn_type),
        addresses=_unique(addresses),
        venue_dns=_unique(venue),
        api_uri=api_uri,
        check_uri=str(manager.get("ConnectivityCheckUri") or ""),
        mac_address=str(device.get("HwAddress") or (hardware or {}).get("HwAddress") or ""),
        permanent_mac=str((hardware or {}).get("PermHwAddress") or ""),
        mac_setting=cloned_mac_setting(settings or {}, conn_type),
        profile=str(active.get("Id") or ""),
    )


def cloned_mac_setting(settings: Mapping[str, Any], conn_type: str) -> str:
    """The profile's cloned-mac-address from Settings.Connection.GetSettings: "random",
    "stable", "preserve", "permanent", "stable-ssid", an address, or "" when unset. NM 1.4 and
    later put it in `assigned-mac-address` (text); `cloned-mac-address` (bytes) carries only
    a fixed address."""
    section = settings.get(conn_type)
    if not isinstance(section, dict):
        return ""
    text = section.get("assigned-mac-address")
    if isinstance(text, str):
        return text.strip()
    raw = section.get("cloned-mac-address")
    if isinstance(raw, bytes | bytearray | list) and len(raw) == 6:
        try:
            return ":".join(f"{b:02X}" for b in bytes(raw))
        except (TypeError, ValueError):
            return ""
    return ""


def venue_dns_v6(*, ip6: Mapping[str, Any], dhcp6: Mapping[str, Any], interface: str) -> list[str]:
    """The venue's IPv6 DNS servers: DHCPv6's (option 23, which NM's DHCP6Config shows as
    `dhcp6_name_servers` even when the profile ignores them), else IP6Config's, where NM
    merges the router advertisements' RDNSS (RFC 8106) with DHCPv6's. A link-local server is
    given with its interface (fe80::1%wlan0), the only way to reach it."""
    options = dhcp6.get("Options")
    options = options if isinstance(options, dict) else {}
    found = [a for w in str(options.get("dhcp6_name_servers") or "").split() if (a := _ip(w))]
    if not found:
        found = nameservers_from_ip_config({}, ip6)
    return [
        f"{a}%{interface}" if interface and ipaddress.ip_address(a).is_link_local else a
        for a in found
    ]


def upstreams_from_nm(
    configuration: object,
    *,
    ip4: Mapping[str, Any],
    ip6: Mapping[str, Any],
    interface: str = "",
) -> tuple[Upstream, ...]:
    """NM's DnsManager.Configuration in NM's order (it already ranks devices and VPNs), else the
    primary connection's own nameservers."""
    found: list[Upstream] = []

    def add(text: str, iface: str) -> None:
        server = parse_server(text)
        if server is None:
            return
        host = server.host
        # An IPv6 link-local server is only reachable through its interface.
        if "%" not in host and iface and ipaddress.ip_address(host).is_link_local:
            server = Upstream(f"{host}%{iface}", server.port)
        if server not in found:
            found.append(server)

    for entry in configuration if isinstance(configuration, list) else []:
        if not isinstance(entry, dict):
            continue
        iface = str(entry.get("interface") or "")
        for text in entry.get("nameservers") or []:
            if isinstance(text, str):
                add(text, iface)
    if not found:
        for text in nameservers_from_ip_config(ip4, ip6):
            add(text, interface)
    return tuple(found)


# --- D-Bus plumbing ----------------------------------------------------------------------------


async def _get_all(bus: MessageBus, path: str, interface: str) -> dict[str, Any]:
    reply = await call(bus, NM_NAME, path, PROPERTIES, "GetAll", "s", [interface])
    props = unwrap(reply.body[0]) if reply.body else {}
    return props if isinstance(props, dict) else {}


async def _connect(bus: MessageBus | str) -> MessageBus:
    return bus if isinstance(bus, MessageBus) else await connect(bus)


async def nm_available(bus: MessageBus | str) -> bool:
    """True when NetworkManager owns its name on `bus` (a connection, or a bus to connect to:
    'system', 'session' or an address). Never raises: a missing bus means no NM."""
    try:
        conn = await _connect(bus)
    except DaemonUnreachable as exc:
        log.debug("no D-Bus connection to look for NetworkManager: %s", exc)
        return False
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            reply = await call_bus_daemon(conn, "NameHasOwner", "s", [NM_NAME])
        return bool(reply.body and reply.body[0])
    except (CallFailed, OSError, EOFError, TimeoutError) as exc:
        log.debug("cannot ask the bus for NetworkManager: %s", exc)
        return False
    finally:
        if conn is not bus:
            await close(conn)


async def nm_appears(bus: str) -> bool:
    """Wait until NetworkManager takes its name on `bus` ('system', 'session' or an address);
    False when that cannot be watched or the bus goes away first. For a daemon that started
    before NetworkManager (boot order, or NM installed later)."""
    try:
        conn = await connect(bus)
    except DaemonUnreachable as exc:
        log.debug("cannot watch for NetworkManager: %s", exc)
        return False
    appeared: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_message(msg: Message) -> None:
        if name_owner_changed(msg, NM_NAME) and not appeared.done():
            appeared.set_result(True)

    conn.add_message_handler(on_message)
    try:
        await add_match(conn, name_owner_rule(NM_NAME))
        if await name_owner(conn, NM_NAME) is not None:
            return True  # it came between our two looks
        waits: set[asyncio.Future[Any]] = {appeared, disconnected(conn)}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        return appeared.done()
    except (CallFailed, OSError, EOFError) as exc:
        log.debug("cannot watch for NetworkManager: %s", exc)
        return False
    finally:
        conn.remove_message_handler(on_message)
        appeared.cancel()
        await close(conn)


_UNSET: Any = object()


class NetworkManagerWatcher:
    """Watches NetworkManager and emits NetworkChanged, UpstreamsChanged, ConnectivityReported.

    `bus` is a connected MessageBus (shared with the rest of the daemon), or a bus to connect to
    ('system', 'session' or an address). With the latter the watcher owns its connection and
    reconnects when the bus goes away; with a MessageBus it stops when that connection closes.
    """

    def __init__(self, bus: MessageBus | str, emit: Emit) -> None:
        self._bus_arg = bus
        self._emit = emit
        self._bus: MessageBus | None = None
        self._owner: str | None = None  # NM's unique name while it is on the bus
        self._watched: set[str] = {NM_PATH, DNS_PATH}
        self._ap_path = NO_PATH
        self._dirty = asyncio.Event()
        self._failures = 0
        self._retry: asyncio.TimerHandle | None = None
        self._last_network: Network | None = _UNSET
        self._last_upstreams: tuple[Upstream, ...] = _UNSET
        self._last_connectivity: tuple[Connectivity, bool] = _UNSET
        self._checks = True  # NM runs a connectivity check (see nm_checks)
        # (active connection, its profile, the profile's settings) as last read
        self._settings_read: tuple[str, str, dict[str, Any]] = ("", "", {})
        self._vpns: tuple[NmVpn, ...] = ()  # NM's active VPN and WireGuard connections
        self._last_vpns: tuple[NmVpn, ...] = ()

    # -- public --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch until cancelled. Never raises for NM-side or bus-side trouble."""
        delay_s = 0.5
        while True:
            try:
                bus = await _connect(self._bus_arg)
            except DaemonUnreachable as exc:
                log.warning("cannot connect to D-Bus to watch NetworkManager: %s; retrying", exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RECONNECT_MAX_S)
                continue
            try:
                await self._watch(bus)
                delay_s = 0.5
            except (CallFailed, OSError, EOFError) as exc:
                log.warning("watching NetworkManager failed: %s, ignoring", exc)
            finally:
                self._bus = None
                self._owner = None
                if self._retry is not None:
                    self._retry.cancel()
                    self._retry = None
                bus.remove_message_handler(self._on_message)
                if bus is not self._bus_arg:
                    await close(bus)
            if isinstance(self._bus_arg, MessageBus) and not self._bus_arg.connected:
                log.error("the D-Bus connection closed; no longer watching NetworkManager")
                return
            log.warning("lost the D-Bus connection while watching NetworkManager; retrying")
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RECONNECT_MAX_S)

    async def check_connectivity(self) -> Connectivity:
        """Ask NM to re-run its connectivity check now (so the desktop's indicator catches up
        after a portal clears) and return its verdict; UNKNOWN when NM cannot be asked."""
        bus = self._bus
        if bus is None or self._owner is None:
            log.info("NetworkManager is not on the bus; connectivity check skipped")
            return Connectivity.UNKNOWN
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                reply = await call(bus, NM_NAME, NM_PATH, NM_IFACE, "CheckConnectivity")
        except (CallFailed, OSError, EOFError, TimeoutError) as exc:
            # Needs NM's network-control permission; a system user may not have it.
            log.warning("NetworkManager CheckConnectivity failed: %s, ignoring", exc)
            return Connectivity.UNKNOWN
        verdict = connectivity_from_nm(reply.body[0] if reply.body else None)
        self._publish_connectivity(verdict)
        return verdict

    # -- internals -----------------------------------------------------------------------------

    async def _watch(self, bus: MessageBus) -> None:
        bus.add_message_handler(self._on_message)
        # Subscribe first, read after: a change between the two then triggers another read.
        for rule in MATCH_RULES:
            await add_match(bus, rule)
        self._owner = await name_owner(bus, NM_NAME)
        self._bus = bus
        if self._owner is None:
            log.info("NetworkManager is not on the bus; waiting for it")
            self._publish_network(None)
        else:
            self._dirty.set()
        disconnect_future = disconnected(bus)
        disconnect_future.add_done_callback(self._on_disconnect)
        try:
            while not disconnect_future.done():
                await self._dirty.wait()
                self._dirty.clear()
                if self._owner is not None and not disconnect_future.done():
                    await self._refresh(bus)
        finally:
            disconnect_future.remove_done_callback(self._on_disconnect)

    def _on_disconnect(self, _future: asyncio.Future[None]) -> None:
        self._dirty.set()

    def _wake(self) -> None:
        self._dirty.set()

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        new_owner = name_owner_changed(msg, NM_NAME)
        if new_owner is not None:
            if new_owner:
                log.info("NetworkManager is on the bus (%s); reading its state", new_owner)
                self._owner = new_owner
                self._failures = 0
                self._wake()
            else:
                # Keep the last state: NM leaves the network configured when it stops, and a
                # restart would otherwise look like two network changes to the core.
                log.info("NetworkManager left the bus; keeping the last state until it returns")
                self._owner = None
            return
        if msg.member != "PropertiesChanged" or msg.interface != PROPERTIES:
            return
        if self._owner is None or msg.sender != self._owner or msg.path not in self._watched:
            return
        if msg.path == self._ap_path:
            # Access points change Strength/LastSeen every scan; only the SSID matters here.
            changed = msg.body[1] if len(msg.body) > 1 and isinstance(msg.body[1], dict) else {}
            if "Ssid" not in changed:
                return
        self._wake()

    async def _refresh(self, bus: MessageBus) -> None:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                network, upstreams, connectivity = await self._read(bus)
        except Exception as exc:  # never let NM's trouble (or odd data) stop the daemon
            if self._owner is None:
                log.debug("reading NetworkManager failed as it left the bus: %s", exc)
                return
            if self._failures < len(RETRY_DELAYS_S):
                delay_s = RETRY_DELAYS_S[self._failures]
                self._failures += 1
                log.warning(
                    "reading NetworkManager state failed: %s, retrying in %ss", exc, delay_s
                )
                self._retry = asyncio.get_running_loop().call_later(delay_s, self._wake)
            else:
                log.warning("reading NetworkManager state failed: %s, ignoring", exc)
            return
        self._failures = 0
        self._publish_network(network)
        if upstreams != self._last_upstreams:
            self._last_upstreams = upstreams
            self._emit(UpstreamsChanged(upstreams))
        self._publish_connectivity(connectivity)
        if self._vpns != self._last_vpns:
            self._last_vpns = self._vpns
            self._emit(VpnsReported(self._vpns))

    async def _read(
        self, bus: MessageBus
    ) -> tuple[Network | None, tuple[Upstream, ...], Connectivity]:
        manager = await _get_all(bus, NM_PATH, NM_IFACE)
        primary = str(manager.get("PrimaryConnection") or NO_PATH)
        watched = {NM_PATH, DNS_PATH}
        active: dict[str, Any] = {}
        device: dict[str, Any] = {}
        ip4: dict[str, Any] = {}
        ip6: dict[str, Any] = {}
        dhcp4: dict[str, Any] = {}
        dhcp6: dict[str, Any] = {}
        hardware: dict[str, Any] = {}
        settings: dict[str, Any] = {}
        access_point: dict[str, Any] = {}
        ap_path = NO_PATH
        if primary != NO_PATH:
            watched.add(primary)
            active = await _get_all(bus, primary, ACTIVE_IFACE)
            base = str(active.get("SpecificObject") or NO_PATH)
            if active.get("Vpn") is True and base.startswith(ACTIVE_PREFIX):
                # A VPN rides on a base connection (NM makes that base's active connection the
                # VPN's SpecificObject): the venue, its DHCP and its portal are the base's.
                # Upstreams still come from DnsManager, which ranks the VPN's servers.
                primary = base
                watched.add(primary)
                active = await _get_all(bus, primary, ACTIVE_IFACE)
            devices = [str(d) for d in active.get("Devices") or []]
            if devices:
                watched.add(devices[0])
                device = await _get_all(bus, devices[0], DEVICE_IFACE)
                hardware_iface = HARDWARE_IFACES.get(str(active.get("Type") or ""))
                if hardware_iface is not None:
                    hardware = await self._optional(bus, devices[0], hardware_iface)
            settings = await self._settings(bus, primary, str(active.get("Connection") or NO_PATH))
            for key, iface, target in (
                ("Ip4Config", IP4_IFACE, ip4),
                ("Ip6Config", IP6_IFACE, ip6),
                ("Dhcp4Config", DHCP4_IFACE, dhcp4),
                ("Dhcp6Config", DHCP6_IFACE, dhcp6),
            ):
                path = str(active.get(key) or NO_PATH)
                if path != NO_PATH:
                    watched.add(path)
                    target.update(await _get_all(bus, path, iface))
            if active.get("Type") == "802-11-wireless":
                ap_path = str(active.get("SpecificObject") or NO_PATH)
                if ap_path != NO_PATH:
                    watched.add(ap_path)
                    access_point = await self._optional(bus, ap_path, AP_IFACE)
        configuration = (await self._optional(bus, DNS_PATH, DNS_IFACE)).get("Configuration")
        self._vpns = await self._read_vpns(bus, manager)
        self._watched = watched
        self._ap_path = ap_path
        network = network_from_nm(
            manager=manager,
            active=active,
            device=device,
            ip4=ip4,
            ip6=ip6,
            dhcp4=dhcp4,
            access_point=access_point,
            dhcp6=dhcp6,
            hardware=hardware,
            settings=settings,
        )
        upstreams = upstreams_from_nm(
            configuration, ip4=ip4, ip6=ip6, interface=network.interface if network else ""
        )
        self._checks = nm_checks(manager)
        return network, upstreams, connectivity_from_nm(manager.get("Connectivity"))

    async def _read_vpns(self, bus: MessageBus, manager: Mapping[str, Any]) -> tuple[NmVpn, ...]:
        """The VPN (plugin) and WireGuard connections among NM's active ones. A WireGuard
        connection's device is its own link; a VPN plugin's Devices name the base connection's
        device, and NM exposes no tunnel interface for it (core/paths.py then names the one
        VPN it sees by the kernel's routes)."""
        out: list[NmVpn] = []
        for path in manager.get("ActiveConnections") or []:
            active = await self._optional(bus, str(path), ACTIVE_IFACE)
            if active.get("Vpn") is True:
                out.append(NmVpn(name=str(active.get("Id") or ""), kind="vpn"))
            elif active.get("Type") == "wireguard":
                devices = [str(d) for d in active.get("Devices") or []]
                device = await self._optional(bus, devices[0], DEVICE_IFACE) if devices else {}
                out.append(
                    NmVpn(
                        name=str(active.get("Id") or ""),
                        kind="wireguard",
                        interface=str(device.get("IpInterface") or device.get("Interface") or ""),
                    )
                )
        return tuple(out)

    async def _optional(self, bus: MessageBus, path: str, interface: str) -> dict[str, Any]:
        """Read an object NM may lack (DnsManager before 1.12; an access point that vanished)."""
        try:
            return await _get_all(bus, path, interface)
        except CallFailed as exc:
            log.debug("NetworkManager %s %s: %s, ignoring", path, interface, exc)
            return {}

    async def _settings(self, bus: MessageBus, active: str, path: str) -> dict[str, Any]:
        """The profile's settings (no secrets), {} when NM will not say. Read once per
        activation: a change to them takes effect at the next one, which brings a new active
        connection (a new object path) and so a new read."""
        if path == NO_PATH:
            return {}
        if self._settings_read[:2] == (active, path):
            return self._settings_read[2]
        try:
            reply = await call(bus, NM_NAME, path, SETTINGS_CONNECTION_IFACE, "GetSettings")
        except CallFailed as exc:
            log.debug("NetworkManager %s GetSettings: %s, ignoring", path, exc)
            return {}
        settings = unwrap(reply.body[0]) if reply.body else {}
        settings = settings if isinstance(settings, dict) else {}
        self._settings_read = (active, path, settings)
        return settings

    def _publish_network(self, network: Network | None) -> None:
        if network != self._last_network:
            self._last_network = network
            self._emit(NetworkChanged(network))

    def _publish_connectivity(self, connectivity: Connectivity) -> None:
        said = (connectivity, self._checks)
        if said != self._last_connectivity:
            self._last_connectivity = said
            self._emit(ConnectivityReported(connectivity, checked=self._checks))
