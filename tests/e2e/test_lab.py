"""Self-tests of the network-namespace lab: the NetworkManager, DHCP, DNS, portal and TLS in it
are real, and the lab cleans up after itself.

NetworkManager is read over D-Bus with dbus-next, as the daemon will read it. These tests must not
test portal's own code (other e2e tests do that on top of this lab); they only prove the lab
behaves like the hotel it claims to be.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import httpx
import pytest
from dbus_next import BusType, Message, MessageType
from dbus_next.aio import MessageBus

from tests.lab import lab as labmod
from tests.lab.lab import Lab
from tests.lab.marks import LabFactory, requires_dhclient, requires_lab, requires_static_lab
from tests.support.procs import free_port, stop_pid

# The lab's fixtures (lab_factory, lab), registered by name rather than imported into this module.
pytest_plugins = ["tests.lab.fixtures"]

NM = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
PROPS = "org.freedesktop.DBus.Properties"
# NMConnectivityState and NMState values (NetworkManager's D-Bus API).
PORTAL, LIMITED, FULL = 2, 3, 4
CONNECTED_SITE, CONNECTED_GLOBAL = 60, 70
WAIT_S = 30.0  # bounds a hang only; blocked mode needs NM's ~10 s resolver timeout

root_lab = [pytest.mark.root, pytest.mark.lab]

# Fetches a URL from inside the laptop with httpx and prints what came back as JSON.
FETCH = """
import json, ssl, sys, httpx
url, ca = sys.argv[1], sys.argv[2]
verify = ssl.create_default_context(cafile=ca) if ca else True
try:
    r = httpx.get(url, verify=verify, timeout=10)
except httpx.HTTPError as exc:
    print(json.dumps({"error": repr(exc)}))
else:
    print(json.dumps({"status": r.status_code, "type": r.headers.get("content-type"),
                      "location": r.headers.get("location"), "body": r.text}))
"""


class NMClient:
    """NetworkManager on the lab's bus: properties by raw Properties.Get, signals recorded."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.connectivity_seen: list[int] = []
        self.owner_changes: list[tuple[str, str]] = []
        self._changed = asyncio.Event()
        bus.add_message_handler(self._on_message)

    async def subscribe(self) -> None:
        # Subscribe before reading anything, so no change falls between the two.
        for rule in (
            f"type='signal',sender='{NM}',path='{NM_PATH}',interface='{PROPS}',"
            "member='PropertiesChanged'",
            f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{NM}'",
        ):
            await self.call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                            "org.freedesktop.DBus", "AddMatch", "s", [rule])  # fmt: skip

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        if msg.member == "PropertiesChanged" and msg.path == NM_PATH and msg.body[0] == NM:
            if "Connectivity" in msg.body[1]:
                self.connectivity_seen.append(msg.body[1]["Connectivity"].value)
        elif msg.member == "NameOwnerChanged" and msg.body[0] == NM:
            self.owner_changes.append((msg.body[1], msg.body[2]))
        self._changed.set()

    async def call(
        self, dest: str, path: str, iface: str, member: str, sig: str = "", body: Any = ()
    ) -> list[Any]:
        reply = await self.bus.call(
            Message(destination=dest, path=path, interface=iface, member=member,
                    signature=sig, body=list(body))
        )  # fmt: skip
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise AssertionError(f"{member}: {reply.error_name}: {reply.body}")
        return list(reply.body)

    async def get(self, path: str, iface: str, name: str) -> Any:
        (variant,) = await self.call(NM, path, PROPS, "Get", "ss", [iface, name])
        return variant.value

    async def nm(self, name: str) -> Any:
        return await self.get(NM_PATH, NM, name)

    async def device(self, iface: str = "lap0") -> str:
        (path,) = await self.call(NM, NM_PATH, NM, "GetDeviceByIpIface", "s", [iface])
        return str(path)

    async def wait_for(self, what: str, check: Any, timeout_s: float = WAIT_S) -> None:
        """Wait until `await check()` is true, woken by any signal (and every 0.5 s)."""
        async with asyncio.timeout(timeout_s):
            while not await check():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.5)
        assert await check(), what

    async def wait_connectivity(self, value: int, timeout_s: float = WAIT_S) -> None:
        async def check() -> bool:
            return bool(await self.nm("Connectivity") == value)

        try:
            await self.wait_for(f"Connectivity {value}", check, timeout_s)
        except TimeoutError:
            raise AssertionError(
                f"Connectivity stayed {await self.nm('Connectivity')}, wanted {value}"
            ) from None


@contextlib.asynccontextmanager
async def nm_client(lab: Lab) -> AsyncIterator[NMClient]:
    bus = await MessageBus(bus_address=lab.bus_address, bus_type=BusType.SYSTEM).connect()
    try:
        client = NMClient(bus)
        await client.subscribe()
        yield client
    finally:
        await close_bus(bus)


async def close_bus(bus: MessageBus) -> None:
    bus.disconnect()
    await bus.wait_for_disconnect()
    # dbus-next 0.2.3 shuts its socket down but never closes it (a ResourceWarning later).
    for attr in ("_stream", "_sock"):
        with contextlib.suppress(Exception):
            getattr(bus, attr).close()


def fetch(lab: Lab, url: str, ca: Path | None = None) -> dict[str, Any]:
    res = lab.run_laptop([sys.executable, "-c", FETCH, url, str(ca or "")], check=True)
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def nameservers(ip4config: list[dict[str, Any]]) -> list[str]:
    return [str(entry["address"].value) for entry in ip4config]


# --- NetworkManager in the lab ---------------------------------------------------------------


@requires_lab
@pytest.mark.root
@pytest.mark.lab
async def test_hijack_is_portal_and_login_makes_it_full(lab_factory: LabFactory) -> None:
    lab = lab_factory(dns_mode="hijack", nm_check=True)
    async with nm_client(lab) as nm:
        await nm.wait_connectivity(PORTAL)
        assert await nm.nm("State") == CONNECTED_SITE
        dev = await nm.device()
        assert await nm.get(dev, f"{NM}.Device", "Ip4Connectivity") == PORTAL
        ip4 = await nm.get(dev, f"{NM}.Device", "Ip4Config")
        assert nameservers(await nm.get(ip4, f"{NM}.IP4Config", "NameserverData")) == ["10.77.0.1"]
        (addr,) = [a["address"].value for a in await nm.get(ip4, f"{NM}.IP4Config", "AddressData")]
        assert addr == lab.laptop_ip()
        assert 100 <= int(addr.rsplit(".", 1)[1]) <= 150, addr
        # NM's own probe reached the portal and was redirected to the sign-in page.
        probes = [r for r in lab.state()["requests"] if r["host"] == "nmcheck.internet.test"]
        assert probes and probes[0]["status"] == 302

        assert lab.login()["logged_in"] == [addr]
        assert await nm.call(NM, NM_PATH, NM, "CheckConnectivity") == [FULL]
        assert await nm.nm("Connectivity") == FULL
        assert await nm.nm("State") == CONNECTED_GLOBAL
        await nm.wait_for("PropertiesChanged Connectivity=4", _seen(nm, FULL))

        lab.logout()
        assert await nm.call(NM, NM_PATH, NM, "CheckConnectivity") == [PORTAL]
        await nm.wait_for("PropertiesChanged Connectivity=2 after logout", _seen(nm, PORTAL))


def _seen(nm: NMClient, value: int) -> Any:
    async def check() -> bool:
        return value in nm.connectivity_seen

    return check


@requires_lab
@pytest.mark.root
@pytest.mark.lab
async def test_strict_dns_is_limited(lab_factory: LabFactory) -> None:
    lab = lab_factory(dns_mode="strict", nm_check=True)
    async with nm_client(lab) as nm:
        await nm.wait_connectivity(LIMITED)
    # The hotel DNS refuses foreign names but answers its own portal host.
    foreign = lab.run_laptop(["dig", "+tries=1", "+time=5", "nmcheck.internet.test"], check=True)
    assert "status: REFUSED" in foreign.stdout
    own = lab.run_laptop(["dig", "+short", "+tries=1", "+time=5", "login.hotel.test"], check=True)
    assert own.stdout.split() == ["10.77.0.1"]


@requires_lab
@pytest.mark.root
@pytest.mark.lab
async def test_blocked_resolver_is_limited(lab_factory: LabFactory) -> None:
    lab = lab_factory(dns_mode="blocked", nm_check=True)
    async with nm_client(lab) as nm:
        dev = await nm.device()
        ip4 = await nm.get(dev, f"{NM}.Device", "Ip4Config")
        assert nameservers(await nm.get(ip4, f"{NM}.IP4Config", "NameserverData")) == ["192.0.2.53"]
        # The network's own DNS is still visible in the DHCP options, though the profile
        # ignores it: this is what lets a helper probe through the venue's resolver.
        dhcp = await nm.get(dev, f"{NM}.Device", "Dhcp4Config")
        options = await nm.get(dhcp, f"{NM}.DHCP4Config", "Options")
        assert options["domain_name_servers"].value == "10.77.0.1"
        await nm.wait_connectivity(LIMITED)
    assert lab.state()["blackhole_dns_queries"] > 0


@requires_dhclient
@pytest.mark.root
@pytest.mark.lab
async def test_dhclient_shows_option_114_as_default_url(lab_factory: LabFactory) -> None:
    lab = lab_factory(dhcp_client="dhclient", https=True, nm_check=True)
    async with nm_client(lab) as nm:
        await nm.wait_connectivity(PORTAL)
        dev = await nm.device()
        dhcp = await nm.get(dev, f"{NM}.Device", "Dhcp4Config")
        options = await nm.get(dhcp, f"{NM}.DHCP4Config", "Options")
    assert options["default_url"].value == "https://login.hotel.test/captive-portal/api"
    assert options["default_url"].value == lab.api_uri
    # The lab's dhclient config asks for it too (the hotel also sends it unasked).
    assert options["requested_default_url"].value == "1"


@requires_lab
@pytest.mark.root
@pytest.mark.lab
def test_https_api_verifies_with_the_lab_ca(lab_factory: LabFactory) -> None:
    lab = lab_factory(https=True, nm_check=True)
    assert lab.ca_file is not None
    api = fetch(lab, lab.api_uri, lab.ca_file)
    assert api["status"] == 200, api
    assert api["type"] == "application/captive+json"
    body = json.loads(api["body"])
    assert body["captive"] is True
    assert body["user-portal-url"] == "https://login.hotel.test/portal"
    # By address too: the certificate carries IP:10.77.0.1.
    assert fetch(lab, "https://10.77.0.1/captive-portal/api", lab.ca_file)["status"] == 200
    # Without the lab's CA the same request must fail verification: the TLS is real.
    untrusted = fetch(lab, lab.api_uri, None)
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.get("error", ""), untrusted
    # Plain-HTTP redirects point at the https sign-in page.
    redirect = fetch(lab, "http://example.test/anything", None)
    assert redirect["status"] == 302
    assert redirect["location"].startswith("https://login.hotel.test/portal?orig=")

    lab.login(session_s=120)
    after = json.loads(fetch(lab, lab.api_uri, lab.ca_file)["body"])
    assert after["captive"] is False
    assert 0 < after["seconds-remaining"] <= 120


@requires_lab
@pytest.mark.root
@pytest.mark.lab
async def test_nm_restart_is_seen_on_the_bus(lab_factory: LabFactory) -> None:
    lab = lab_factory(nm_check=True)
    async with nm_client(lab) as nm:
        await nm.wait_connectivity(PORTAL)
        (old_owner,) = await nm.call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                                     "org.freedesktop.DBus", "GetNameOwner", "s", [NM])  # fmt: skip
        old_pid = lab.nm_pid
        await asyncio.to_thread(lab.restart_nm)
        assert lab.nm_pid not in (None, old_pid)
        comm = await asyncio.to_thread(Path(f"/proc/{lab.nm_pid}/comm").read_text)
        assert comm.strip() == "NetworkManager"

        async def owner_came_back() -> bool:
            return any(old == "" and new not in ("", old_owner) for old, new in nm.owner_changes)

        await nm.wait_for("NameOwnerChanged: a new owner", owner_came_back)
        assert nm.owner_changes[0] == (old_owner, "")
        await nm.wait_connectivity(PORTAL)
    assert "=== lab: NetworkManager start" in lab.nm_log.read_text()


# --- the lab without NetworkManager, and the lab's own hygiene --------------------------------


@requires_static_lab
@pytest.mark.root
@pytest.mark.lab
async def test_static_laptop_reaches_the_portal(lab_factory: LabFactory) -> None:
    lab = lab_factory(nm=False)
    assert lab.laptop_ip() == "10.77.0.50"
    route = lab.run_laptop(["ip", "-4", "route", "show", "default"], check=True).stdout
    assert "via 10.77.0.1" in route
    assert "nameserver 10.77.0.1" in lab.run_laptop(["cat", "/etc/resolv.conf"]).stdout
    before = fetch(lab, "http://connectivity.test/generate_204")
    assert before["status"] == 302
    assert before["location"] == (
        "http://login.hotel.test/portal?orig=http%3A%2F%2Fconnectivity.test%2Fgenerate_204"
    )
    assert lab.login()["logged_in"] == ["10.77.0.50"]
    assert fetch(lab, "http://connectivity.test/generate_204")["status"] == 204
    # The private bus is there, NetworkManager is not.
    bus = await MessageBus(bus_address=lab.bus_address, bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(
            Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus", member="NameHasOwner", signature="s",
                    body=[NM])
        )  # fmt: skip
        assert reply is not None and reply.body == [False]
    finally:
        await close_bus(bus)


@requires_static_lab
@pytest.mark.root
@pytest.mark.lab
def test_laptop_mounts_are_private(lab_factory: LabFactory) -> None:
    host_resolv = Path("/etc/resolv.conf").read_bytes()
    lab = lab_factory(nm=False)
    # /etc is an overlay: writable, but nothing reaches the host's /etc.
    probe = f"/etc/{lab.prefix}-probe/portal.toml"
    lab.write_laptop_file(probe, 'listen = ["127.0.0.153:53"]\n')
    assert lab.run_laptop(["cat", probe]).stdout.startswith("listen")
    assert not Path(probe).exists()
    assert Path("/etc/resolv.conf").read_bytes() == host_resolv
    # /etc/hosts and /sys are read-only, as NixOS and NetworkManager-without-udev need.
    assert lab.run_laptop(["sh", "-c", "echo x >> /etc/hosts"]).returncode != 0
    assert lab.run_laptop(["sh", "-c", "echo 1 > /sys/class/net/lap0/mtu"]).returncode != 0
    # The laptop's sysfs is its own netns's: it shows lap0, which the host does not have.
    assert lab.run_laptop(["ls", "/sys/class/net"]).stdout.split() == ["lap0", "lo"]
    assert lab.run_laptop(["cat", "/proc/sys/kernel/hostname"]).stdout.strip() == "laptop"
    assert socket.gethostname() != "laptop"
    # The system bus has its default path inside the laptop.
    assert lab.run_laptop(["test", "-S", "/run/dbus/system_bus_socket"]).returncode == 0


@requires_lab
@pytest.mark.root
@pytest.mark.lab
def test_down_removes_everything_and_is_idempotent() -> None:
    lab = Lab()
    lab.up()
    try:
        pids = [p.pid for p in lab._procs]
        assert lab.nm_pid in pids
        run_dir = lab.run_dir
        inodes = [os.stat(f"/run/netns/{ns}").st_ino for ns in (lab.hotel_ns, lab.laptop_ns)]
        mnt = os.stat(f"/proc/{lab.holder_pid}/ns/mnt").st_ino
        assert mnt != os.stat("/proc/self/ns/mnt").st_ino
    finally:
        lab.down()
    lab.down()
    assert not run_dir.exists()
    assert not Path(f"/run/netns/{lab.hotel_ns}").exists()
    assert not Path(f"/run/netns/{lab.laptop_ns}").exists()
    assert [pid for pid in pids if labmod._alive(pid)] == []
    assert [labmod.pids_in_ns("net", i) for i in inodes] == [[], []]
    # Nothing is left in the laptop's mount namespace, so the kernel dropped its mounts.
    assert labmod.pids_in_ns("mnt", mnt) == []


@requires_static_lab
@pytest.mark.root
@pytest.mark.lab
def test_watchdog_tears_down_an_abandoned_lab() -> None:
    """A lab whose owner dies without down() is removed by its watchdog (bounded lifetime)."""
    prefix = f"plw{os.getpid() % 100000}"
    script = (
        "import os, sys\n"
        "from tests.lab.lab import Lab\n"
        f"lab = Lab(nm=False, prefix={prefix!r})\n"
        "lab.up()\n"
        "print(lab.run_dir, flush=True)\n"
        "os._exit(0)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    res = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    run_dir = Path(res.stdout.strip())
    deadline = time.monotonic() + 20  # bounds a hang; the watchdog polls every 0.25 s
    while time.monotonic() < deadline and (
        run_dir.exists() or Path(f"/run/netns/{prefix}-hotel").exists()
    ):
        time.sleep(0.1)
    assert not run_dir.exists()
    assert not Path(f"/run/netns/{prefix}-hotel").exists()
    assert not Path(f"/run/netns/{prefix}-laptop").exists()


@requires_static_lab
@pytest.mark.root
@pytest.mark.lab
def test_watchdog_tears_down_at_the_deadline(lab_factory: LabFactory) -> None:
    lab = lab_factory(nm=False, lifetime_s=2)
    assert lab.run_laptop(["true"]).returncode == 0
    holder = lab.holder_pid
    deadline = time.monotonic() + 20  # bounds a hang; the lab's own deadline is 2 s
    while time.monotonic() < deadline and lab.run_dir.exists():
        time.sleep(0.1)
    assert not lab.run_dir.exists()
    assert not Path(f"/run/netns/{lab.laptop_ns}").exists()
    assert not labmod._alive(holder)


@requires_lab
@pytest.mark.root
@pytest.mark.lab
async def test_two_labs_side_by_side(lab_factory: LabFactory) -> None:
    a = lab_factory(nm_check=True)
    b = lab_factory(nm_check=True)
    assert a.hotel_ns != b.hotel_ns and a.run_dir != b.run_dir
    async with nm_client(a) as nm_a, nm_client(b) as nm_b:
        await nm_a.wait_connectivity(PORTAL)
        await nm_b.wait_connectivity(PORTAL)
        a.login()
        assert await nm_a.call(NM, NM_PATH, NM, "CheckConnectivity") == [FULL]
        assert await nm_b.call(NM, NM_PATH, NM, "CheckConnectivity") == [PORTAL]
    assert b.state()["logged_in"] == []


# --- the portal simulator alone (no root needed) ----------------------------------------------


@contextlib.contextmanager
def portal_process(tmp_path: Path, *extra: str) -> Any:
    port = free_port()
    dns_port = free_port()
    ready = tmp_path / f"ready-{port}"
    proc = subprocess.Popen(
        [sys.executable, str(labmod.PORTAL_SCRIPT), "--listen", "127.0.0.1",
         "--http-port", str(port), "--lifetime", "60", "--ready-file", str(ready),
         "--control-socket", str(tmp_path / f"control-{port}.sock"),
         "--blackhole-dns", "127.0.0.1", "--blackhole-port", str(dns_port), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "portal did not start"
            time.sleep(0.02)
        yield port, dns_port
    finally:
        stop_pid(proc, timeout_s=10)


def test_portal_simulator_flow(tmp_path: Path) -> None:
    with portal_process(tmp_path, "--blackhole-mode", "refused") as (port, dns_port):
        base = f"http://127.0.0.1:{port}"
        portal = {"Host": "login.hotel.test"}
        with httpx.Client(base_url=base, timeout=10) as c:
            r = c.get("/generate_204", headers={"Host": "clients3.google.com"})
            assert r.status_code == 302
            assert r.headers["location"] == (
                f"http://login.hotel.test:{port}/portal?orig="
                "http%3A%2F%2Fclients3.google.com%2Fgenerate_204"
            )
            api = c.get("/captive-portal/api", headers=portal)
            assert api.headers["content-type"] == "application/captive+json"
            assert api.json()["captive"] is True and "seconds-remaining" not in api.json()
            assert "<form" in c.get("/portal", headers=portal).text

            r = c.post("/login", headers=portal, data={"orig": "http://example.test/"})
            assert (r.status_code, r.headers["location"]) == (303, "http://example.test/")
            check = c.get("/check_network_status.txt", headers={"Host": "nmcheck.test"})
            assert check.text == "NetworkManager is online"
            assert check.headers["x-networkmanager-status"] == "online"
            assert c.get("/generate_204", headers={"Host": "a.test"}).status_code == 204
            assert "Success" in c.get("/hotspot-detect.html", headers={"Host": "a.test"}).text
            assert c.get("/connecttest.txt").text == "Microsoft Connect Test"
            assert c.get("/success.txt").text.strip() == "success"
            api = c.get("/captive-portal/api", headers=portal).json()
            assert api["captive"] is False and api["seconds-remaining"] > 0

            state = c.get("/__lab/state", headers=portal).json()
            assert state["logged_in"] == ["127.0.0.1"]
            c.post("/logout", headers=portal)
            assert c.get("/generate_204", headers={"Host": "a.test"}).status_code == 302
            c.post("/__lab/login?ip=127.0.0.1", headers=portal)
            assert c.get("/gen_204", headers={"Host": "a.test"}).status_code == 204
            c.post("/__lab/reset", headers=portal)
            assert c.get("/gen_204", headers={"Host": "a.test"}).status_code == 302
            # A short session, as a hotel's paid hour running out.
            c.post("/__lab/login?ip=127.0.0.1&seconds=30", headers=portal)
            api = c.get("/captive-portal/api", headers=portal).json()
            assert api["captive"] is False and 0 < api["seconds-remaining"] <= 30
            c.post("/__lab/login?ip=127.0.0.1&seconds=0", headers=portal)
            assert c.get("/captive-portal/api", headers=portal).json()["captive"] is True

        query = dns.message.make_query("example.com", "A")
        answer = dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=5)
        assert answer.rcode() == dns.rcode.REFUSED


def test_portal_simulator_page_style_and_drop(tmp_path: Path) -> None:
    with portal_process(tmp_path, "--unauth-style", "page", "--blackhole-mode", "drop") as (
        port,
        dns_port,
    ):
        r = httpx.get(f"http://127.0.0.1:{port}/x", headers={"Host": "a.test"}, timeout=10)
        assert r.status_code == 200 and "<form" in r.text
        query = dns.message.make_query("example.com", "A")
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=0.5)
