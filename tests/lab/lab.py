"""A network-namespace lab: a "hotel" with a captive portal and a "laptop" with real NetworkManager.

Layout (one instance; names and paths are unique per instance, so labs can run side by side)::

    netns <prefix>-hotel                       netns <prefix>-laptop + private mount/UTS ns
      hotel0 10.77.0.1/24  <---- veth ---->      lap0 (DHCP from the hotel, or 10.77.0.50 static)
      lo 192.0.2.53/32 (the user's "public"      /sys   fresh sysfs, read-only (NM needs this
         resolver, for DNS mode "blocked")              to manage links without udev)
      dnsmasq: DHCP .100-.150, router, DNS,      /etc   overlayfs over the host's /etc, with a
        domain hotel.test, option 114 (the              read-only /etc/hosts (like NixOS)
        RFC 8908 API URI), no-ping               /run, /var/lib/NetworkManager: private dirs
      hotel_portal.py :80 (+ :443 with a         system dbus-daemon (private; its socket is
        throwaway CA), blackhole UDP DNS                also /run/dbus/system_bus_socket inside)
                                                 NetworkManager --debug (dhcp=internal|dhclient)

The namespaces have no link to the host network, so no lab traffic can leave them.

Use (as root)::

    with Lab(dns_mode="hijack") as lab:            # or lab = Lab(...); lab.up(); ...; lab.down()
        lab.wait_connectivity("portal")           # nmcli's words: portal, limited, full, ...
        lab.run_laptop(["curl", "-s", "http://example.test/"])   # -> CompletedProcess[str]
        daemon = lab.spawn_laptop(["portal", "daemon", "--log-level", "debug"], name="daemon")
        lab.login()                               # the laptop's address; or login("10.77.0.123")
        lab.state()                               # the portal's /__lab/state as a dict
        daemon.stop()

Constructor options (all keyword-only):

- ``dns_mode``: "hijack" (every name -> 10.77.0.1, also when asked at 192.0.2.53), "strict"
  (REFUSED for every name but login.hotel.test) or "blocked" (the laptop profile pins
  192.0.2.53, where the hotel drops queries; see ``blackhole_mode``).
- ``dhcp_client``: "internal" or "dhclient" (with ``also request default-url;``;
  ``Dhcp4Config.Options`` then shows option 114 as ``default_url``, which NM's internal client
  never does).
- ``https``: the portal also serves :443 with a throwaway CA (``ca_file``); the sign-in and API
  URLs it hands out (redirects, option 114, the API) are https.
- ``nm``: False builds no NetworkManager; lap0 gets 10.77.0.50/24 and a default route
  statically, and /etc/resolv.conf names the hotel DNS (192.0.2.53 when blocked).
- ``unauth_style``: "redirect" (302 to the sign-in page) or "page" (200 with the page).
- ``portal_session_s`` (3600): how long a login lasts (the API's ``seconds-remaining``); when
  it runs out the laptop is captive again, as a portal taking the network back: its web
  answers turn back into the sign-in redirect (DNS answers as before: see ``dns_mode``).
  ``login(session_s=)`` overrides it per login; ``logout()`` takes the network back at once.
- ``captive`` (True): False makes a network with no portal at all (every client online from
  its first request; ``logout()`` still sends one back to the portal).
- ``blackhole_mode``: "drop", "refused", "servfail", "nxdomain" or "hijack" (every A query
  answered with the portal's address) (blocked mode).
- ``dns_after_login`` (False, blocked mode): the user's resolver (192.0.2.53) answers signed-in
  clients, as the internet's would: every A query with ``INTERNET_IP`` (198.51.100.80, on the
  hotel's lo; the portal serves the "simulated internet" there too). So a portal that takes
  the network back takes the user's DNS back as well (to ``blackhole_mode``).
- ``nm_check`` (False): NetworkManager's own connectivity check. Off by default, as NM ships
  on Debian (the check is the optional package network-manager-config-connectivity-debian),
  minimal installs and privacy-minded setups: no ``[connectivity]`` section, so NM reports FULL
  on any connected network and ``ConnectivityCheckAvailable`` is false. True configures the
  lab's check URI (``NM_CHECK_URI``), every ``nm_check_interval_s`` (10; 0 turns the check
  off again, the other way users do it).
- ``nm_dns`` (NM's ``[main] dns=``, default "default"), ``nm_extra_conf`` (text appended to
  NM's config).
- ``nm_rc_manager``: NM's ``[main] rc-manager=``: "file" (default: NM writes /etc/resolv.conf),
  "symlink" (/etc/resolv.conf starts as a link to /run/NetworkManager/resolv.conf, as
  distributions ship it) or "resolvconf" (NM hands its servers to ``/sbin/resolvconf``; use it
  with ``packages=["openresolv"]`` or ``["resolvconf"]``).
- ``packages``: Debian packages the laptop has and the host must not (``LAPTOP_PACKAGES``:
  openresolv, Debian's resolvconf, dhcpcd-base), unpacked (never installed on the host) into
  overlays on the laptop's /usr, /etc and /var/lib, with their stock configuration;
  ``unpacked_package(name)`` says where the unpacked tree is cached. Nothing of them runs
  until a test runs it (no maintainer scripts: the test sets up what they would).
- ``bare``: with ``nm=False``, leave lap0 without address, route or resolv.conf servers (for a
  network manager that runs elsewhere, e.g. in a container joined to the laptop's namespace).
- ``routing_vpn`` (False): a routing-based "VPN" on the laptop, as WireGuard's and OpenVPN's
  ``redirect-gateway def1`` set it up: ``0.0.0.0/1`` and ``128.0.0.0/1`` via ``vpn0``, a veth
  whose far end drops everything (frames to a MAC nobody has). Every off-link destination,
  the user's resolver included, is captured, unless a socket is bound to ``lap0``.
- ``policy_vpn`` (False): a VPN as wg-quick sets one up for ``AllowedIPs = 0.0.0.0/0``, on a
  tun device ``wg0`` as wireguard-go makes it (no process reads it: it delivers nothing): a
  default route in table 51820 and the rules ``not fwmark 0xca6c lookup 51820`` and
  ``lookup main suppress_prefixlength 0``. Every destination off the subnet is captured by the
  rule, unless a socket carries the mark or is bound to ``lap0``.
- ``venue_bridge`` (""): a local bridge of that name (Docker names its networks ``br-<id>``)
  on the venue's subnet, made once the laptop is connected, as a ``docker network create``
  with an overlapping subnet or a container's start does: ``10.77.0.254/24``, whose connected
  route (metric 0) wins over NetworkManager's (metric 100) for the whole subnet, the gateway,
  its DNS and the portal included.
- ``offlink_portal`` (False): the portal is also served from ``203.0.113.80`` (the hotel's lo,
  reached through the gateway, so a VPN's routes capture it), and the venue's DNS answers
  the sign-in host with that address instead of 10.77.0.1.
- ``offlink_hijack`` (False, with ``offlink_portal``): the venue's DNS answers every other
  name (hijack and blocked modes) with ``203.0.113.80`` too, so portal's probes (and any
  program's page) go off-link, through the gateway, where a VPN's routes or rules capture them.
- ``partner_resource`` (False): the sign-in page loads a script from
  ``cdn.venue-partner.test`` (``PARTNER_HOST``), a third-party name only the venue's DNS
  resolves, reachable before login (the portal's log shows the request).
- ``ipv6`` (False, with ``nm=False`` only): hotel0 also has ``fd77::1/64`` and lap0
  ``fd77::50/64`` with a default route; the portal serves on fd77::1, and the venue's DNS
  answers the sign-in host and ``v6only.hotel.test`` with AAAA fd77::1 (the latter has no A).
- ``ipv6_only`` (False): an IPv6-only venue, as NAT64 networks are: the laptop gets no IPv4 at
  all; the hotel's dnsmasq sends router advertisements (``enable-ra``: SLAAC on fd77::/64, the
  RDNSS option naming fd77::1) and answers stateless DHCPv6 (DNS fd77::1 and the RFC 8910
  option 103, the API URI). Its DNS answers every name with AAAA fd77::1 (the portal serves
  there) and, like a DNS64 resolver's real A records, with an A the laptop cannot reach.
  With NM the profile turns IPv4 off and IPv6 to auto; without NM the kernel takes the RA.
  ``send_ra(captive_portal=URI)`` sends one more RA from the hotel's router carrying the RFC
  8910 option 37 (dnsmasq has no way to). ``laptop_ip()`` is then the SLAAC address.
- ``cloned_mac`` (""): the profile's ``ethernet.cloned-mac-address`` ("random", "stable", ...),
  as NM writes it on a per-network random MAC (with NM only).
- ``hostname_in_hosts`` (False): the laptop's /etc/hosts (still read-only) also names its
  hostname ``laptop`` (``127.0.1.1``), as Debian's installer and NixOS write it. Without it,
  programs that look up their own hostname at start (Firefox's profile lock does) wait for
  the blocked resolver.
- ``bus_policy_files``: D-Bus policy files the private bus loads (copied into
  ``bus_policy_dir``; the bus also reads /usr/share/dbus-1/system.d and the laptop's
  /etc/dbus-1/system.d; call ``reload_bus()`` after adding files later).
- ``lifetime_s`` (600): at that deadline, or as soon as the process that built the lab dies, a
  watchdog process tears the lab down.
- ``prefix`` / ``run_root``: namespace name prefix (random by default) and the run dir's parent.

Methods:

- ``up()``; ``down()`` kills by PID every process in the lab's namespaces, deletes them (the
  laptop's mounts go with its mount namespace) and removes the run dir; safe to call twice.
- ``run_laptop(argv, env=, input=, timeout_s=, check=, cwd=)`` and ``run_hotel(...)`` ->
  ``CompletedProcess[str]``; ``spawn_laptop(argv, env=, name=, cwd=)`` and
  ``spawn_hotel(...)`` -> ``LabProcess`` (``pid`` is the program's own, ``stop()``,
  ``wait()``, ``poll()``, ``send_signal()``, ``log_path``, ``read_log()``). Laptop commands
  run in its network, mount and UTS namespaces with ``DBUS_SYSTEM_BUS_ADDRESS`` set, in the
  caller's working directory unless ``cwd`` says otherwise; ``env`` adds to the environment.
  ``laptop_argv(argv)`` / ``hotel_argv(argv)`` give the bare command lines.
- ``write_laptop_file(path, text, mode=)`` writes a file as the laptop sees it (its /etc is an
  overlay, so the host's is never touched); ``reload_bus()``.
- ``start_nm()``, ``stop_nm()``, ``restart_nm()`` (flushes lap0 first, so the new NM does DHCP
  again), ``nm_pid``, ``wait_nm_activated()``, ``nmcli(*args)``, ``nm_general()``,
  ``wait_connectivity(word)`` with nmcli's words ("portal", "limited", "full", "none").
- ``laptop_ip()``; ``login(ip=None, session_s=None)``, ``logout(ip=None)`` (default: the
  laptop's address),
  ``reset_portal()``, ``state()`` (logged_in, recent requests, blackhole_dns_queries) through
  the portal's lab controls.

Attributes: ``run_dir``, ``bus_address`` (``unix:path=...``; inside the laptop the socket is
also /run/dbus/system_bus_socket), ``bus_policy_dir``, ``ca_file`` (None without https),
``api_uri``, ``portal_url``, ``nm_log``, ``portal_log``, ``dnsmasq_log``, ``hotel_ns``,
``laptop_ns``, ``holder_pid``, ``hotel_ip``, ``public_dns``, ``portal_address`` (what the venue's
DNS answers for the sign-in host), ``timings`` (seconds, measured).

By hand (as root): ``python3 tests/lab/lab.py shell [--dns-mode blocked] [--https] [--no-nm]
[--dhcp-client dhclient] [--routing-vpn] [--policy-vpn] [--venue-bridge NAME]
[--offlink-portal] [--partner] [--ipv6] [COMMAND...]``
builds a lab, runs COMMAND (default: a shell) on the laptop, and removes the lab when it exits.

The module is stdlib only: run as ``python3 lab.py --reap RECORD --watch PID`` it is the
watchdog that tears a lab down. It must not touch anything outside its run dir and its two
namespaces (the host's /etc, /run, /var/lib/NetworkManager, hostname and network stay as they
are), must not find processes by name, and must not outlive ``lifetime_s``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

HERE = Path(__file__).resolve().parent
PORTAL_SCRIPT = HERE / "hotel_portal.py"

HOTEL_IP = "10.77.0.1"
PREFIX_LEN = 24
DHCP_FIRST = "10.77.0.100"
DHCP_LAST = "10.77.0.150"
STATIC_LAPTOP_IP = "10.77.0.50"
PUBLIC_DNS = "192.0.2.53"  # TEST-NET-1: the user's "public" resolver a hotel can block
PORTAL_HOST = "login.hotel.test"
HOTEL_DOMAIN = "hotel.test"
NM_CHECK_URI = "http://nmcheck.internet.test/check_network_status.txt"
NM_CHECK_RESPONSE = "NetworkManager is online"
PROFILE_ID = "hotel-wifi"
PROFILE_UUID = "6d0a6f7e-4b1c-4c55-9a61-0c0ffee00001"
HOTEL_IF = "hotel0"
LAPTOP_IF = "lap0"
OFFLINK_PORTAL_IP = "203.0.113.80"  # TEST-NET-3, on the hotel's lo: off-link for the laptop
INTERNET_IP = "198.51.100.80"  # TEST-NET-2, on the hotel's lo: "the internet" once signed in
PARTNER_HOST = "cdn.venue-partner.test"
HOTEL_IP6 = "fd77::1"
STATIC_LAPTOP_IP6 = "fd77::50"
V6ONLY_HOST = "v6only.hotel.test"
VPN_IF = "vpn0"
VPN_FAR_IF = "vpn0far"
VPN_IP = "10.200.0.2"
VPN_GATEWAY = "10.200.0.1"
VPN_GATEWAY_MAC = "02:00:5e:00:00:01"  # no interface has it: the far end drops every frame
POLICY_VPN_IF = "wg0"
POLICY_VPN_IP = "10.201.0.2"
WG_TABLE = "51820"  # wg-quick's table and fwmark: the port, 51820 = 0xca6c
WG_FWMARK = "0xca6c"
BRIDGE_IP = "10.77.0.254"

DnsMode = Literal["hijack", "strict", "blocked"]
DhcpClient = Literal["internal", "dhclient"]
UnauthStyle = Literal["redirect", "page"]
BlackholeMode = Literal["drop", "refused", "servfail", "nxdomain", "hijack"]

# Where root's tools live; PATH may lack the sbin directories when run from a user's shell.
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
)


class LabError(RuntimeError):
    """The lab could not be built or a lab operation failed."""


def which(tool: str) -> str | None:
    """The absolute path of `tool`, looking in the sbin directories too."""
    return shutil.which(tool, path=_SEARCH_PATH)


def _tool(name: str) -> str:
    path = which(name)
    if path is None:
        raise LabError(f"{name} is not installed")
    return path


def unavailable_reason(
    *, nm: bool = True, dhclient: bool = False, https: bool = False, packages: Iterable[str] = ()
) -> str | None:
    """Why a lab with these options cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the lab needs root (network and mount namespaces)"
    for package in packages:
        root, why = unpacked_package(package)
        if root is None:
            return why
    needed = ["ip", "nsenter", "unshare", "dnsmasq", "dbus-daemon"]
    if nm:
        needed += ["NetworkManager", "nmcli"]
    if dhclient:
        needed.append("dhclient")
    if https:
        needed.append("openssl")
    missing = [tool for tool in needed if which(tool) is None]
    if missing:
        return f"the lab needs {', '.join(missing)} (not installed)"
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "overlay" not in filesystems:
        return "the lab needs overlayfs (not in /proc/filesystems)"
    if not Path("/proc/self/ns/net").exists():
        return "the lab needs network namespaces"
    return None


PACKAGE_CACHE = Path(os.environ.get("PORTAL_TEST_CACHE", "/var/tmp/portal-test-cache"))
# Packages the laptop may have that must never be installed on the host (each would take over
# its resolv.conf or its network), and the file that shows an unpacked tree is whole.
# scripts/install-test-deps unpacks the same ones into the same cache.
LAPTOP_PACKAGES = {
    "openresolv": "sbin/resolvconf",
    "resolvconf": "sbin/resolvconf",  # Debian's own resolvconf, not openresolv
    "dhcpcd-base": "usr/sbin/dhcpcd",  # dhcpcd 9 (dhcpcd5 is the transitional name)
}


def unpacked_package(name: str) -> tuple[Path | None, str]:
    """Debian's package `name` unpacked (`apt-get download` + `dpkg -x`, never installed),
    cached; or None and why it cannot be had."""
    witness = LAPTOP_PACKAGES.get(name)
    if witness is None:
        raise LabError(f"not a package the lab unpacks: {name} (LAPTOP_PACKAGES)")
    cached = sorted(PACKAGE_CACHE.glob(f"{name}-[0-9]*/{witness}"))
    if cached:
        return cached[-1].parents[len(Path(witness).parts) - 1], ""
    if which("apt-get") is None or which("dpkg") is None:
        return None, f"the lab needs {name}: apt-get and dpkg are not available"
    download = Path(tempfile.mkdtemp(prefix=f"portal-{name}-"))
    try:
        download.chmod(0o777)  # apt fetches as its own user when it can write here
        got = subprocess.run(
            [_tool("apt-get"), "download", "-qq", name],
            cwd=download, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        debs = sorted(download.glob(f"{name}_*.deb"))
        if got.returncode != 0 or not debs:
            return None, f"the lab needs {name}: apt-get download failed: {got.stderr.strip()}"
        version = debs[0].name.split("_")[1].replace(":", "_")
        unpacked = download / "root"
        if subprocess.run([_tool("dpkg"), "-x", str(debs[0]), str(unpacked)]).returncode != 0:
            return None, f"the lab needs {name}: dpkg -x {debs[0].name} failed"
        root = PACKAGE_CACHE / f"{name}-{version}"
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.move(unpacked, root)
        return root, ""
    finally:
        shutil.rmtree(download, ignore_errors=True)


# --- processes -------------------------------------------------------------------------------


def _proc_state(pid: int) -> str | None:
    """The state letter from /proc/PID/stat, or None when the process is gone.

    `kill -0` would call a zombie alive; orphans here are reaped late (PID 1 may be slow).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _alive(pid: int) -> bool:
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _descendants(pid: int) -> list[int]:
    """Every descendant of `pid`, children first (from /proc/PID/task/*/children)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                text = Path(f"/proc/{parent}/task/{tid}/children").read_text()
            except OSError:
                continue
            for child in (int(c) for c in text.split()):
                if child not in found:
                    found.append(child)
                    todo.append(child)
    return found


def _netns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return None


def pids_in_ns(kind: str, inode: int) -> list[int]:
    """PIDs of the live processes whose `kind` ("net", "mnt") namespace has this inode."""
    wanted = f"{kind}:[{inode}]"
    me = os.getpid()
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/{kind}") == wanted and _alive(int(entry)):
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def teardown(record: Mapping[str, Any]) -> None:
    """Remove everything a lab made, from its record. Idempotent; used by down() and the watchdog.

    Processes are found by PID: the ones recorded, then every process still inside the lab's
    namespaces (things they started, such as NetworkManager's dnsmasq, outlive their parent).
    """
    for pid, started in record.get("pids", []):
        # The start time guards against a recycled PID (the watchdog runs after our children
        # were reparented and reaped).
        if _alive(pid) and _start_time(pid) == started:
            _kill(pid, signal.SIGKILL)
    spaces = [("net", int(i)) for i in record.get("netns_inodes", []) if i]
    spaces += [("mnt", int(i)) for i in record.get("mntns_inodes", []) if i]
    for _ in range(100):
        stray = {pid for kind, inode in spaces for pid in pids_in_ns(kind, inode)}
        if not stray:
            break
        for pid in stray:
            _kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    # The laptop's mounts (sysfs, /etc overlay, /run, /var/lib/NetworkManager) live only in its
    # private mount namespace: the kernel unmounts them when its last process is gone.
    ip = which("ip") or "ip"
    for name in record.get("netns", []):
        if Path(f"/run/netns/{name}").exists():
            subprocess.run([ip, "netns", "delete", name], capture_output=True, check=False)
    run_dir = record.get("run_dir")
    if run_dir and Path(run_dir).is_dir():
        shutil.rmtree(run_dir, ignore_errors=True)


class LabProcess:
    """A process the lab started: its PID, its log, and a way to stop it."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path | None) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout_s: float | None = None) -> int:
        return self.popen.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> int:
        """Send `sig`, wait up to `timeout_s`, then SIGKILL. Returns the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                return self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait()

    def read_log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def __repr__(self) -> str:
        return f"LabProcess({self.name!r}, pid={self.pid}, returncode={self.popen.returncode})"


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over the portal's control socket, which the host can reach from outside the netns."""

    def __init__(self, path: str, timeout_s: float) -> None:
        super().__init__("lab", timeout=timeout_s)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


# --- configuration text ----------------------------------------------------------------------

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<!-- The laptop's system bus: the stock system policy, no activation, no user switch. -->
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <includedir>/usr/share/dbus-1/system.d</includedir>
  <includedir>/etc/dbus-1/system.d</includedir>
  <includedir>{policy_dir}</includedir>
</busconfig>
"""


def _connectivity_section(interval_s: int) -> str:
    return f"""[connectivity]
enabled=true
uri={NM_CHECK_URI}
response={NM_CHECK_RESPONSE}
interval={interval_s}
"""


def nm_conf(
    *,
    dhcp_client: str,
    nm_dns: str,
    keyfile_dir: Path,
    check_interval_s: int,
    check: bool = True,
    extra: str,
    rc_manager: str = "file",
) -> str:
    return f"""# The laptop's NetworkManager (test lab).
[main]
plugins=keyfile
dhcp={dhcp_client}
dns={nm_dns}
# file: NM writes /etc/resolv.conf itself (by rename, hence the overlay on /etc); symlink: NM
# writes /run/NetworkManager/resolv.conf, which /etc/resolv.conf links to; resolvconf: NM
# hands its servers to /sbin/resolvconf (openresolv or Debian's resolvconf).
rc-manager={rc_manager}
# Keep NM away from the hostname (it also runs in its own UTS namespace).
hostname-mode=none
auth-polkit=false
no-auto-default=*
systemd-resolved=false

[keyfile]
path={keyfile_dir}
# Otherwise NM 1.42 also reports lo as "connected (externally)".
unmanaged-devices=except:interface-name:{LAPTOP_IF}

{_connectivity_section(check_interval_s) if check else ""}
[device-lab]
match-device=interface-name:{LAPTOP_IF}
managed=1

{extra}
"""


def nm_profile(*, dns_mode: str, ipv6_only: bool = False, cloned_mac: str = "") -> str:
    pin = ""
    if dns_mode == "blocked":
        # The user's own resolver, which the hotel blackholes: NM must not use the DHCP DNS.
        pin = f"ignore-auto-dns=true\ndns={PUBLIC_DNS};\n"
    ethernet = f"cloned-mac-address={cloned_mac}\n" if cloned_mac else ""
    if ipv6_only:
        addressing = "[ipv4]\nmethod=disabled\n\n[ipv6]\nmethod=auto\naddr-gen-mode=eui64\n"
    else:
        addressing = f"[ipv4]\nmethod=auto\n{pin}\n[ipv6]\nmethod=disabled\n"
    return f"""[connection]
id={PROFILE_ID}
uuid={PROFILE_UUID}
type=ethernet
interface-name={LAPTOP_IF}
autoconnect=true

[ethernet]
{ethernet}
{addressing}"""


def dnsmasq_conf(
    *,
    dns_mode: str,
    api_uri: str,
    leases: Path,
    pid_file: Path,
    portal_address: str = HOTEL_IP,
    catch_all: str = HOTEL_IP,
    partner: bool = False,
    ipv6: bool = False,
    ipv6_only: bool = False,
) -> str:
    lines = [
        f"interface={HOTEL_IF}",
        # Only the hotel's addresses: never lo (192.0.2.53 lives there; see below).
        "except-interface=lo",
        "bind-interfaces",
        f"listen-address={HOTEL_IP}",
        "no-resolv",
        "no-hosts",
        "no-poll",
        "user=root",
        "group=root",
        f"pid-file={pid_file}",
        f"dhcp-leasefile={leases}",
        "log-queries",
        "log-dhcp",
        "dhcp-authoritative",
        # Without it dnsmasq pings each address before offering it: ~3 s per lease.
        "no-ping",
        f"dhcp-range={DHCP_FIRST},{DHCP_LAST},255.255.255.0,10m",
        f"dhcp-option=option:router,{HOTEL_IP}",
        f"dhcp-option=option:dns-server,{HOTEL_IP}",
        f"dhcp-option=option:domain-name,{HOTEL_DOMAIN}",
        # RFC 8910: the captive-portal API URI. Forced: clients rarely ask for it.
        f'dhcp-option-force=114,"{api_uri}"',
        f"address=/{PORTAL_HOST}/{portal_address}",
    ]
    if partner:
        lines.append(f"address=/{PARTNER_HOST}/{portal_address}")
    if ipv6:
        lines += [
            f"address=/{PORTAL_HOST}/{HOTEL_IP6}",
            # AAAA only: `local=` keeps the catch-all's A away from it (NODATA instead).
            f"address=/{V6ONLY_HOST}/{HOTEL_IP6}",
            f"local=/{V6ONLY_HOST}/",
        ]
    if ipv6_only:
        # No IPv4 lease; the sign-in host has only AAAA.
        v4_only = ("dhcp-range=", f"address=/{PORTAL_HOST}/")
        lines = [line for line in lines if not line.startswith(v4_only)]
        lines += [
            f"listen-address={HOTEL_IP6}",
            # RAs (SLAAC, RDNSS: dnsmasq names its own address) and stateless DHCPv6.
            "enable-ra",
            f"dhcp-range=::,constructor:{HOTEL_IF},ra-stateless,64,10m",
            f"dhcp-option=option6:dns-server,[{HOTEL_IP6}]",
            # RFC 8910 §2.2: DHCPv6 option 103, the captive-portal API URI.
            f'dhcp-option-force=option6:103,"{api_uri}"',
            # AAAA only: `local=` keeps the catch-all's A away from them (NODATA instead).
            f"address=/{PORTAL_HOST}/{HOTEL_IP6}",
            f"local=/{PORTAL_HOST}/",
            f"address=/{V6ONLY_HOST}/{HOTEL_IP6}",
            f"local=/{V6ONLY_HOST}/",
        ]
        if dns_mode in ("hijack", "blocked"):
            lines.append(f"address=/#/{HOTEL_IP6}")
    if dns_mode in ("hijack", "blocked"):
        lines.append(f"address=/#/{catch_all}")
    if dns_mode == "hijack":
        # Hotels that hijack DNS answer queries sent to any resolver, the "public" one too.
        lines.append(f"listen-address={PUBLIC_DNS}")
    # strict: no upstream and no wildcard, so every other name gets REFUSED. No wildcard for
    # hotel.test either: the DHCP search domain would turn foreign names into portal names.
    return "\n".join(lines) + "\n"


_OPENSSL_CNF = f"""[req]
distinguished_name = dn
prompt = no
x509_extensions = ca

[dn]
CN = Hotel Lab

[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[server]
subjectAltName = DNS:{PORTAL_HOST},DNS:{PARTNER_HOST},IP:{HOTEL_IP},IP:{OFFLINK_PORTAL_IP}
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

_HOLDER_SCRIPT = r"""
set -eu
R="$1"; LIFETIME="$2"; HOSTS="${3:-/etc/hosts}"
echo laptop > /proc/sys/kernel/hostname
# Drop this namespace's copies of /run/netns mounts: they would keep other labs' namespaces.
while umount -l /run/netns 2>/dev/null; do :; done
# A fresh sysfs for this netns, read-only: with a writable /sys NetworkManager waits for udev
# and leaves every link unmanaged.
mount -t sysfs -o ro sysfs /sys
mount --bind "$R/laptop/run" /run
# overlay DIR NAME: DIR with an upper layer "$R/laptop/NAME-upper" (NM replaces
# /etc/resolv.conf by rename(), which a bind-mounted file refuses with EBUSY).
overlay() {
    mkdir -p "$R/laptop/$2-work"
    if ! mount -t overlay overlay \
        -o "lowerdir=$1,upperdir=$R/laptop/$2-upper,workdir=$R/laptop/$2-work" "$1" 2>/dev/null
    then
        # The run dir's filesystem cannot be an upper layer (overlayfs itself, as in a
        # container): keep the layer on a tmpfs that exists only in this namespace.
        T="$R/laptop/$2-tmpfs"
        mkdir -p "$T"
        mount -t tmpfs -o mode=0755 tmpfs "$T"
        mkdir "$T/upper" "$T/work"
        cp -a "$R/laptop/$2-upper/." "$T/upper/"
        mount -t overlay overlay -o "lowerdir=$1,upperdir=$T/upper,workdir=$T/work" "$1"
    fi
}
# Packages the laptop has and the host must not (openresolv, resolvconf, dhcpcd): overlays
# on /usr and /var/lib (before NetworkManager's state is bound into the latter).
if [ -d "$R/laptop/usr-upper" ]; then
    overlay /usr usr
fi
if [ -d "$R/laptop/var-lib-upper" ]; then
    overlay /var/lib var-lib
fi
if [ -d /var/lib/NetworkManager ]; then
    mount --bind "$R/laptop/var-lib-nm" /var/lib/NetworkManager
fi
overlay /etc etc
# Like NixOS: /etc/hosts is read-only (optionally the lab's copy, naming the laptop).
mount --bind "$HOSTS" /etc/hosts
mount -o remount,bind,ro /etc/hosts
echo ready > "$R/laptop/holder.ready"
exec sleep "$LIFETIME"
"""


# One router advertisement (RFC 4861 §4.2) with RDNSS (RFC 8106) and captive-portal (RFC 8910
# §2.3) options, sent from a raw ICMPv6 socket (the kernel fills in the checksum).
_SEND_RA = r"""
import ipaddress, socket, struct, sys, time
ifname, uri, lifetime, dns = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), sys.argv[4]
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0x40, lifetime, 0, 0)  # O: DHCPv6 for the rest
rdnss = struct.pack("!BBHI", 25, 3, 0, lifetime) + ipaddress.IPv6Address(dns).packed
pad = (-(len(uri) + 2)) % 8
cp = struct.pack("!BB", 37, (len(uri) + 2 + pad) // 8) + uri + b"\0" * pad
def link_local():  # hotel0's, once duplicate address detection is over (else no RA leaves)
    for line in open("/proc/net/if_inet6"):
        addr, _index, _plen, scope, flags, name = line.split()
        if name == ifname and scope == "20" and not int(flags, 16) & 0x40:
            return str(ipaddress.IPv6Address(bytes.fromhex(addr)))
for _ in range(100):
    source = link_local()
    if source:
        break
    time.sleep(0.05)
else:
    sys.exit(f"{ifname} has no usable link-local address")
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.bind((source, 0, 0, socket.if_nametoindex(ifname)))
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
s.setsockopt(socket.SOL_SOCKET, 25, ifname.encode())
s.sendto(ra + rdnss + cp, ("ff02::1", 0, 0, socket.if_nametoindex(ifname)))
"""


class Lab:
    """One hotel + laptop lab. See the module docstring for the API."""

    def __init__(
        self,
        *,
        dns_mode: DnsMode = "hijack",
        dhcp_client: DhcpClient = "internal",
        https: bool = False,
        nm: bool = True,
        unauth_style: UnauthStyle = "redirect",
        portal_session_s: int = 3600,
        blackhole_mode: BlackholeMode = "drop",
        nm_dns: str = "default",
        nm_check: bool = False,
        nm_check_interval_s: int = 10,
        nm_extra_conf: str = "",
        nm_rc_manager: str = "file",
        packages: Iterable[str] = (),
        bare: bool = False,
        bus_policy_files: Iterable[str | os.PathLike[str]] = (),
        routing_vpn: bool = False,
        policy_vpn: bool = False,
        venue_bridge: str = "",
        offlink_portal: bool = False,
        offlink_hijack: bool = False,
        partner_resource: bool = False,
        ipv6: bool = False,
        ipv6_only: bool = False,
        cloned_mac: str = "",
        hostname_in_hosts: bool = False,
        captive: bool = True,
        dns_after_login: bool = False,
        lifetime_s: float = 600.0,
        prefix: str | None = None,
        run_root: str | os.PathLike[str] | None = None,
    ) -> None:
        if dns_mode not in ("hijack", "strict", "blocked"):
            raise ValueError(f"dns_mode {dns_mode!r}")
        if dhcp_client not in ("internal", "dhclient"):
            raise ValueError(f"dhcp_client {dhcp_client!r}")
        self.dns_mode = dns_mode
        self.dhcp_client = dhcp_client
        self.https = https
        self.nm = nm
        self.unauth_style = unauth_style
        self.portal_session_s = portal_session_s
        self.blackhole_mode = blackhole_mode
        self.nm_dns = nm_dns
        self.nm_check = nm_check
        self.nm_check_interval_s = nm_check_interval_s
        self.nm_extra_conf = nm_extra_conf
        if nm_rc_manager not in ("file", "symlink", "resolvconf"):
            raise ValueError(f"nm_rc_manager {nm_rc_manager!r}")
        self.nm_rc_manager = nm_rc_manager
        self.packages = list(packages)
        self.bare = bare
        self.bus_policy_files = [Path(p) for p in bus_policy_files]
        if ipv6 and nm:
            raise ValueError("ipv6=True needs nm=False (the NM profile disables IPv6)")
        self.routing_vpn = routing_vpn
        self.policy_vpn = policy_vpn
        self.venue_bridge = venue_bridge
        self.offlink_portal = offlink_portal
        if offlink_hijack and not offlink_portal:
            raise ValueError("offlink_hijack=True needs offlink_portal=True")
        self.offlink_hijack = offlink_hijack
        self.partner_resource = partner_resource
        self.ipv6 = ipv6
        if ipv6_only and (ipv6 or dns_mode != "hijack"):
            raise ValueError("ipv6_only=True goes with dns_mode='hijack' and without ipv6")
        self.ipv6_only = ipv6_only
        self.cloned_mac = cloned_mac
        self.hostname_in_hosts = hostname_in_hosts
        self.captive = captive
        self.dns_after_login = dns_after_login
        #: The address the venue's DNS gives for the sign-in host.
        self.portal_address = OFFLINK_PORTAL_IP if offlink_portal else HOTEL_IP
        self.lifetime_s = lifetime_s
        self.prefix = prefix or f"pl{secrets.token_hex(3)}"
        self.run_root = Path(run_root) if run_root else Path(tempfile.gettempdir())
        self.hotel_ns = f"{self.prefix}-hotel"
        self.laptop_ns = f"{self.prefix}-laptop"
        self.hotel_ip = HOTEL_IP
        self.public_dns = PUBLIC_DNS
        scheme = "https" if https else "http"
        self.api_uri = f"{scheme}://{PORTAL_HOST}/captive-portal/api"
        self.portal_url = f"{scheme}://{PORTAL_HOST}/portal"
        self.run_dir = Path()  # set by up()
        self.ca_file: Path | None = None
        self.timings: dict[str, float] = {}
        self._record: dict[str, Any] = {}
        self._procs: list[LabProcess] = []
        self._logs: list[IO[bytes]] = []
        self._holder: LabProcess | None = None
        self._nm: LabProcess | None = None
        self._reaper: subprocess.Popen[bytes] | None = None
        self._deadline = 0.0
        self._state: Literal["new", "up", "down"] = "new"
        self._spawned = 0

    # --- paths --------------------------------------------------------------------------------

    @property
    def bus_socket(self) -> Path:
        # Inside the laptop the same socket is /run/dbus/system_bus_socket (the default path).
        return self.run_dir / "laptop" / "run" / "dbus" / "system_bus_socket"

    @property
    def bus_address(self) -> str:
        return f"unix:path={self.bus_socket}"

    @property
    def bus_policy_dir(self) -> Path:
        return self.run_dir / "dbus" / "system.d"

    @property
    def nm_log(self) -> Path:
        return self.run_dir / "nm" / "nm.log"

    @property
    def portal_log(self) -> Path:
        return self.run_dir / "hotel" / "portal.log"

    @property
    def dnsmasq_log(self) -> Path:
        return self.run_dir / "hotel" / "dnsmasq.log"

    @property
    def control_socket(self) -> Path:
        return self.run_dir / "hotel" / "control.sock"

    @property
    def nm_pid(self) -> int | None:
        return self._nm.pid if self._nm is not None and self._nm.alive() else None

    @property
    def holder_pid(self) -> int:
        if self._holder is None:
            raise LabError("the lab is not up")
        return self._holder.pid

    # --- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> Lab:
        """Build the whole lab; on failure, tear down what was built and raise LabError."""
        if self._state != "new":
            raise LabError("a Lab can be brought up once")
        self._state = "up"
        t0 = time.monotonic()
        self._deadline = t0 + self.lifetime_s
        try:
            self._make_dirs()
            self._make_netns()
            self._start_reaper()
            self._start_hotel()
            self._start_laptop()
            self.timings["up_s"] = time.monotonic() - t0
        except BaseException as exc:
            logs = self._log_tails()
            self.down()
            if isinstance(exc, LabError):
                raise LabError(f"{exc}\n{logs}") from exc
            raise
        return self

    def down(self) -> None:
        """Kill by PID, delete both namespaces, remove the run dir. Safe to call twice."""
        if self._state == "down":
            return
        self._state = "down"
        t0 = time.monotonic()
        if self._reaper is not None:
            self._reaper.kill()
            self._reaper.wait()
        for proc in reversed(self._procs):
            if proc.alive():
                proc.popen.kill()
        if self._record:
            teardown(self._record)
        for proc in self._procs:
            proc.popen.wait()
        for f in self._logs:
            f.close()
        self.timings["down_s"] = time.monotonic() - t0

    def remaining_s(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def _make_dirs(self) -> None:
        self.run_dir = Path(
            tempfile.mkdtemp(prefix=f"portal-lab-{self.prefix}-", dir=self.run_root)
        )
        self._record = {
            "run_dir": str(self.run_dir),
            "netns": [self.hotel_ns, self.laptop_ns],
            "netns_inodes": [],
            "mntns_inodes": [],
            "pids": [],
            "deadline_unix": time.time() + self.lifetime_s,
        }
        # Processes on the laptop may run as other users (the daemon's own user): let them in.
        self.run_dir.chmod(0o755)
        for sub in (
            "hotel",
            "nm/conf.d",
            "nm/system-connections",
            "dbus/system.d",
            "laptop/run/dbus",
            "laptop/run/NetworkManager",
            "laptop/var-lib-nm",
            "laptop/etc-upper/dhcp",
            "laptop/etc-work",
            "laptop/etc-tmpfs",
            "logs",
        ):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        for d in ("dbus", "dbus/system.d", "laptop", "laptop/run", "laptop/run/dbus"):
            (self.run_dir / d).chmod(0o755)
        self._write_record()

    def _write_record(self) -> None:
        path = self.run_dir / "lab.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._record))
        os.replace(tmp, path)

    def _track(self, proc: LabProcess) -> LabProcess:
        self._procs.append(proc)
        self._record["pids"].append([proc.pid, _start_time(proc.pid)])
        self._write_record()
        return proc

    def _start_reaper(self) -> None:
        """The watchdog: tears the lab down at the deadline or when this process dies."""
        log = open(self.run_dir / "logs" / "reaper.log", "wb")  # noqa: SIM115 (kept open)
        self._logs.append(log)
        self._reaper = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--reap",
                str(self.run_dir / "lab.json"),
                "--watch",
                str(os.getpid()),
                "--watch-start",
                _start_time(os.getpid()) or "",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a signal to our process group must not take the watchdog too.
            start_new_session=True,
        )

    # --- commands -----------------------------------------------------------------------------

    def _ip(self, *args: str, ns: str | None = None) -> None:
        argv = [_tool("ip")] + (["-n", ns] if ns else []) + list(args)
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise LabError(f"{' '.join(argv)}: {res.stderr.strip()}")

    def hotel_argv(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs `argv` in the hotel's network namespace."""
        return [_tool("nsenter"), f"--net=/run/netns/{self.hotel_ns}", "--", *argv]

    def laptop_argv(
        self, argv: Sequence[str], *, cwd: str | os.PathLike[str] | None = None
    ) -> list[str]:
        """The command line that runs `argv` on the laptop: its netns, mount ns and UTS ns."""
        wd = os.fspath(cwd) if cwd is not None else os.getcwd()
        return [
            _tool("nsenter"),
            "-t",
            str(self.holder_pid),
            "--net",
            "--mount",
            "--uts",
            f"--wd={wd}",
            "--",
            *argv,
        ]

    def laptop_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["DBUS_SYSTEM_BUS_ADDRESS"] = self.bus_address
        env["PATH"] = _SEARCH_PATH
        env.update(extra or {})
        return env

    def run_laptop(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        timeout_s: float = 30.0,
        check: bool = False,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` on the laptop to completion; env is added to the laptop's environment."""
        return self._run(
            self.laptop_argv(argv, cwd=cwd), self.laptop_env(env), input, timeout_s, check
        )

    def run_hotel(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        timeout_s: float = 30.0,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "PATH": _SEARCH_PATH, **(env or {})}
        return self._run(self.hotel_argv(argv), full_env, input, timeout_s, check)

    def _run(
        self,
        argv: list[str],
        env: Mapping[str, str],
        input: str | None,
        timeout_s: float,
        check: bool,
    ) -> subprocess.CompletedProcess[str]:
        # A timeout kills the child by its PID (subprocess.run does that) and raises.
        res = subprocess.run(
            argv,
            env=dict(env),
            input=input,
            capture_output=True,
            text=True,
            timeout=min(timeout_s, max(self.remaining_s(), 1.0)),
            check=False,
        )
        if check and res.returncode != 0:
            raise LabError(
                f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()[-2000:]}"
            )
        return res

    def spawn_laptop(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> LabProcess:
        """Start a long-running process on the laptop; stdout+stderr go to its log file.

        down() kills it if it is still running; so does the watchdog at the lab's deadline.
        """
        return self._spawn(self.laptop_argv(argv, cwd=cwd), self.laptop_env(env), name or argv[0])

    def spawn_hotel(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, name: str | None = None
    ) -> LabProcess:
        full_env = {**os.environ, "PATH": _SEARCH_PATH, **(env or {})}
        return self._spawn(self.hotel_argv(argv), full_env, name or argv[0])

    def _spawn(
        self, argv: list[str], env: Mapping[str, str], name: str, log_path: Path | None = None
    ) -> LabProcess:
        if self._state != "up":
            raise LabError("the lab is not up")
        self._spawned += 1
        if log_path is None:
            log_path = self.run_dir / "logs" / f"{self._spawned:02d}-{Path(name).name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 (kept open for the process's life)
        self._logs.append(log)
        popen = subprocess.Popen(
            argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        return self._track(LabProcess(name, popen, log_path))

    def write_laptop_file(self, path: str, text: str, *, mode: int = 0o644) -> None:
        """Write a file as the laptop sees it (e.g. under its /etc overlay)."""
        self.run_laptop(
            [
                "sh",
                "-c",
                'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
                "sh",
                path,
                f"{mode:o}",
            ],
            input=text,
            check=True,
        )

    def reload_bus(self) -> None:
        """Make the private bus re-read its policy (after adding files to bus_policy_dir)."""
        for proc in self._procs:
            if proc.name == "dbus-daemon" and proc.alive():
                proc.send_signal(signal.SIGHUP)

    # --- building -----------------------------------------------------------------------------

    def _make_netns(self) -> None:
        for ns in (self.hotel_ns, self.laptop_ns):
            self._ip("netns", "add", ns)
            self._record["netns_inodes"].append(_netns_inode(ns))
            self._write_record()
        self._ip(
            "link", "add", HOTEL_IF, "type", "veth", "peer", "name", LAPTOP_IF,
            "netns", self.laptop_ns, ns=self.hotel_ns,
        )  # fmt: skip
        self._ip("link", "set", "lo", "up", ns=self.hotel_ns)
        self._ip("addr", "add", f"{PUBLIC_DNS}/32", "dev", "lo", ns=self.hotel_ns)
        self._ip("addr", "add", f"{HOTEL_IP}/{PREFIX_LEN}", "dev", HOTEL_IF, ns=self.hotel_ns)
        if self.offlink_portal:
            self._ip("addr", "add", f"{OFFLINK_PORTAL_IP}/32", "dev", "lo", ns=self.hotel_ns)
        if self.dns_after_login:
            self._ip("addr", "add", f"{INTERNET_IP}/32", "dev", "lo", ns=self.hotel_ns)
        if self.ipv6 or self.ipv6_only:
            self._ip("addr", "add", f"{HOTEL_IP6}/64", "dev", HOTEL_IF, "nodad", ns=self.hotel_ns)
        self._ip("link", "set", HOTEL_IF, "up", ns=self.hotel_ns)
        self._ip("link", "set", "lo", "up", ns=self.laptop_ns)

    def _make_ca(self) -> tuple[Path, Path]:
        """A throwaway CA and a server certificate for login.hotel.test and 10.77.0.1."""
        d = self.run_dir / "hotel"
        openssl = _tool("openssl")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        # Our own config, so the result does not depend on the host's openssl.cnf.
        (d / "openssl.cnf").write_text(_OPENSSL_CNF)
        steps = [
            [openssl, "req", "-x509", "-config", d / "openssl.cnf", *ec, "-keyout", d / "ca.key",
             "-out", d / "ca.pem", "-days", "2", "-subj", "/CN=Hotel Lab test CA"],
            [openssl, "req", "-new", "-config", d / "openssl.cnf", *ec, "-keyout", d / "server.key",
             "-out", d / "server.csr", "-subj", f"/CN={PORTAL_HOST}"],
            [openssl, "x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.pem",
             "-CAkey", d / "ca.key", "-CAcreateserial", "-out", d / "server.pem", "-days", "2",
             "-extfile", d / "openssl.cnf", "-extensions", "server"],
        ]  # fmt: skip
        for argv in steps:
            res = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
            if res.returncode != 0:
                raise LabError(f"openssl failed: {res.stderr.strip()}")
        self.ca_file = d / "ca.pem"
        return d / "server.pem", d / "server.key"

    def _start_hotel(self) -> None:
        d = self.run_dir / "hotel"
        portal = [
            sys.executable, str(PORTAL_SCRIPT),
            "--listen", HOTEL_IP, "--http-port", "80",
            "--portal-host", PORTAL_HOST, "--portal-ip", HOTEL_IP,
            "--unauth-style", self.unauth_style,
            "--session-seconds", str(self.portal_session_s),
            "--lifetime", f"{self.lifetime_s + 30:.0f}",
            "--control-socket", str(self.control_socket),
            "--state-file", str(d / "portal-state.json"),
            "--ready-file", str(d / "portal.ready"),
        ]  # fmt: skip
        if self.https:
            cert, key = self._make_ca()
            portal += ["--https-port", "443", "--cert", str(cert), "--key", str(key)]
        if self.dns_mode == "blocked":
            portal += ["--blackhole-dns", PUBLIC_DNS, "--blackhole-mode", self.blackhole_mode]
        if self.dns_after_login:
            portal += ["--dns-after-login", INTERNET_IP, "--also-listen", INTERNET_IP]
        if self.offlink_portal:
            portal += ["--also-listen", OFFLINK_PORTAL_IP]
        if self.ipv6 or self.ipv6_only:
            portal += ["--also-listen", HOTEL_IP6]
        if self.partner_resource:
            portal += ["--partner-host", PARTNER_HOST]
        if not self.captive:
            portal.append("--open-network")
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        proc = self._spawn(self.hotel_argv(portal), env, "hotel_portal", self.portal_log)
        conf = d / "dnsmasq.conf"
        conf.write_text(
            dnsmasq_conf(
                dns_mode=self.dns_mode,
                api_uri=self.api_uri,
                leases=d / "dnsmasq.leases",
                pid_file=d / "dnsmasq.pid",
                portal_address=self.portal_address,
                catch_all=self.portal_address if self.offlink_hijack else HOTEL_IP,
                partner=self.partner_resource,
                ipv6=self.ipv6,
                ipv6_only=self.ipv6_only,
            )
        )
        dnsmasq = self._spawn(
            self.hotel_argv(
                [_tool("dnsmasq"), "--keep-in-foreground", f"--conf-file={conf}",
                 f"--log-facility={self.dnsmasq_log}"]
            ),
            os.environ,
            "dnsmasq",
            d / "dnsmasq.out",
        )  # fmt: skip
        self._wait(lambda: (d / "portal.ready").exists(), "the hotel portal", proc)
        self._wait(lambda: _listening(dnsmasq.pid, "udp", HOTEL_IP, 53), "hotel dnsmasq", dnsmasq)
        self.timings["hotel_s"] = time.monotonic() - (self._deadline - self.lifetime_s)

    def _unpack(self, package: str) -> None:
        """Lay an unpacked package over the laptop's /usr, /etc and /var/lib (upper layers)."""
        root, why = unpacked_package(package)
        if root is None:
            raise LabError(why)
        laptop = self.run_dir / "laptop"
        # Debian 12 merged /usr: /sbin and /lib are /usr's.
        layers = {"usr": "usr-upper", "sbin": "usr-upper/sbin", "lib": "usr-upper/lib",
                  "etc": "etc-upper", "var/lib": "var-lib-upper"}  # fmt: skip
        (laptop / "usr-upper").mkdir(exist_ok=True)
        (laptop / "var-lib-upper").mkdir(exist_ok=True)
        for part, upper in layers.items():
            if (root / part).is_dir():
                shutil.copytree(root / part, laptop / upper, symlinks=True, dirs_exist_ok=True)

    def _start_laptop(self) -> None:
        upper = self.run_dir / "laptop" / "etc-upper"
        if self.nm:
            # NM writes the real one; until then nothing resolves (glibc tries 127.0.0.1).
            resolv = "# written by the laptop's NetworkManager once it connects\n"
        elif self.bare:
            resolv = "# written by whatever configures the network\n"
        elif self.ipv6_only:
            # Nothing here turns the RA's RDNSS into a nameserver line (no rdnssd).
            resolv = "# the network has no IPv4; its DNS comes by router advertisement\n"
        else:
            ns = PUBLIC_DNS if self.dns_mode == "blocked" else HOTEL_IP
            resolv = f"nameserver {ns}\nsearch {HOTEL_DOMAIN}\n"
        if self.nm and self.nm_rc_manager == "symlink":
            # As distributions ship it for this mode: a link to NM's own file.
            (upper / "resolv.conf").symlink_to("/run/NetworkManager/resolv.conf")
        else:
            (upper / "resolv.conf").write_text(resolv)
        for package in self.packages:
            self._unpack(package)
        if "resolvconf" in self.packages:
            # What Debian's resolvconf does when installed on a fresh system (postinst) and at
            # boot (resolvconf.service): /etc/resolv.conf becomes a link to its dynamic file,
            # an empty tail (no earlier resolv.conf kept as "original"), updates enabled.
            (upper / "resolv.conf").unlink()
            (upper / "resolv.conf").symlink_to("../run/resolvconf/resolv.conf")
            (upper / "resolvconf" / "resolv.conf.d" / "tail").write_text("")
            # Only the package's own update hooks: others on the host (unbound's, which fails
            # when no unbound runs) are hidden by overlayfs whiteouts (0/0 character devices).
            hooks = Path("/etc/resolvconf/update.d")
            for hook in sorted(hooks.iterdir()) if hooks.is_dir() else ():
                if not (upper / "resolvconf" / "update.d" / hook.name).exists():
                    os.mknod(upper / "resolvconf" / "update.d" / hook.name, stat.S_IFCHR, 0)
            run = self.run_dir / "laptop" / "run" / "resolvconf"
            (run / "interface").mkdir(parents=True)
            (run / "enable-updates").write_text("")
        if self.dhcp_client == "dhclient":
            # NM merges this into the dhclient config it writes; option 114 is RFC 3679's
            # "default-url" to dhclient, and NM then shows it in Dhcp4Config as default_url.
            (upper / "dhcp" / f"dhclient-{LAPTOP_IF}.conf").write_text(
                "also request default-url;\n"
            )
        holder_argv = [
            _tool("nsenter"), f"--net=/run/netns/{self.laptop_ns}",
            _tool("unshare"), "--mount", "--uts", "--propagation", "private",
            "sh", "-c", _HOLDER_SCRIPT, "holder", str(self.run_dir), f"{self.lifetime_s + 30:.0f}",
        ]  # fmt: skip
        if self.hostname_in_hosts:
            hosts = self.run_dir / "laptop" / "hosts"
            hosts.write_text(Path("/etc/hosts").read_text() + "127.0.1.1\tlaptop\n")
            holder_argv.append(str(hosts))
        self._holder = self._spawn(holder_argv, os.environ, "holder")
        self._wait(
            lambda: (self.run_dir / "laptop" / "holder.ready").exists(),
            "the laptop's mount namespace",
            self._holder,
        )
        self._record["mntns_inodes"].append(os.stat(f"/proc/{self.holder_pid}/ns/mnt").st_ino)
        self._write_record()
        self._start_bus()
        if self.nm:
            self._write_nm_config()
            self.start_nm()
        elif self.bare:
            self._ip("link", "set", LAPTOP_IF, "up", ns=self.laptop_ns)
        elif self.ipv6_only:
            # The kernel takes the hotel's RA: SLAAC address, default route, and RDNSS passed
            # to userspace (RTM_NEWNDUSEROPT). Nothing writes resolv.conf.
            self._ip("link", "set", LAPTOP_IF, "up", ns=self.laptop_ns)
        else:
            self._ip(
                "addr",
                "add",
                f"{STATIC_LAPTOP_IP}/{PREFIX_LEN}",
                "dev",
                LAPTOP_IF,
                ns=self.laptop_ns,
            )
            self._ip("link", "set", LAPTOP_IF, "up", ns=self.laptop_ns)
            self._ip("route", "add", "default", "via", HOTEL_IP, ns=self.laptop_ns)
            if self.ipv6:
                self._ip(
                    "addr", "add", f"{STATIC_LAPTOP_IP6}/64", "dev", LAPTOP_IF, "nodad",
                    ns=self.laptop_ns,
                )  # fmt: skip
                self._ip("-6", "route", "add", "default", "via", HOTEL_IP6, ns=self.laptop_ns)
        if self.routing_vpn:
            self._add_vpn()
        if self.policy_vpn:
            self._add_policy_vpn()
        if self.venue_bridge:
            self._add_venue_bridge()

    def _add_vpn(self) -> None:
        """A VPN that captures every off-link destination by routes more specific than the
        default (WireGuard's AllowedIPs split, OpenVPN's def1), and delivers nothing."""
        ns = self.laptop_ns
        self._ip("link", "add", VPN_IF, "type", "veth", "peer", "name", VPN_FAR_IF, ns=ns)
        self._ip("addr", "add", f"{VPN_IP}/30", "dev", VPN_IF, ns=ns)
        self._ip("link", "set", VPN_FAR_IF, "up", ns=ns)
        self._ip("link", "set", VPN_IF, "up", ns=ns)
        # A fixed neighbour: frames go out at once (no ARP wait) to a MAC nobody has.
        self._ip(
            "neigh", "replace", VPN_GATEWAY, "lladdr", VPN_GATEWAY_MAC, "dev", VPN_IF,
            "nud", "permanent", ns=ns,
        )  # fmt: skip
        for half in ("0.0.0.0/1", "128.0.0.0/1"):
            self._ip("route", "add", half, "via", VPN_GATEWAY, "dev", VPN_IF, ns=ns)

    def _add_policy_vpn(self) -> None:
        """wg-quick's routing for AllowedIPs = 0.0.0.0/0 (its `add_default`), on a tun device."""
        ns = self.laptop_ns
        self._ip("tuntap", "add", "dev", POLICY_VPN_IF, "mode", "tun", ns=ns)
        self._ip("addr", "add", f"{POLICY_VPN_IP}/32", "dev", POLICY_VPN_IF, ns=ns)
        self._ip("link", "set", POLICY_VPN_IF, "up", ns=ns)
        self._ip("route", "add", "default", "dev", POLICY_VPN_IF, "table", WG_TABLE, ns=ns)
        self._ip("rule", "add", "not", "fwmark", WG_FWMARK, "table", WG_TABLE, ns=ns)
        self._ip("rule", "add", "table", "main", "suppress_prefixlength", "0", ns=ns)

    def _add_venue_bridge(self) -> None:
        ns = self.laptop_ns
        self._ip("link", "add", self.venue_bridge, "type", "bridge", ns=ns)
        self._ip("addr", "add", f"{BRIDGE_IP}/{PREFIX_LEN}", "dev", self.venue_bridge, ns=ns)
        self._ip("link", "set", self.venue_bridge, "up", ns=ns)

    def _start_bus(self) -> None:
        for f in self.bus_policy_files:
            shutil.copy(f, self.bus_policy_dir / f.name)
        conf = self.run_dir / "dbus" / "system.conf"
        conf.write_text(_BUS_CONFIG.format(socket=self.bus_socket, policy_dir=self.bus_policy_dir))
        bus = self._spawn(
            self.laptop_argv(
                [_tool("dbus-daemon"), "--nofork", "--nopidfile", f"--config-file={conf}"],
                cwd="/",
            ),
            os.environ,
            "dbus-daemon",
        )
        self._wait(lambda: _connectable(self.bus_socket), "the laptop's system bus", bus)
        # Clients running as other users (the daemon's own) must reach the socket too.
        self.bus_socket.chmod(0o666)

    def _write_nm_config(self) -> None:
        nmd = self.run_dir / "nm"
        (nmd / "NetworkManager.conf").write_text(
            nm_conf(
                dhcp_client=self.dhcp_client,
                nm_dns=self.nm_dns,
                keyfile_dir=nmd / "system-connections",
                check_interval_s=self.nm_check_interval_s,
                check=self.nm_check,
                extra=self.nm_extra_conf,
                rc_manager=self.nm_rc_manager,
            )
        )
        profile = nmd / "system-connections" / f"{PROFILE_ID}.nmconnection"
        profile.write_text(
            nm_profile(dns_mode=self.dns_mode, ipv6_only=self.ipv6_only, cloned_mac=self.cloned_mac)
        )
        # NM ignores keyfiles that others can read.
        profile.chmod(0o600)

    # --- NetworkManager -----------------------------------------------------------------------

    def start_nm(self, *, wait: bool = True) -> LabProcess:
        """Start NetworkManager on the laptop; by default wait until lap0 is activated."""
        if not self.nm:
            raise LabError("this lab has no NetworkManager (nm=False)")
        if self.nm_pid is not None:
            raise LabError("NetworkManager is already running")
        # A leftover address makes a new NM "assume" the link: no DHCP, profile ignored.
        self._ip("addr", "flush", "dev", LAPTOP_IF, ns=self.laptop_ns)
        nmd = self.run_dir / "nm"
        argv = [
            _tool("NetworkManager"),
            # --debug logs to stderr; --no-daemon would log to a syslog that is not there.
            "--debug",
            f"--config={nmd / 'NetworkManager.conf'}",
            f"--config-dir={nmd / 'conf.d'}",
            f"--system-config-dir={nmd / 'conf.d'}",
            f"--intern-config={nmd / 'intern.conf'}",
            f"--state-file={nmd / 'NetworkManager.state'}",
            "--pid-file=/run/NetworkManager/NetworkManager.pid",
            "--log-level=DEBUG",
            "--log-domains=DEFAULT,DHCP4,CONCHECK,DEVICE,DNS,CORE",
        ]
        with open(self.nm_log, "ab") as f:
            f.write(f"=== lab: NetworkManager start at {time.time():.3f}\n".encode())
        t0 = time.monotonic()
        self._nm = self._spawn(
            self.laptop_argv(argv, cwd="/"), self.laptop_env(), "NetworkManager", self.nm_log
        )
        if wait:
            self.wait_nm_activated()
            self.timings["nm_activated_s"] = time.monotonic() - t0
        return self._nm

    def stop_nm(self, timeout_s: float = 10.0) -> None:
        """Stop NetworkManager (SIGTERM, then SIGKILL) and what it started (dnsmasq, dhclient)."""
        nm = self._nm
        if nm is None or not nm.alive():
            return
        children = _descendants(nm.pid)
        nm.stop(timeout_s)
        # NM's own dnsmasq outlives NM; dhclient normally exits with it.
        for pid in children:
            if _alive(pid):
                _kill(pid, signal.SIGKILL)
        self._nm = None

    def restart_nm(self, *, wait: bool = True) -> LabProcess:
        self.stop_nm()
        return self.start_nm(wait=wait)

    def nmcli(self, *args: str, check: bool = True) -> str:
        """nmcli's terse output, talking to the laptop's NetworkManager over the private bus."""
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus_address, "LC_ALL": "C"}
        res = subprocess.run(
            [_tool("nmcli"), "-t", *args], env=env, capture_output=True, text=True, timeout=15
        )
        if check and res.returncode != 0:
            raise LabError(f"nmcli {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout.strip()

    def nm_general(self) -> dict[str, str]:
        """{"state": ..., "connectivity": ...} as nmcli words (e.g. "portal", "full")."""
        out = self.nmcli("-f", "STATE,CONNECTIVITY", "general")
        state, _, connectivity = out.rpartition(":")
        return {"state": state, "connectivity": connectivity}

    def wait_nm_activated(self, timeout_s: float = 30.0) -> None:
        def activated() -> bool:
            out = self.nmcli("-g", "GENERAL.STATE", "device", "show", LAPTOP_IF, check=False)
            return out.startswith("100")

        self._wait(activated, f"NetworkManager to activate {LAPTOP_IF}", self._nm, timeout_s)

    def wait_connectivity(self, word: str, timeout_s: float = 30.0) -> None:
        """Wait until NM reports this connectivity ("portal", "limited", "full", "none")."""
        self._wait(
            lambda: self.nm_general()["connectivity"] == word,
            f"NetworkManager connectivity {word!r}",
            self._nm,
            timeout_s,
        )

    # --- the laptop's address and the portal --------------------------------------------------

    def laptop_ip(self) -> str | None:
        """lap0's IPv4 address (its global IPv6 address when ipv6_only), or None before it has
        one."""
        family, word = ("-6", "inet6") if self.ipv6_only else ("-4", "inet")
        res = subprocess.run(
            [_tool("ip"), "-n", self.laptop_ns, family, "-o", "addr", "show", "dev", LAPTOP_IF,
             "scope", "global"],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        for line in res.stdout.splitlines():
            fields = line.split()
            if word in fields:
                return fields[fields.index(word) + 1].split("/")[0]
        return None

    def send_ra(self, *, captive_portal: str, lifetime_s: int = 1800) -> None:
        """Send one router advertisement from the hotel's router (hotel0's link-local address,
        as dnsmasq's) to every node, carrying the RFC 8910 option 37 with `captive_portal`, a
        router lifetime of `lifetime_s` and the RDNSS option (RFC 8106) naming fd77::1."""
        self.run_hotel([sys.executable, "-c", _SEND_RA, HOTEL_IF, captive_portal,
                        str(lifetime_s), HOTEL_IP6], check=True)  # fmt: skip

    def _control(self, path: str) -> dict[str, Any]:
        conn = _UnixHTTPConnection(str(self.control_socket), timeout_s=10)
        try:
            conn.request("POST", path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise LabError(f"portal control {path}: {resp.status} {body!r}")
        data: dict[str, Any] = json.loads(body)
        return data

    def _client_ip(self, ip: str | None) -> str:
        ip = ip or self.laptop_ip()
        if not ip:
            raise LabError("the laptop has no address yet; pass ip=")
        return ip

    def login(self, ip: str | None = None, *, session_s: float | None = None) -> dict[str, Any]:
        """Sign `ip` (default: the laptop's address) in at the portal, for `session_s` seconds
        (default: the lab's ``portal_session_s``); returns the portal's state."""
        query = f"ip={self._client_ip(ip)}"
        if session_s is not None:
            query += f"&seconds={session_s}"
        return self._control(f"/__lab/login?{query}")

    def logout(self, ip: str | None = None) -> dict[str, Any]:
        return self._control(f"/__lab/logout?ip={self._client_ip(ip)}")

    def reset_portal(self) -> dict[str, Any]:
        return self._control("/__lab/reset")

    def state(self) -> dict[str, Any]:
        """The portal's view: logged_in, recent requests, blackhole_dns_queries, URLs."""
        return self._control("/__lab/state")

    # --- helpers ------------------------------------------------------------------------------

    def _wait(
        self,
        ready: Callable[[], bool],
        what: str,
        proc: LabProcess | None,
        timeout_s: float = 15.0,
    ) -> None:
        """Poll `ready()` until true; fail early when `proc` exits. Not a timing assertion:
        the timeout only bounds a hang."""
        end = time.monotonic() + min(timeout_s, max(self.remaining_s(), 0.1))
        delay = 0.005
        while True:
            if ready():
                return
            if proc is not None and not proc.alive():
                raise LabError(f"waiting for {what}: {proc.name} exited {proc.poll()}")
            if time.monotonic() > end:
                raise LabError(f"timed out waiting for {what}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _log_tails(self) -> str:
        parts = []
        for proc in self._procs:
            text = proc.read_log()
            if text:
                parts.append(f"--- {proc.name} ({proc.log_path}):\n{text[-1500:]}")
        return "\n".join(parts)


def _connectable(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _listening(pid: int, proto: str, addr: str, port: int) -> bool:
    """True when a socket on addr:port exists in `pid`'s network namespace (/proc/PID/net)."""
    packed = socket.inet_aton(addr)
    want = f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"
    try:
        table = Path(f"/proc/{pid}/net/{proto}").read_text()
    except OSError:
        return False
    return any(line.split()[1] == want for line in table.splitlines()[1:] if line.strip())


# --- the watchdog ------------------------------------------------------------------------------


def _reap_main(argv: list[str]) -> int:
    """Wait for the deadline or for the watched process to die, then tear the lab down."""
    import argparse

    p = argparse.ArgumentParser(description="Lab watchdog (started by Lab.up()).")
    p.add_argument("--reap", required=True, help="the lab's record (lab.json)")
    p.add_argument("--watch", type=int, required=True, help="PID of the process that owns the lab")
    p.add_argument("--watch-start", default="", help="its start time, against PID reuse")
    args = p.parse_args(argv)
    record_path = Path(args.reap)
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return 0
    deadline = float(record["deadline_unix"])
    while True:
        if not record_path.exists():
            return 0  # down() already removed everything
        owner_gone = not _alive(args.watch) or (
            args.watch_start and _start_time(args.watch) != args.watch_start
        )
        if owner_gone or time.time() >= deadline:
            break
        time.sleep(0.25)
    try:
        # Re-read: the record gained PIDs since the watchdog started.
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        pass
    why = "deadline passed" if time.time() >= deadline else "owner exited"
    print(f"lab watchdog: {why}, tearing down {record.get('run_dir')}", flush=True)
    teardown(record)
    return 0


def _shell_main(argv: list[str]) -> int:
    """Bring a lab up, run a command (default: a shell) on the laptop, then tear it down."""
    import argparse

    p = argparse.ArgumentParser(
        prog="lab.py shell",
        description="Build a lab, run COMMAND on the laptop (default: $SHELL), then remove it.",
    )
    p.add_argument("--dns-mode", choices=("hijack", "strict", "blocked"), default="hijack")
    p.add_argument("--dhcp-client", choices=("internal", "dhclient"), default="internal")
    p.add_argument("--https", action="store_true")
    p.add_argument("--no-nm", action="store_true", help="static address, no NetworkManager")
    p.add_argument("--nm-check", action="store_true", help="NetworkManager's connectivity check on")
    p.add_argument("--routing-vpn", action="store_true", help="a VPN that captures 0/1, 128/1")
    p.add_argument("--policy-vpn", action="store_true", help="wg-quick's rules on a tun wg0")
    p.add_argument("--venue-bridge", default="", metavar="NAME", help="a bridge on the subnet")
    p.add_argument("--offlink-portal", action="store_true", help="portal at 203.0.113.80 too")
    p.add_argument("--partner", action="store_true", help="the sign-in page loads a CDN script")
    p.add_argument("--ipv6", action="store_true", help="IPv6 on the hotel link (with --no-nm)")
    p.add_argument("--ipv6-only", action="store_true", help="an IPv6-only venue (RA, DHCPv6)")
    p.add_argument("--cloned-mac", default="", help="the profile's ethernet.cloned-mac-address")
    p.add_argument("--lifetime", type=float, default=3600.0, help="seconds (default 3600)")
    p.add_argument("command", nargs="*", help="command to run on the laptop")
    args = p.parse_args(argv)
    reason = unavailable_reason(
        nm=not args.no_nm, dhclient=args.dhcp_client == "dhclient", https=args.https
    )
    if reason:
        print(f"lab.py: error: {reason}", file=sys.stderr)
        return 1
    with Lab(
        dns_mode=args.dns_mode,
        dhcp_client=args.dhcp_client,
        https=args.https,
        nm=not args.no_nm,
        nm_check=args.nm_check,
        routing_vpn=args.routing_vpn,
        policy_vpn=args.policy_vpn,
        venue_bridge=args.venue_bridge,
        offlink_portal=args.offlink_portal,
        partner_resource=args.partner,
        ipv6=args.ipv6,
        ipv6_only=args.ipv6_only,
        cloned_mac=args.cloned_mac,
        lifetime_s=args.lifetime,
    ) as lab:
        print(f"lab {lab.prefix}: run dir {lab.run_dir}, up in {lab.timings['up_s']:.2f} s")
        print(f"  export DBUS_SYSTEM_BUS_ADDRESS={lab.bus_address}")
        print(f"  API {lab.api_uri}" + (f", CA {lab.ca_file}" if lab.ca_file else ""))
        print(f"  NM log {lab.nm_log}, portal log {lab.portal_log}")
        print(f"  log in: curl --unix-socket {lab.control_socket} 'http://lab/__lab/login?ip=...'")
        command = args.command or [os.environ.get("SHELL", "/bin/sh")]
        code = subprocess.call(lab.laptop_argv(command), env=lab.laptop_env())
    return code


if __name__ == "__main__":
    if sys.argv[1:2] == ["shell"]:
        sys.exit(_shell_main(sys.argv[2:]))
    sys.exit(_reap_main(sys.argv[1:]))
