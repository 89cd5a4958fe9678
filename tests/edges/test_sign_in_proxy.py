"""The sign-in proxy over real sockets.

On loopback (no root): the kernel's answer about who owns a connection, the SOCKS5 and HTTP
CONNECT handshakes with refusals, hostile and slow clients, the connection bound, names
resolved by a real dnsmasq standing in for the venue's DNS, overrides first, the "online"
page; as root, a client of another uid (curl as nobody) is refused.

In the lab without NetworkManager (root): a routing-based VPN captures every off-link
destination and the user's resolver is blocked, yet curl reaches the sign-in page and its
third-party script by name through the proxy (SOCKS5 and HTTP CONNECT), over IPv4 and IPv6,
with the VPN's routes in the main table (0/1 + 128/1) and by policy routing (wg-quick's fwmark
rule and table).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from portal.core import peer_uid
from portal.core.report import OverrideView
from portal.edges.sign_in_proxy import Limits, SignInProxy, device_option, peer_uid_of
from portal.errors import PortalError
from tests.conftest import need
from tests.lab.lab import Lab, LabProcess
from tests.lab.marks import LabFactory, requires_static_lab
from tests.support.dns import Dnsmasq, dnsmasq
from tests.support.procs import wait_until

pytest_plugins = ["tests.lab.fixtures"]

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "sign_in_proxy_driver.py"
VENUE_RECORDS = {"venue-only.test": "192.0.2.10"}  # TEST-NET-1: nothing answers there
FAST = Limits(handshake_timeout_s=2.0, dns_timeout_s=2.0, connect_timeout_s=0.5)


@pytest.fixture
def venue_dns() -> Iterator[Dnsmasq]:
    need("dnsmasq")
    with dnsmasq(VENUE_RECORDS) as d:
        yield d


@contextlib.asynccontextmanager
async def running(
    *,
    venue_dns: tuple[str, ...] = (),
    overrides: tuple[OverrideView, ...] = (),
    limits: Limits = FAST,
) -> AsyncIterator[SignInProxy]:
    proxy = SignInProxy(
        interface="lo", venue_dns=venue_dns, overrides=overrides, uid=os.getuid(), limits=limits
    )
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def opened(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def socks_connect(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Greeting (no auth), then `request`; returns (method reply, everything after)."""
    reader, writer = await opened(port)
    try:
        writer.write(b"\x05\x01\x00")
        method = await asyncio.wait_for(reader.readexactly(2), 5)
        writer.write(request)
        rest = await asyncio.wait_for(reader.read(1024), 10)
        return method, rest
    finally:
        writer.close()


def by_name(name: str, port: int = 80, command: int = 1) -> bytes:
    raw = name.encode()
    return bytes((5, command, 0, 3, len(raw))) + raw + port.to_bytes(2, "big")


async def until_closed(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bytes:
    """Everything the proxy sends until it closes (bounded)."""
    got = b""
    async with asyncio.timeout(timeout_s):
        while chunk := await reader.read(4096):
            got += chunk
    return got


# --- who is calling -------------------------------------------------------------------------


async def test_the_kernel_names_the_uid_of_a_loopback_client() -> None:
    async with running() as proxy:
        reader, writer = await opened(proxy.port)
        client = writer.get_extra_info("sockname")[:2]
        server = writer.get_extra_info("peername")[:2]
        assert peer_uid_of(client, server).uid == os.getuid()
        # The same answer from /proc/net/tcp (the fallback where sock_diag is not allowed).
        text = await asyncio.to_thread(Path("/proc/net/tcp").read_text)
        assert peer_uid.match_proc_net_tcp(text, client, server, byteorder=sys.byteorder).uid == (
            os.getuid()
        )
        # No such connection: no uid (a closed client must not pass).
        assert peer_uid_of(("127.0.0.1", 1), server).uid is None
        writer.close()


def test_a_client_that_closed_first_is_nobody_not_root() -> None:
    """A client that closes before the proxy looks leaves only its time-wait remains, which
    the kernel reports with uid 0: that is "closed", in both places the proxy looks."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client_sock = socket.create_connection(listener.getsockname(), timeout=5)
        accepted, _ = listener.accept()
        with accepted:
            client = client_sock.getsockname()[:2]
            server = listener.getsockname()[:2]
            assert peer_uid_of(client, server).uid == os.getuid()
            client_sock.close()
            wait_until(
                "the kernel reports it closed", lambda: peer_uid_of(client, server).closed, 5
            )
            assert peer_uid_of(client, server).uid is None
            text = Path("/proc/net/tcp").read_text()
            assert peer_uid.match_proc_net_tcp(text, client, server, byteorder=sys.byteorder).closed


async def test_a_dual_stack_client_is_recognised() -> None:
    async with running() as proxy:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            sock.connect(("::ffff:127.0.0.1", proxy.port))
        except OSError as exc:
            pytest.skip(f"no IPv6 sockets here: {exc}")
        with sock:
            client = ("127.0.0.1", sock.getsockname()[1])
            assert peer_uid_of(client, ("127.0.0.1", proxy.port)).uid == os.getuid()


def test_binding_to_an_interface() -> None:
    assert device_option("lo") in (b"lo", None)  # None: a kernel older than 5.7
    with pytest.raises(PortalError, match="not here"):
        device_option("nosuchif0")


@pytest.mark.root
async def test_another_uid_is_refused() -> None:
    if os.geteuid() != 0:
        pytest.skip("runs a client as another user; needs root (CI is root)")
    need("setpriv", "curl")
    async with running() as proxy:
        proc = await asyncio.create_subprocess_exec(
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
            "curl", "-sS", "--max-time", "5", "--socks5-hostname",
            f"127.0.0.1:{proxy.port}", "http://venue-only.test/",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode != 0 and out == b"", err
        assert proxy.refused_peers == 1 and proxy.served == 0
        # The owner still gets in.
        method, _ = await socks_connect(proxy.port, by_name("venue-only.test"))
        assert method == b"\x05\x00"


# --- SOCKS5 ---------------------------------------------------------------------------------


async def test_socks_refusals() -> None:
    async with running() as proxy:
        # A loopback destination: the proxy is no way into the laptop itself.
        method, reply = await socks_connect(proxy.port, b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50")
        assert method == b"\x05\x00" and reply[:2] == b"\x05\x02" and len(reply) == 10
        _, reply = await socks_connect(proxy.port, by_name("a.test", command=2))  # BIND
        assert reply[:2] == b"\x05\x07"
        _, reply = await socks_connect(proxy.port, b"\x05\x01\x00\x09\x00\x50")
        assert reply[:2] == b"\x05\x08"
        # Username/password only: "no acceptable methods", then closed.
        reader, writer = await opened(proxy.port)
        writer.write(b"\x05\x01\x02")
        assert await until_closed(reader) == b"\x05\xff"
        writer.close()
        assert proxy.served == 0


@pytest.mark.parametrize(
    "garbage", [b"\x16\x03\x01\x02\x00", b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", b"\x05\x00"]
)
async def test_garbage_is_closed_on_without_a_reply(garbage: bytes) -> None:
    async with running() as proxy:
        reader, writer = await opened(proxy.port)
        writer.write(garbage)
        assert await until_closed(reader) == b""
        writer.close()


async def test_a_slow_client_is_closed_after_the_handshake_bound() -> None:
    async with running(limits=Limits(handshake_timeout_s=0.3)) as proxy:
        reader, writer = await opened(proxy.port)
        writer.write(b"\x05")  # half a greeting, then nothing
        started = time.monotonic()
        assert await until_closed(reader, timeout_s=10) == b""
        print(f"\nclosed after {time.monotonic() - started:.2f} s")
        writer.close()


async def test_connections_beyond_the_bound_are_closed_at_once() -> None:
    limits = Limits(max_connections=2, handshake_timeout_s=30)
    async with running(limits=limits) as proxy:
        held = [await opened(proxy.port) for _ in range(2)]
        async with asyncio.timeout(5):
            while len(proxy._handlers) < 2:  # noqa: ASYNC110 (state inside the proxy)
                await asyncio.sleep(0.01)
        reader, writer = await opened(proxy.port)
        assert await until_closed(reader, timeout_s=5) == b""  # long before 30 s
        writer.close()
        # The held ones are still served.
        r, w = held[0]
        w.write(b"\x05\x01\x00")
        assert await asyncio.wait_for(r.readexactly(2), 5) == b"\x05\x00"
        for _, w in held:
            w.close()


# --- names ----------------------------------------------------------------------------------


async def test_names_are_resolved_by_the_venue_dns(venue_dns: Dnsmasq) -> None:
    async with running(venue_dns=(venue_dns.upstream,)) as proxy:
        # Resolved to 192.0.2.10, where nothing answers: the connect bound is what fails.
        _, reply = await socks_connect(proxy.port, by_name("Venue-Only.Test."))
        assert reply[:2] == b"\x05\x06"
        # The venue's DNS does not know it: host unreachable, without trying to connect.
        _, reply = await socks_connect(proxy.port, by_name("elsewhere.test"))
        assert reply[:2] == b"\x05\x04"
    log = venue_dns.log.read_text()
    assert "query[A] venue-only.test" in log and "query[AAAA] venue-only.test" in log


async def test_an_active_override_answers_before_the_venue_dns(venue_dns: Dnsmasq) -> None:
    pin = OverrideView("venue-only.test", ("127.0.0.1",), active=True)
    async with running(venue_dns=(venue_dns.upstream,), overrides=(pin,)) as proxy:
        # The override's loopback address is refused: proof that it, not the venue, answered.
        _, reply = await socks_connect(proxy.port, by_name("venue-only.test"))
        assert reply[:2] == b"\x05\x02"
        proxy.update(venue_dns=(venue_dns.upstream,), overrides=())
        _, reply = await socks_connect(proxy.port, by_name("venue-only.test"))
        assert reply[:2] == b"\x05\x06"


async def test_without_venue_dns_a_name_is_unreachable() -> None:
    async with running() as proxy:
        _, reply = await socks_connect(proxy.port, by_name("login.hotel.test"))
        assert reply[:2] == b"\x05\x04"


# --- HTTP CONNECT and the online page -------------------------------------------------------


async def test_http_proxy_requests() -> None:
    async with running() as proxy:
        for request, status in [
            (b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", b"405"),
            (b"CONNECT 127.0.0.1:80 HTTP/1.1\r\n\r\n", b"403"),
            (b"CONNECT a.test HTTP/1.1\r\n\r\n", b"400"),
            (b"CONNECT login.hotel.test:443 HTTP/1.1\r\n\r\n", b"502"),  # no venue DNS
            (b"NONSENSE\r\n\r\n", b"400"),
        ]:
            reader, writer = await opened(proxy.port)
            writer.write(request)
            answer = await until_closed(reader)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 " + status), (request, answer)


async def test_once_online_the_page_says_so() -> None:
    async with running() as proxy:
        proxy.online = True
        reader, writer = await opened(proxy.port)
        writer.write(b"\x05\x01\x00")
        assert await reader.readexactly(2) == b"\x05\x00"
        writer.write(by_name("login.hotel.test", 80))
        assert (await reader.readexactly(10))[:2] == b"\x05\x00"
        writer.write(b"GET /portal HTTP/1.1\r\nHost: login.hotel.test\r\n\r\n")
        page = await until_closed(reader)
        writer.close()
        assert page.startswith(b"HTTP/1.1 200 OK") and b"You can close this window" in page
        _, reply = await socks_connect(proxy.port, by_name("login.hotel.test", 443))
        assert reply[:2] == b"\x05\x02"
        assert proxy.served == 0


# --- in the lab: past a VPN, by the venue's names ---------------------------------------------


def start_driver(lab: Lab, conf: dict[str, object]) -> tuple[LabProcess, int]:
    proc = lab.spawn_laptop(
        [sys.executable, str(DRIVER), json.dumps(conf)],
        env={"PYTHONPATH": str(REPO)},
        name="sign-in-proxy",
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ports = [line for line in proc.read_log().splitlines() if line.isdigit()]
        if ports:
            return proc, int(ports[0])
        assert proc.alive(), proc.read_log()
        time.sleep(0.02)
    raise AssertionError(f"the proxy never said its port: {proc.read_log()}")


def curl(lab: Lab, *args: str, max_time_s: float = 5) -> subprocess.CompletedProcess[str]:
    return lab.run_laptop(["curl", "-sS", "--max-time", str(max_time_s), *args], timeout_s=20)


def requested(lab: Lab, host: str, path: str, client: str) -> bool:
    return any(
        r["host"] == host and r["path"].startswith(path) and r["client"] == client
        for r in lab.state()["requests"]
    )


@pytest.mark.root
@pytest.mark.lab
@requires_static_lab
def test_proxy_reaches_the_portal_past_a_vpn_by_the_venues_names(
    lab_factory: LabFactory,
) -> None:
    need("curl")
    lab = lab_factory(
        nm=False,
        dns_mode="blocked",
        routing_vpn=True,
        offlink_portal=True,
        partner_resource=True,
        ipv6=True,
    )
    # The scenario is blocked without the proxy: the user's resolver is black-holed, and even
    # with the right address the VPN's routes swallow the connection.
    assert curl(lab, "http://login.hotel.test/portal", max_time_s=2).returncode != 0
    direct = curl(
        lab, "--resolve", "login.hotel.test:80:203.0.113.80", "http://login.hotel.test/",
        max_time_s=2,
    )  # fmt: skip
    assert direct.returncode == 28, direct.stderr  # timed out inside the "VPN"

    proxy, port = start_driver(lab, {"interface": "lap0", "venue_dns": ["10.77.0.1"]})
    socks = f"127.0.0.1:{port}"
    page = curl(lab, "--socks5-hostname", socks, "http://login.hotel.test/portal")
    assert page.returncode == 0, page.stderr + proxy.read_log()
    assert "Welcome to Hotel Lab" in page.stdout and "cdn.venue-partner.test" in page.stdout
    script = curl(lab, "--socks5-hostname", socks, "http://cdn.venue-partner.test/partner.js")
    assert "Wi-Fi by Venue Partner" in script.stdout, script.stderr
    tunnel = curl(lab, "-p", "-x", f"http://{socks}", "http://login.hotel.test/portal")
    assert "Welcome to Hotel Lab" in tunnel.stdout, tunnel.stderr
    # IPv6: a name with only an AAAA record at the venue, and an IPv6 literal.
    v6 = curl(lab, "--socks5-hostname", socks, "-o", "/dev/null", "-w", "%{http_code}",
              "http://v6only.hotel.test/")  # fmt: skip
    assert v6.stdout == "302", v6.stderr + proxy.read_log()
    literal = curl(lab, "--socks5-hostname", socks, "-o", "/dev/null", "-w", "%{http_code}",
                   "http://[fd77::1]/generate_204")  # fmt: skip
    assert literal.stdout == "302", literal.stderr
    assert requested(lab, "login.hotel.test", "/portal", "10.77.0.50")
    assert requested(lab, "cdn.venue-partner.test", "/partner.js", "10.77.0.50")
    assert requested(lab, "v6only.hotel.test", "/", "fd77::50")
    assert requested(lab, "fd77::1", "/generate_204", "fd77::50")
    if shutil.which("setpriv"):
        other = lab.run_laptop(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
             "curl", "-sS", "--max-time", "5", "--socks5-hostname", socks,
             "http://login.hotel.test/portal"],
            timeout_s=20,
        )  # fmt: skip
        assert other.returncode != 0 and "Welcome" not in other.stdout
        assert "refused a connection from uid 65534" in proxy.read_log()
    # The same VPN by policy routing, as wg-quick sets it up: its own table for everything
    # without its fwmark, the main table's default route suppressed. Binding still wins.
    for argv in (
        ["ip", "route", "del", "0.0.0.0/1"],
        ["ip", "route", "del", "128.0.0.0/1"],
        ["ip", "route", "add", "default", "via", "10.200.0.1", "dev", "vpn0", "table", "51820"],
        ["ip", "rule", "add", "not", "fwmark", "0xca6c", "table", "51820"],
        ["ip", "rule", "add", "table", "main", "suppress_prefixlength", "0"],
    ):
        lab.run_laptop(argv, check=True)
    direct = curl(
        lab, "--resolve", "login.hotel.test:80:203.0.113.80", "http://login.hotel.test/",
        max_time_s=2,
    )  # fmt: skip
    assert direct.returncode == 28, direct.stderr
    page = curl(lab, "--socks5-hostname", socks, "http://login.hotel.test/portal")
    assert "Welcome to Hotel Lab" in page.stdout, page.stderr + proxy.read_log()
    proxy.stop()
    assert "served 6" in proxy.read_log(), proxy.read_log()
