"""Tests for portal.edges.nm: pure translation, python-dbusmock's NetworkManager on a private bus
(NM restart, NM absent at start, dedupe, Wi-Fi shapes), and the real NetworkManager in the lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus

from portal.core.events import (
    ConnectivityReported,
    NetworkChanged,
    UpstreamsChanged,
    VpnsReported,
)
from portal.core.model import Connectivity, Network, Upstream
from portal.core.paths import NmVpn
from portal.edges import nm
from portal.edges.bus import close, unwrap
from portal.edges.nm import (
    NetworkManagerWatcher,
    connectivity_from_nm,
    network_from_nm,
    nm_appears,
    nm_available,
    nm_checks,
    upstreams_from_nm,
)
from tests.lab.lab import LAPTOP_IF, NM_CHECK_URI, PROFILE_ID, PROFILE_UUID, Lab
from tests.lab.marks import LabFactory, requires_dhclient, requires_lab
from tests.support.dbus import connected, private_bus

# --- pure translation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, Connectivity.UNKNOWN),
        (1, Connectivity.OFFLINE),
        (2, Connectivity.CAPTIVE),
        (3, Connectivity.LIMITED),
        (4, Connectivity.ONLINE),
        (5, Connectivity.UNKNOWN),
        ("4", Connectivity.UNKNOWN),
        (None, Connectivity.UNKNOWN),
    ],
)
def test_connectivity_from_nm(value: object, expected: Connectivity) -> None:
    assert connectivity_from_nm(value) == expected


def test_unwrap_strips_nested_variants() -> None:
    value = [{"address": Variant("s", "10.77.0.1"), "prefix": Variant("u", 24)}]
    assert unwrap(Variant("aa{sv}", value)) == [{"address": "10.77.0.1", "prefix": 24}]


ACTIVE = {
    "Uuid": "6d0a6f7e-4b1c-4c55-9a61-0c0ffee00001",
    "Id": "hotel-wifi",
    "Type": "802-3-ethernet",
}
MANAGER = {"ConnectivityCheckUri": "http://nmcheck.internet.test/check_network_status.txt"}


def test_network_from_nm_blocked_profile_uses_dhcp_dns_not_pinned() -> None:
    # The lab's blocked mode: the profile pins 192.0.2.53 (ignore-auto-dns), DHCP gave 10.77.0.1.
    network = network_from_nm(
        manager=MANAGER,
        active=ACTIVE,
        device={"Interface": "lap0", "IpInterface": "lap0"},
        ip4={
            "AddressData": [{"address": "10.77.0.100", "prefix": 24}],
            "NameserverData": [{"address": "192.0.2.53"}],
        },
        ip6={"AddressData": [{"address": "fe80::1", "prefix": 64}, {"address": "2001:db8::5"}]},
        dhcp4={
            "Options": {
                "domain_name_servers": "10.77.0.1 10.77.0.2",
                "default_url": "https://login.hotel.test/captive-portal/api",
            }
        },
        access_point={},
    )
    assert network == Network(
        id=ACTIVE["Uuid"],
        name="hotel-wifi",
        interface="lap0",
        kind="ethernet",
        addresses=("10.77.0.100", "2001:db8::5"),
        venue_dns=("10.77.0.1", "10.77.0.2"),
        api_uri="https://login.hotel.test/captive-portal/api",
        check_uri=MANAGER["ConnectivityCheckUri"],
        profile="hotel-wifi",
    )


def test_network_from_nm_falls_back_to_ip4_nameservers() -> None:
    network = network_from_nm(
        manager={},
        active={**ACTIVE, "Type": "802-11-wireless"},
        device={"Interface": "wlan0"},
        ip4={"NameserverData": [{"address": "10.77.0.1"}, {"address": "junk"}]},
        ip6={},
        dhcp4={"Options": {"default_url": "http://login.hotel.test/api"}},
        access_point={"Ssid": b"Hotel Guest"},
    )
    assert network is not None
    assert (network.name, network.kind, network.interface) == ("Hotel Guest", "wifi", "wlan0")
    assert network.venue_dns == ("10.77.0.1",)
    assert network.api_uri == "http://login.hotel.test/api"  # as given; the core judges it
    assert network.check_uri == ""


def test_network_from_nm_legacy_nameservers_property() -> None:
    # NM before 1.14: Nameservers (au), IPv4 in network byte order.
    raw = int.from_bytes(bytes([10, 77, 0, 1]), sys.byteorder)
    network = network_from_nm(
        manager={},
        active=ACTIVE,
        device={},
        ip4={"Nameservers": [raw]},
        ip6={},
        dhcp4={},
        access_point={},
    )
    assert network is not None and network.venue_dns == ("10.77.0.1",)


def test_network_from_nm_takes_the_venue_dns_from_ipv6_too() -> None:
    """What NM 1.42 showed in the lab's IPv6-only venue: IP6Config.Nameservers (RDNSS and
    DHCPv6 merged) and DHCP6Config's dhcp6_name_servers; IPv4 servers stay first."""
    v6 = bytes.fromhex("fd770000000000000000000000000001")
    lan = bytes.fromhex("fe800000000000000000000000000001")
    only6 = network_from_nm(
        manager={},
        active=ACTIVE,
        device={"Interface": "lap0"},
        ip4={},
        ip6={"AddressData": [{"address": "fd77::5"}], "Nameservers": [v6, b"short"]},
        dhcp4={},
        access_point={},
    )
    assert only6 is not None and only6.venue_dns == ("fd77::1",)
    # DHCPv6's own list wins over IP6Config's (which a profile's ignore-auto-dns empties)
    dual = network_from_nm(
        manager={},
        active=ACTIVE,
        device={"Interface": "lap0"},
        ip4={"NameserverData": [{"address": "10.77.0.1"}]},
        ip6={"Nameservers": [lan]},
        dhcp4={},
        dhcp6={"Options": {"dhcp6_name_servers": "fd77::53 junk", "iaid": "17:32:56:d8"}},
        access_point={},
    )
    assert dual is not None and dual.venue_dns == ("10.77.0.1", "fd77::53")
    # a link-local server carries its interface, the only way to reach it
    lan_only = network_from_nm(
        manager={},
        active=ACTIVE,
        device={"Interface": "lap0"},
        ip4={},
        ip6={"Nameservers": [lan]},
        dhcp4={},
        access_point={},
    )
    assert lan_only is not None and lan_only.venue_dns == ("fe80::1%lap0",)


def test_network_from_nm_reads_the_mac_and_the_profiles_cloned_mac() -> None:
    """As NM 1.42 showed them in the lab: Device.HwAddress, Device.Wired.PermHwAddress ("" on a
    veth) and the profile's GetSettings, where `assigned-mac-address` holds "random"."""
    network = network_from_nm(
        manager={},
        active=ACTIVE,
        device={"Interface": "lap0", "HwAddress": "EA:0F:5C:BE:73:3F"},
        ip4={},
        ip6={},
        dhcp4={},
        access_point={},
        hardware={"HwAddress": "EA:0F:5C:BE:73:3F", "PermHwAddress": ""},
        settings={
            "connection": {"id": "hotel-wifi"},
            "802-3-ethernet": {"assigned-mac-address": "random"},
        },
    )
    assert network is not None
    assert (network.mac_address, network.permanent_mac) == ("EA:0F:5C:BE:73:3F", "")
    assert (network.mac_setting, network.profile) == ("random", "hotel-wifi")


@pytest.mark.parametrize(
    ("section", "want"),
    [
        ({"assigned-mac-address": "stable"}, "stable"),
        ({"cloned-mac-address": b"\x02\x11\x22\x33\x44\x55"}, "02:11:22:33:44:55"),
        ({"cloned-mac-address": b"\x02"}, ""),
        ({"assigned-mac-address": 5}, ""),
        ({}, ""),
        ("junk", ""),
    ],
)
def test_cloned_mac_setting(section: object, want: str) -> None:
    assert nm.cloned_mac_setting({"802-11-wireless": section}, "802-11-wireless") == want
    assert nm.cloned_mac_setting({"802-11-wireless": section}, "802-3-ethernet") == ""


def test_network_from_nm_without_active_connection_is_none() -> None:
    kwargs: dict[str, Any] = dict(device={}, ip4={}, ip6={}, dhcp4={}, access_point={})
    assert network_from_nm(manager=MANAGER, active={}, **kwargs) is None
    assert network_from_nm(manager=MANAGER, active={"Uuid": ""}, **kwargs) is None


def test_upstreams_from_dns_manager_in_nm_order_across_devices_and_vpn() -> None:
    configuration = [
        {"nameservers": ["10.8.0.1"], "interface": "tun0", "priority": 50, "vpn": True},
        {"nameservers": ["10.77.0.1", "fe80::1", "10.8.0.1"], "interface": "lap0"},
        {"nameservers": ["not-an-ip"]},
        "junk",
    ]
    got = upstreams_from_nm(configuration, ip4={"NameserverData": [{"address": "9.9.9.9"}]}, ip6={})
    assert got == (Upstream("10.8.0.1"), Upstream("10.77.0.1"), Upstream("fe80::1%lap0"))


def test_upstreams_fall_back_to_primary_connection_nameservers() -> None:
    ip6_ns = bytes.fromhex("20010db8000000000000000000000053")
    got = upstreams_from_nm(
        [],
        ip4={"NameserverData": [{"address": "10.77.0.1"}]},
        ip6={"Nameservers": [ip6_ns]},
        interface="lap0",
    )
    assert got == (Upstream("10.77.0.1"), Upstream("2001:db8::53"))
    assert upstreams_from_nm(None, ip4={}, ip6={}) == ()


# --- a private bus and python-dbusmock's NetworkManager -----------------------------------------

try:
    import dbusmock  # noqa: F401

    HAVE_DBUSMOCK = True
except ImportError:
    HAVE_DBUSMOCK = False

needs_dbusmock = pytest.mark.skipif(
    not HAVE_DBUSMOCK or shutil.which("dbus-daemon") is None,
    reason="needs python-dbusmock (test extra) and dbus-daemon",
)

MOCK_IFACE = "org.freedesktop.DBus.Mock"
NM_PATH = "/org/freedesktop/NetworkManager"
NM_IFACE = "org.freedesktop.NetworkManager"
WAIT_S = 20.0  # bound for anything a test waits on; never asserted


class MockNM:
    """python-dbusmock's networkmanager template in its own process, driven over D-Bus."""

    def __init__(self, address: str, control: MessageBus) -> None:
        self.address = address
        self.control = control
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Popen rather than asyncio's subprocess: the latter's transport warns when collected
        # after the loop closed, at a random later point of the session.
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.address)
        return subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--system", "--template", "networkmanager"],
            env=env,
            stdout=subprocess.DEVNULL,
        )

    async def start(self) -> None:
        self.proc = self._spawn()
        async with asyncio.timeout(WAIT_S):
            while not await nm_available(self.control):
                assert self.proc.poll() is None, "dbusmock exited"
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(WAIT_S)
            self.proc = None

    async def call(self, path: str, member: str, signature: str, *body: Any) -> Any:
        reply = await self.control.call(
            Message(
                destination=NM_IFACE,
                path=path,
                interface=MOCK_IFACE,
                member=member,
                signature=signature,
                body=list(body),
            )
        )
        assert reply is not None
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        return reply.body[0] if reply.body else None

    async def add_object(self, path: str, iface: str, props: dict[str, Variant]) -> None:
        await self.call(NM_PATH, "AddObject", "ssa{sv}a(ssss)", path, iface, props, [])

    async def add_property(self, path: str, iface: str, name: str, value: Variant) -> None:
        await self.call(path, "AddProperty", "ssv", iface, name, value)

    async def set_property(self, path: str, iface: str, name: str, value: Variant) -> None:
        # The template's SetProperty emits Properties.PropertiesChanged (and NM's legacy one).
        await self.call(NM_PATH, "SetProperty", "sssv", path, iface, name, value)

    async def build_hotel(
        self, *, ssid: str = "Hotel Guest", tag: str = "1", dns_manager: bool = True
    ) -> str:
        """A Wi-Fi connection with IP and DHCP config objects; returns the connection UUID."""
        conn_uuid = str(uuid.uuid4())
        dev = f"/org/freedesktop/NetworkManager/Devices/{tag}"
        ap = f"/org/freedesktop/NetworkManager/AccessPoint/{tag}"
        ac = f"/org/freedesktop/NetworkManager/ActiveConnection/{tag}"
        ip4 = f"/org/freedesktop/NetworkManager/IP4Config/{tag}"
        dhcp4 = f"/org/freedesktop/NetworkManager/DHCP4Config/{tag}"
        await self.add_object(
            ap, nm.AP_IFACE, {"Ssid": Variant("ay", ssid.encode()), "Strength": Variant("y", 70)}
        )
        await self.add_object(
            dev,
            nm.DEVICE_IFACE,
            {"Interface": Variant("s", "wlan0"), "IpInterface": Variant("s", "wlan0")},
        )
        await self.add_object(
            ip4,
            nm.IP4_IFACE,
            {
                "AddressData": Variant(
                    "aa{sv}", [{"address": Variant("s", "10.77.0.100"), "prefix": Variant("u", 24)}]
                ),
                "NameserverData": Variant("aa{sv}", [{"address": Variant("s", "192.0.2.53")}]),
            },
        )
        await self.add_object(
            dhcp4,
            nm.DHCP4_IFACE,
            {
                "Options": Variant(
                    "a{sv}",
                    {
                        "domain_name_servers": Variant("s", "10.77.0.1"),
                        "default_url": Variant("s", "https://login.hotel.test/captive-portal/api"),
                    },
                )
            },
        )
        await self.add_object(
            ac,
            nm.ACTIVE_IFACE,
            {
                "Uuid": Variant("s", conn_uuid),
                "Id": Variant("s", "hotel-profile"),
                "Type": Variant("s", "802-11-wireless"),
                "Devices": Variant("ao", [dev]),
                "SpecificObject": Variant("o", ap),
                "Ip4Config": Variant("o", ip4),
                "Ip6Config": Variant("o", "/"),
                "Dhcp4Config": Variant("o", dhcp4),
            },
        )
        if dns_manager:
            await self.add_object(
                nm.DNS_PATH,
                nm.DNS_IFACE,
                {
                    "Configuration": Variant(
                        "aa{sv}",
                        [
                            {
                                "nameservers": Variant("as", ["192.0.2.53", "10.77.0.1"]),
                                "interface": Variant("s", "wlan0"),
                                "priority": Variant("i", 100),
                                "vpn": Variant("b", False),
                            }
                        ],
                    )
                },
            )
        await self.add_property(
            NM_PATH, NM_IFACE, "ConnectivityCheckUri", Variant("s", "http://check.test/")
        )
        await self.add_property(NM_PATH, NM_IFACE, "PrimaryConnection", Variant("o", ac))
        return conn_uuid


class Events:
    """Collects what the watcher emits; `next()` waits (bounded) for the next one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()

    def emit(self, event: object) -> None:
        self.queue.put_nowait(event)

    async def next(self) -> object:
        async with asyncio.timeout(WAIT_S):
            return await self.queue.get()

    async def until(self, kind: type) -> Any:
        while True:
            event = await self.next()
            if isinstance(event, kind):
                return event


@pytest.fixture
async def bus_env() -> AsyncIterator[tuple[str, MessageBus]]:
    with private_bus(kind="session") as bus:
        async with connected(bus.address) as control:
            yield bus.address, control


@contextlib.asynccontextmanager
async def watching(bus: MessageBus | str, events: Events) -> AsyncIterator[NetworkManagerWatcher]:
    watcher = NetworkManagerWatcher(bus, events.emit)
    task = asyncio.create_task(watcher.run())
    try:
        yield watcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def hotel_network(conn_uuid: str, ssid: str = "Hotel Guest") -> Network:
    return Network(
        id=conn_uuid,
        name=ssid,
        interface="wlan0",
        kind="wifi",
        addresses=("10.77.0.100",),
        venue_dns=("10.77.0.1",),
        api_uri="https://login.hotel.test/captive-portal/api",
        check_uri="http://check.test/",
        profile="hotel-profile",
    )


@needs_dbusmock
async def test_reads_current_state_then_follows_changes_once_each(
    bus_env: tuple[str, MessageBus],
) -> None:
    address, control = bus_env
    mock = MockNM(address, control)
    await mock.start()
    try:
        conn_uuid = await mock.build_hotel()
        await mock.set_property(NM_PATH, NM_IFACE, "Connectivity", Variant("u", 2))
        events = Events()
        async with watching(address, events) as watcher:
            assert await events.next() == NetworkChanged(hotel_network(conn_uuid))
            assert await events.next() == UpstreamsChanged(
                (Upstream("192.0.2.53"), Upstream("10.77.0.1"))
            )
            assert await events.next() == ConnectivityReported(Connectivity.CAPTIVE)

            # Noise first (AP strength, the same Connectivity again), then a real change: the real
            # change must be the very next event, so the noise produced none.
            ap = "/org/freedesktop/NetworkManager/AccessPoint/1"
            await mock.set_property(ap, nm.AP_IFACE, "Strength", Variant("y", 40))
            await mock.set_property(NM_PATH, NM_IFACE, "Connectivity", Variant("u", 2))
            await mock.set_property(NM_PATH, NM_IFACE, "Connectivity", Variant("u", 4))
            assert await events.next() == ConnectivityReported(Connectivity.ONLINE)

            # A DHCP renewal with a new option 114 changes the network in place (same id).
            dhcp4 = "/org/freedesktop/NetworkManager/DHCP4Config/1"
            options = {
                "domain_name_servers": Variant("s", "10.77.0.9"),
                "default_url": Variant("s", "https://other.hotel.test/api"),
            }
            await mock.set_property(dhcp4, nm.DHCP4_IFACE, "Options", Variant("a{sv}", options))
            changed = await events.next()
            assert isinstance(changed, NetworkChanged) and changed.network is not None
            assert changed.network.id == conn_uuid
            assert changed.network.venue_dns == ("10.77.0.9",)
            assert changed.network.api_uri == "https://other.hotel.test/api"

            # DnsManager reorders: only upstreams change.
            config = [
                {"nameservers": Variant("as", ["10.77.0.1"]), "interface": Variant("s", "wlan0")}
            ]
            await mock.set_property(
                nm.DNS_PATH, nm.DNS_IFACE, "Configuration", Variant("aa{sv}", config)
            )
            assert await events.next() == UpstreamsChanged((Upstream("10.77.0.1"),))

            # The template's CheckConnectivity returns the stored value.
            await mock.set_property(NM_PATH, NM_IFACE, "Connectivity", Variant("u", 3))
            assert await events.next() == ConnectivityReported(Connectivity.LIMITED)
            assert await watcher.check_connectivity() == Connectivity.LIMITED
            assert events.queue.empty()

            # A VPN comes up and becomes the primary connection: the venue is still the hotel
            # (no NetworkChanged); the next event is the connectivity change that follows.
            vpn = "/org/freedesktop/NetworkManager/ActiveConnection/vpn"
            vpn_props = {
                "Uuid": Variant("s", str(uuid.uuid4())),
                "Id": Variant("s", "work-vpn"),
                "Type": Variant("s", "vpn"),
                "Vpn": Variant("b", True),
                "Devices": Variant("ao", ["/org/freedesktop/NetworkManager/Devices/1"]),
                "SpecificObject": Variant(
                    "o", "/org/freedesktop/NetworkManager/ActiveConnection/1"
                ),
                "Ip4Config": Variant("o", "/"),
                "Ip6Config": Variant("o", "/"),
                "Dhcp4Config": Variant("o", "/"),
            }
            await mock.add_object(vpn, nm.ACTIVE_IFACE, vpn_props)
            await mock.set_property(NM_PATH, NM_IFACE, "PrimaryConnection", Variant("o", vpn))
            await mock.set_property(NM_PATH, NM_IFACE, "Connectivity", Variant("u", 4))
            assert await events.next() == ConnectivityReported(Connectivity.ONLINE)
            # ...and NM lists it among its active connections: the VPN is reported by name
            # (a VPN plugin's tunnel interface is not on NM's bus)
            await mock.set_property(NM_PATH, NM_IFACE, "ActiveConnections", Variant("ao", [vpn]))
            assert await events.next() == VpnsReported((NmVpn("work-vpn", "vpn"),))

            # Disconnect: no primary connection.
            await mock.set_property(NM_PATH, NM_IFACE, "PrimaryConnection", Variant("o", "/"))
            assert await events.next() == NetworkChanged(None)
    finally:
        await mock.stop()


@needs_dbusmock
async def test_nm_absent_at_start_then_appears(bus_env: tuple[str, MessageBus]) -> None:
    address, control = bus_env
    events = Events()
    assert not await nm_available(control)
    assert not await nm_available(address)
    async with watching(control, events) as watcher:
        assert await events.next() == NetworkChanged(None)
        assert await watcher.check_connectivity() == Connectivity.UNKNOWN
        mock = MockNM(address, control)
        await mock.start()
        try:
            assert await nm_available(address)
            # The template starts with no primary connection and FULL connectivity; the network
            # stays None (already said), so the first new event is the connectivity.
            assert await events.until(ConnectivityReported) == ConnectivityReported(
                Connectivity.ONLINE
            )
            conn_uuid = await mock.build_hotel()
            # PrimaryConnection is added without a signal (AddProperty); a change tells NM moved.
            await mock.set_property(NM_PATH, NM_IFACE, "Connectivity", Variant("u", 2))
            assert await events.until(NetworkChanged) == NetworkChanged(hotel_network(conn_uuid))
        finally:
            await mock.stop()


@needs_dbusmock
async def test_nm_appears_when_it_takes_its_name(bus_env: tuple[str, MessageBus]) -> None:
    address, control = bus_env
    waiting = asyncio.create_task(nm_appears(address))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    mock = MockNM(address, control)
    await mock.start()
    try:
        async with asyncio.timeout(WAIT_S):
            assert await waiting
        assert await nm_appears(address)  # already there: at once
    finally:
        await mock.stop()


async def test_nm_appears_is_false_without_a_bus(tmp_path: Path) -> None:
    assert not await nm_appears(f"unix:path={tmp_path}/no-such-socket")


@needs_dbusmock
async def test_survives_nm_restart_and_reads_the_new_state(bus_env: tuple[str, MessageBus]) -> None:
    address, control = bus_env
    mock = MockNM(address, control)
    await mock.start()
    events = Events()
    try:
        first = await mock.build_hotel(ssid="Hotel Guest")
        async with watching(address, events) as watcher:
            assert await events.until(NetworkChanged) == NetworkChanged(hotel_network(first))
            await events.until(ConnectivityReported)
            await mock.stop()
            await mock.start()
            second = await mock.build_hotel(ssid="Airport Free", tag="7", dns_manager=False)
            await mock.set_property(NM_PATH, NM_IFACE, "Connectivity", Variant("u", 2))
            # The new NM may first be read before the test gave it a connection (None); what
            # matters is that the watcher is still alive and reaches the new state.
            while (got := await events.until(NetworkChanged)).network is None:
                pass
            assert got == NetworkChanged(hotel_network(second, ssid="Airport Free"))
            # Without DnsManager the upstreams fall back to the connection's nameservers.
            assert await events.next() == UpstreamsChanged((Upstream("192.0.2.53"),))
            assert await events.next() == ConnectivityReported(Connectivity.CAPTIVE)
            assert await watcher.check_connectivity() == Connectivity.CAPTIVE
    finally:
        await mock.stop()


@needs_dbusmock
async def test_run_returns_when_a_shared_bus_closes(bus_env: tuple[str, MessageBus]) -> None:
    address, _control = bus_env
    shared = await MessageBus(bus_address=address).connect()
    events = Events()
    watcher = NetworkManagerWatcher(shared, events.emit)
    task = asyncio.create_task(watcher.run())
    assert await events.next() == NetworkChanged(None)
    await close(shared)
    async with asyncio.timeout(WAIT_S):
        await task  # returns, does not raise


async def test_nm_available_without_a_bus_is_false(tmp_path: Path) -> None:
    # dbus-next 0.2.3 opens the socket in MessageBus() and loses it when connect() raises
    # there; portal.edges.bus closes it, so collecting leaves no ResourceWarning (an error here).
    assert not await nm_available(f"unix:path={tmp_path}/no-such-socket")
    gc.collect()


# --- the real NetworkManager in the lab (root) --------------------------------------------------

pytest_plugins = ["tests.lab.fixtures"]  # the lab_factory fixture


async def first_network(events: Events) -> Network:
    while (event := await events.until(NetworkChanged)).network is None:
        pass
    network: Network = event.network
    return network


async def until_connectivity(events: Events, want: Connectivity) -> None:
    while (await events.until(ConnectivityReported)).connectivity != want:
        pass


def expected_lab_network(lab: Lab, *, api_uri: str = "") -> Network:
    ip = lab.laptop_ip()
    assert ip is not None
    return Network(
        id=PROFILE_UUID,
        name=PROFILE_ID,
        interface=LAPTOP_IF,
        kind="ethernet",
        addresses=(ip,),
        venue_dns=(lab.hotel_ip,),
        api_uri=api_uri,
        check_uri=NM_CHECK_URI,
        # a veth: its MAC (chosen by the kernel), no permanent one; the profile sets none
        mac_address=lab_mac(lab),
        profile=PROFILE_ID,
    )


def lab_mac(lab: Lab) -> str:
    out = subprocess.run(
        ["ip", "-n", lab.laptop_ns, "-j", "link", "show", LAPTOP_IF],
        capture_output=True,
        text=True,
        check=True,
    )
    return str(json.loads(out.stdout)[0]["address"]).upper()


@pytest.mark.root
@pytest.mark.lab
@requires_lab
async def test_lab_hijack_network_captive_then_online(lab_factory: LabFactory) -> None:
    lab = lab_factory(dns_mode="hijack", nm_check=True)
    events = Events()
    async with watching(lab.bus_address, events) as watcher:
        assert await first_network(events) == expected_lab_network(lab)
        assert await events.until(UpstreamsChanged) == UpstreamsChanged((Upstream(lab.hotel_ip),))
        await until_connectivity(events, Connectivity.CAPTIVE)
        lab.login()
        # After a login the daemon asks NM to look again, so the desktop's indicator catches up.
        assert await watcher.check_connectivity() == Connectivity.ONLINE
        await until_connectivity(events, Connectivity.ONLINE)


@pytest.mark.root
@pytest.mark.lab
@requires_dhclient
async def test_lab_dhclient_reports_option_114_as_api_uri(lab_factory: LabFactory) -> None:
    lab = lab_factory(dhcp_client="dhclient", https=True, nm_check=True)
    events = Events()
    async with watching(lab.bus_address, events):
        network = await first_network(events)
        assert network.api_uri == lab.api_uri
        assert network.api_uri.startswith("https://")
        assert network == expected_lab_network(lab, api_uri=lab.api_uri)


@pytest.mark.root
@pytest.mark.lab
@requires_lab
async def test_lab_blocked_venue_dns_is_the_dhcp_one_not_the_pinned(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(dns_mode="blocked", nm_check=True)
    events = Events()
    async with watching(lab.bus_address, events):
        network = await first_network(events)
        # The profile pins 192.0.2.53 (ignore-auto-dns): that is where the stub forwards, but
        # the venue's DNS is still the one DHCP offered.
        assert network.venue_dns == (lab.hotel_ip,)
        assert await events.until(UpstreamsChanged) == UpstreamsChanged((Upstream(lab.public_dns),))


@pytest.mark.root
@pytest.mark.lab
@requires_lab
async def test_lab_nm_restart_mid_way_recovers(lab_factory: LabFactory) -> None:
    lab = lab_factory(dns_mode="hijack", nm_check=True)
    events = Events()
    async with watching(lab.bus_address, events) as watcher:
        before = await first_network(events)
        await until_connectivity(events, Connectivity.CAPTIVE)
        # Blocking lab calls on purpose: signals queue on the watcher's socket meanwhile.
        lab.restart_nm()
        lab.wait_connectivity("portal")
        lab.login()
        # NM's own check, triggered from outside: the change must reach the watcher through
        # the new NM's signals (the subscription survived the restart).
        lab.nmcli("networking", "connectivity", "check")
        await until_connectivity(events, Connectivity.ONLINE)
        assert await watcher.check_connectivity() == Connectivity.ONLINE
        # Whatever NM passed through while restarting, the network is the same one again.
        latest = [e for e in drain(events) if isinstance(e, NetworkChanged)]
        if latest:
            assert latest[-1].network is not None and latest[-1].network.id == before.id


@pytest.mark.root
@pytest.mark.lab
@requires_lab
async def test_lab_without_nms_own_check_its_full_is_reported_unchecked(
    lab_factory: LabFactory,
) -> None:
    """NetworkManager as Debian ships it (no check URI) says FULL behind a hijacking portal:
    the watcher passes that on as a word NM never checked, so the core ignores it."""
    lab = lab_factory(dns_mode="hijack")
    events = Events()
    async with watching(lab.bus_address, events):
        network = await first_network(events)
        assert network.check_uri == "" and network.id == PROFILE_UUID
        reported = await events.until(ConnectivityReported)
        while reported.connectivity is not Connectivity.ONLINE:
            reported = await events.until(ConnectivityReported)
        assert reported == ConnectivityReported(Connectivity.ONLINE, checked=False)


def test_nm_checks_only_with_a_uri_and_the_check_on() -> None:
    assert nm_checks({"ConnectivityCheckUri": "http://x/", "ConnectivityCheckAvailable": True,
                      "ConnectivityCheckEnabled": True})  # fmt: skip
    assert not nm_checks({"ConnectivityCheckUri": ""})  # no [connectivity] uri
    assert not nm_checks({"ConnectivityCheckUri": "http://x/", "ConnectivityCheckEnabled": False})
    assert not nm_checks({"ConnectivityCheckUri": "http://x/", "ConnectivityCheckAvailable": False})
    assert nm_checks({})  # an NM too old to say: its word is taken as before


def drain(events: Events) -> list[object]:
    out = []
    while not events.queue.empty():
        out.append(events.queue.get_nowait())
    return out
