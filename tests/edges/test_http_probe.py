"""edges/http_probe.py against real servers on loopback: dnsmasq as the venue's DNS, a small
portal HTTP(S) server, a throwaway CA made with the openssl CLI. httpx.MockTransport only for
HTTP failure shapes a real server cannot produce on demand.

Every server runs on its own random 127.x.y.z address and a kernel-chosen port, is bounded in
time and stopped by PID (dnsmasq) or closed (in-process servers).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.query
import dns.rcode
import httpx
import pytest

from portal.core import session as session_mod
from portal.core.actions import PinPortalHosts, StartProbe, UnpinPortalHosts
from portal.core.detect import (
    DEFAULT_PROBE_SPECS,
    FIREFOX_CANONICAL_BODY,
    NM_DEFAULT_RESPONSE,
    classify,
    classify_all,
)
from portal.core.events import NetworkChanged
from portal.core.expiry import watch_delay_s
from portal.core.model import Connectivity, Network
from portal.core.probe_model import ProbeSpec
from portal.edges import http_probe
from portal.edges.http_probe import (
    MAX_BODY_BYTES,
    fetch_captive_api,
    probe,
    probe_network,
    resolve_via,
)
from tests.support.procs import stop_pid

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
OPENSSL = shutil.which("openssl")
HAVE_DNSMASQ = os.path.exists(DNSMASQ)
needs_dnsmasq = pytest.mark.skipif(
    not HAVE_DNSMASQ, reason="dnsmasq not installed (apt: dnsmasq-base)"
)
HAVE_IPV6 = socket.has_ipv6 and os.path.exists("/proc/net/if_inet6")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")

_used: set[str] = set()


def loopback_ip() -> str:
    """A fresh random 127.x.y.z (all of 127/8 is local on Linux), unique within this run."""
    while True:
        ip = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"
        if ip not in _used:
            _used.add(ip)
            return ip


def free_port(ip: str) -> int:
    """A port free for both UDP and TCP on `ip` (a random 127/8 address is ours alone)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((ip, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((ip, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


# --- the venue's DNS: a real dnsmasq -----------------------------------------------------------


@dataclass
class Dnsmasq:
    ip: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def server(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


def _wait_dns(ip: str, port: int, deadline: float) -> None:
    query = dns.message.make_query("ready.invalid", "A")
    while time.monotonic() < deadline:
        try:
            dns.query.udp(query, ip, port=port, timeout=0.2)
            return
        except Exception:
            time.sleep(0.02)
    raise RuntimeError(f"dnsmasq on {ip}:{port} did not come up")


@pytest.fixture
def dnsmasq() -> Iterator[Callable[..., Dnsmasq]]:
    """Factory: start a dnsmasq answering `records` ({name: address or "" for NXDOMAIN})."""
    started: list[subprocess.Popen[bytes]] = []

    def start(records: dict[str, str | list[str]], *, ipv6: bool = False) -> Dnsmasq:
        ip = "::1" if ipv6 else loopback_ip()
        port = free_port(ip)
        # Bounded even if this test process dies hard: coreutils' timeout ends it after 5
        # minutes, and passes our SIGTERM on to it meanwhile.
        args = [
            *(["timeout", "--kill-after=5", "300"] if shutil.which("timeout") else []),
            DNSMASQ,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            f"--listen-address={ip}",
            f"--port={port}",
            "--pid-file=",
            "--cache-size=0",
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        for name, value in records.items():
            for address in [value] if isinstance(value, str) else value:
                args.append(f"--address=/{name}/{address}")
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(proc)
        try:
            _wait_dns(ip, port, time.monotonic() + 5)
        except RuntimeError:
            proc.terminate()  # SIGTERM reaches dnsmasq through timeout; SIGKILL would not
            _, err = proc.communicate(timeout=10)
            raise RuntimeError(err.decode()) from None
        return Dnsmasq(ip, port, proc)

    yield start
    for proc in started:
        stop_pid(proc)  # SIGTERM reaches dnsmasq through timeout; SIGKILL would not


# --- a small portal HTTP(S) server, in the test's event loop -----------------------------------


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    peer: str


Route = tuple[int, dict[str, str], bytes] | None  # None: accept, read, never answer


@dataclass
class PortalServer:
    ip: str
    port: int
    routes: Callable[[str, dict[str, str]], Route]
    seen: list[Seen] = field(default_factory=list)
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            await self._handle(reader, writer)
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        peer = writer.get_extra_info("peername")[0]
        self.seen.append(Seen(method, target, headers, peer))
        route = self.routes(target, headers)
        if route is None:
            await asyncio.sleep(30)  # the probe gives up long before; teardown closes us
            return
        status, extra, body = route
        out = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
        out += [f"{k}: {v}" for k, v in extra.items()]
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass


@pytest.fixture
async def portal_server() -> AsyncIterator[Callable[..., Awaitable[PortalServer]]]:
    servers: list[PortalServer] = []

    async def start(
        routes: Callable[[str, dict[str, str]], Route], ip: str = "", **kw: object
    ) -> PortalServer:
        ip = ip or loopback_ip()
        srv = PortalServer(ip, 0, routes)
        server = await asyncio.start_server(srv.handle, ip, 0, **kw)  # type: ignore[arg-type]
        srv.server = server
        srv.port = server.sockets[0].getsockname()[1]
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        assert srv.server is not None
        srv.server.close()
        for writer in list(srv.writers):
            writer.close()
    for srv in servers:
        assert srv.server is not None
        await asyncio.wait_for(srv.server.wait_closed(), 5)


def online_routes(target: str, headers: dict[str, str]) -> Route:
    path = target.split("?", 1)[0]
    if path.endswith("/generate_204"):
        return 204, {}, b""
    if path.endswith("/canonical.html"):
        return 200, {"Content-Type": "text/html"}, FIREFOX_CANONICAL_BODY.encode()
    if path.endswith("/check_network_status.txt"):
        return 200, {"X-NetworkManager-Status": "online"}, NM_DEFAULT_RESPONSE.encode()
    return 200, {}, b"simulated internet"


def captive_routes(target: str, headers: dict[str, str]) -> Route:
    return 302, {"Location": f"http://login.hotel.test/portal?orig={target}"}, b""


def spec(url: str, status: int = 204, body: str = "") -> ProbeSpec:
    return ProbeSpec(url, status, body)


# --- real probes -------------------------------------------------------------------------------


@needs_dnsmasq
async def test_online_probe_resolves_through_venue_dns_and_keeps_host(
    dnsmasq: Callable[..., Dnsmasq], portal_server: Callable[..., Awaitable[PortalServer]]
) -> None:
    web = await portal_server(online_routes)
    dns_server = dnsmasq({"check.probe.test": web.ip})
    me = loopback_ip()
    net = Network(id="n1", addresses=(me,), venue_dns=(dns_server.server,))
    url = f"http://check.probe.test:{web.port}/generate_204?x=1"
    got = await probe(net, spec(url), timeout_s=5)
    assert got.error == ""
    assert got.status == 204
    assert got.addresses == (web.ip,)
    assert classify(got, spec(url)).connectivity is Connectivity.ONLINE
    [seen] = web.seen
    assert seen.target == "/generate_204?x=1"
    assert seen.headers["host"] == f"check.probe.test:{web.port}"
    assert seen.peer == me  # left from the network's own address


@needs_dnsmasq
async def test_captive_probe_does_not_follow_redirect(
    dnsmasq: Callable[..., Dnsmasq], portal_server: Callable[..., Awaitable[PortalServer]]
) -> None:
    web = await portal_server(captive_routes)
    dns_server = dnsmasq({"probe.test": web.ip})
    net = Network(id="n1", venue_dns=(dns_server.server,))
    url = f"http://probe.test:{web.port}/generate_204"
    got = await probe(net, spec(url), timeout_s=5)
    assert got.status == 302
    assert got.header("location").startswith("http://login.hotel.test/portal")
    assert len(web.seen) == 1  # the redirect was not followed
    verdict = classify(got, spec(url))
    assert verdict.connectivity is Connectivity.CAPTIVE
    assert verdict.portal_hosts == ("login.hotel.test",)


@needs_dnsmasq
async def test_proxy_from_environment_is_not_used(
    dnsmasq: Callable[..., Dnsmasq],
    portal_server: Callable[..., Awaitable[PortalServer]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    web = await portal_server(online_routes)
    dns_server = dnsmasq({"probe.test": web.ip})
    dead = loopback_ip()
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.setenv(var, f"http://{dead}:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    net = Network(id="n1", venue_dns=(dns_server.server,))
    got = await probe(net, spec(f"http://probe.test:{web.port}/generate_204"), timeout_s=5)
    assert (got.status, got.error) == (204, "")


@needs_dnsmasq
async def test_sign_in_page_body_is_read(
    dnsmasq: Callable[..., Dnsmasq], portal_server: Callable[..., Awaitable[PortalServer]]
) -> None:
    page = b'<html><meta http-equiv="refresh" content="0; url=/portal?x=1&amp;y=2"></html>'

    def routes(target: str, headers: dict[str, str]) -> Route:
        return 200, {"Content-Type": "text/html; charset=utf-8"}, page

    web = await portal_server(routes)
    dns_server = dnsmasq({"probe.test": web.ip})
    net = Network(id="n1", venue_dns=(dns_server.server,))
    url = f"http://probe.test:{web.port}/check_network_status.txt"
    s = spec(url, 200, NM_DEFAULT_RESPONSE)
    got = await probe(net, s, timeout_s=5)
    assert got.body == page.decode()
    verdict = classify(got, s)
    assert verdict.connectivity is Connectivity.CAPTIVE
    assert verdict.portal_url == f"http://probe.test:{web.port}/portal?x=1&y=2"


@needs_dnsmasq
@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 on this machine")
async def test_ipv6_venue_dns(dnsmasq: Callable[..., Dnsmasq]) -> None:
    dns_server = dnsmasq({"login.hotel.test": "10.77.0.1"}, ipv6=True)
    assert dns_server.ip == "::1"
    got = await resolve_via("login.hotel.test", [dns_server.server], timeout_s=5)
    assert got == ["10.77.0.1"]


@needs_dnsmasq
@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 on this machine")
async def test_ipv6_only_probe_host(
    dnsmasq: Callable[..., Dnsmasq], portal_server: Callable[..., Awaitable[PortalServer]]
) -> None:
    web = await portal_server(online_routes, ip="::1")
    dns_server = dnsmasq({"v6only.probe.test": "::1"})
    net = Network(id="n1", interface="lo", addresses=("::1",), venue_dns=(dns_server.server,))
    url = f"http://v6only.probe.test:{web.port}/generate_204"
    got = await probe(net, spec(url), timeout_s=5)
    assert (got.status, got.error, got.addresses) == (204, "", ("::1",))
    assert web.seen[0].headers["host"] == f"v6only.probe.test:{web.port}"


@needs_dnsmasq
@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 on this machine")
async def test_a_network_without_ipv4_probes_over_ipv6_first(
    dnsmasq: Callable[..., Dnsmasq], portal_server: Callable[..., Awaitable[PortalServer]]
) -> None:
    """A NAT64 venue's DNS64 answers A as well as AAAA; with no IPv4 address of our own the A
    is unreachable (here: nothing listens there), so the probe asks for AAAA first. The same
    name on a network with IPv4 still goes to the A record."""
    web = await portal_server(online_routes, ip="::1")
    dns_server = dnsmasq({"dual.probe.test": ["127.0.0.1", "::1"]})
    url = f"http://dual.probe.test:{web.port}/generate_204"
    v6_only = Network(id="n1", interface="lo", addresses=("::1",), venue_dns=(dns_server.server,))
    got = await probe(v6_only, spec(url), timeout_s=5)
    assert (got.status, got.error, got.addresses) == (204, "", ("::1",))
    dual = replace(v6_only, addresses=("127.0.0.1", "::1"))
    got = await probe(dual, spec(url), timeout_s=5)
    assert (got.error, got.addresses) == ("connect-refused", ("127.0.0.1",))


@needs_dnsmasq
async def test_dns_failures_are_data(dnsmasq: Callable[..., Dnsmasq]) -> None:
    dns_server = dnsmasq({"nx.test": "", "only6.test": "fd00::5"})
    net = Network(id="n1", venue_dns=(dns_server.server,))
    nx = await probe(net, spec("http://nx.test/generate_204"), timeout_s=5)
    assert nx.error == "dns-nxdomain"
    refused = await probe(net, spec("http://unknown.test/generate_204"), timeout_s=5)
    assert refused.error == "dns-error"  # dnsmasq without upstream answers REFUSED
    assert classify(refused, spec("http://unknown.test/")).connectivity is Connectivity.LIMITED
    # No usable A answer (dnsmasq says REFUSED for A here): IPv6 is tried; fd00::5 is not
    # reachable from here, but it was resolved.
    only6 = await probe(net, spec("http://only6.test/generate_204"), timeout_s=0.5)
    assert only6.addresses == ("fd00::5",)
    assert only6.status == 0 and only6.error != ""
    nodns = await probe(Network(id="n2"), spec("http://probe.test/"), timeout_s=5)
    assert nodns.error == "no-dns"


async def test_silent_dns_times_out_and_next_server_is_used(
    dnsmasq: Callable[..., Dnsmasq], portal_server: Callable[..., Awaitable[PortalServer]]
) -> None:
    silent_ip = loopback_ip()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((silent_ip, 0))  # receives, never answers
        silent_server = f"{silent_ip}:{silent.getsockname()[1]}"
        net = Network(id="n1", venue_dns=(silent_server,))
        got = await probe(net, spec("http://probe.test/generate_204"), timeout_s=0.4)
        assert got.error == "dns-timeout"
        if HAVE_DNSMASQ:
            web = await portal_server(online_routes)
            good = dnsmasq({"probe.test": web.ip})
            net = Network(id="n1", venue_dns=(silent_server, good.server))
            url = f"http://probe.test:{web.port}/generate_204"
            got = await probe(net, spec(url), timeout_s=1)
            assert (got.status, got.error) == (204, "")


@needs_dnsmasq
async def test_closed_dns_port_falls_through_at_once(
    dnsmasq: Callable[..., Dnsmasq], portal_server: Callable[..., Awaitable[PortalServer]]
) -> None:
    closed_ip = loopback_ip()
    closed = f"{closed_ip}:{free_port(closed_ip)}"  # nothing listens: ICMP port unreachable
    only_closed = await probe(
        Network(id="n1", venue_dns=(closed,)), spec("http://p.test/"), timeout_s=5
    )
    assert only_closed.error == "connect-refused"
    web = await portal_server(online_routes)
    good = dnsmasq({"p.test": web.ip})
    net = Network(id="n1", venue_dns=(closed, good.server))
    got = await probe(net, spec(f"http://p.test:{web.port}/generate_204"), timeout_s=5)
    assert (got.status, got.error) == (204, "")


@needs_dnsmasq
async def test_silent_portal_times_out_but_dns_hijack_is_recognised(
    dnsmasq: Callable[..., Dnsmasq], portal_server: Callable[..., Awaitable[PortalServer]]
) -> None:
    web = await portal_server(lambda target, headers: None)
    # The venue DNS sends everything (a well-known public probe host too) to its portal.
    dns_server = dnsmasq({"#": web.ip})
    net = Network(id="n1", venue_dns=(dns_server.server,))
    url = f"http://connectivitycheck.gstatic.com:{web.port}/generate_204"
    got = await probe(net, spec(url), timeout_s=0.3)
    assert got.error == "timeout"
    assert got.addresses == (web.ip,)
    verdict = classify(got, spec(url))
    assert verdict.connectivity is Connectivity.CAPTIVE
    # A name nobody knows gets only LIMITED from one probe, but with a second name resolving
    # to the same address the round is captive.
    other = f"http://other.probe.test:{web.port}/x"
    got2 = await probe(net, spec(other), timeout_s=0.3)
    assert classify(got2, spec(other)).connectivity is Connectivity.LIMITED
    both = classify_all([(spec(other), got2), (spec(other.replace("other", "more")), got2)])
    assert both.connectivity is Connectivity.LIMITED  # same host twice proves nothing
    got3 = await probe(net, spec(f"http://third.test:{web.port}/y"), timeout_s=0.3)
    both = classify_all([(spec(other), got2), (spec("http://third.test/y"), got3)])
    assert both.connectivity is Connectivity.CAPTIVE


@needs_dnsmasq
async def test_refused_connection(dnsmasq: Callable[..., Dnsmasq]) -> None:
    target = loopback_ip()
    dns_server = dnsmasq({"probe.test": target})
    net = Network(id="n1", venue_dns=(dns_server.server,))
    got = await probe(net, spec(f"http://probe.test:{free_port(target)}/"), timeout_s=5)
    assert got.error == "connect-refused"
    assert got.addresses == (target,)


@needs_dnsmasq
async def test_source_address_not_ours_is_offline(dnsmasq: Callable[..., Dnsmasq]) -> None:
    dns_server = dnsmasq({"probe.test": "127.0.0.1"})
    # 192.0.2.0/24 (TEST-NET-1) is on no interface here: the network's address is gone.
    net = Network(id="n1", addresses=("192.0.2.77/24",), venue_dns=(dns_server.server,))
    got = await probe(net, spec("http://probe.test/"), timeout_s=5)
    assert got.error == "bind-error"
    assert classify(got, spec("http://probe.test/")).connectivity is Connectivity.OFFLINE


@needs_dnsmasq
async def test_interface_binding(
    dnsmasq: Callable[..., Dnsmasq], portal_server: Callable[..., Awaitable[PortalServer]]
) -> None:
    web = await portal_server(online_routes)
    dns_server = dnsmasq({"probe.test": web.ip})
    url = f"http://probe.test:{web.port}/generate_204"
    gone = Network(id="n1", interface="portalnone0", venue_dns=(dns_server.server,))
    got = await probe(gone, spec(url), timeout_s=5)
    assert got.error == "bind-error"
    on_lo = Network(id="n1", interface="lo", venue_dns=(dns_server.server,))
    got = await probe(on_lo, spec(url), timeout_s=5)
    # Bound to lo where the kernel permits (root, or Linux >= 5.7); without permission the
    # probe goes without binding. Either way it reaches the server on lo.
    assert (got.status, got.error) == (204, "")


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: without CAP_NET_RAW an older kernel refuses SO_BINDTODEVICE and the probe "
    "then runs unbound, which this test would mistake for a bug",
)
@needs_dnsmasq
async def test_bound_to_another_interface_cannot_reach_loopback(
    dnsmasq: Callable[..., Dnsmasq], portal_server: Callable[..., Awaitable[PortalServer]]
) -> None:
    """Proves SO_BINDTODEVICE is applied before connecting: bound to a device other than lo,
    neither the DNS query nor the TCP connection can reach a 127/8 address."""
    names = [n for _, n in socket.if_nameindex() if n != "lo"]
    if not names:
        pytest.skip("no non-loopback interface to bind to")
    web = await portal_server(online_routes)
    dns_server = dnsmasq({"probe.test": web.ip})
    elsewhere = Network(id="n1", interface=names[0], venue_dns=(dns_server.server,))
    got = await probe(elsewhere, spec("http://probe.test/"), timeout_s=1)
    assert (got.status, got.error) == (0, "no-route")
    literal = spec(f"http://{web.ip}:{web.port}/generate_204")
    got = await probe(elsewhere, literal, timeout_s=1)
    assert (got.status, got.error) == (0, "no-route")
    assert web.seen == []
    # The same probes on lo get through.
    here = replace(elsewhere, interface="lo")
    got = await probe(here, literal, timeout_s=5)
    assert (got.status, got.error) == (204, "")


# --- MockTransport unit cases ------------------------------------------------------------------


def _literal_net() -> Network:
    return Network(id="n1")  # no DNS needed: the URLs below use IP literals


async def test_mock_request_shape_and_truncated_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"a" * (MAX_BODY_BYTES * 2))

    got = await probe(
        _literal_net(),
        spec("http://192.0.2.1:8080/check?x"),
        timeout_s=5,
        transport=httpx.MockTransport(handler),
    )
    assert got.status == 200
    assert len(got.body) == MAX_BODY_BYTES
    assert got.addresses == ()  # an IP literal was not resolved
    [request] = seen
    assert str(request.url) == "http://192.0.2.1:8080/check?x"
    assert request.headers["host"] == "192.0.2.1:8080"
    assert request.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ConnectError("boom"), "connect-error"),
        (httpx.ConnectTimeout("slow"), "timeout"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ReadError("reset"), "read-error"),
        (httpx.RemoteProtocolError("garbage"), "http-error"),
        (httpx.ConnectError("unreach"), "no-route"),
    ],
)
async def test_mock_transport_failures_are_data(exc: Exception, code: str) -> None:
    if code == "no-route":
        exc.__cause__ = OSError(101, "Network is unreachable")

    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    got = await probe(
        _literal_net(),
        spec("http://192.0.2.1/"),
        timeout_s=5,
        transport=httpx.MockTransport(handler),
    )
    assert (got.status, got.error) == (0, code)


@needs_dnsmasq
async def test_mock_https_connects_to_the_address_with_sni_of_the_name(
    dnsmasq: Callable[..., Dnsmasq],
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"captive": False, "seconds-remaining": 60})

    dns_server = dnsmasq({"api.hotel.test": "10.77.0.1"})
    net = Network(id="n1", venue_dns=(dns_server.server,))
    api = await fetch_captive_api(
        "https://api.hotel.test/api", net, timeout_s=5, transport=httpx.MockTransport(handler)
    )
    assert api.captive is False and api.seconds_remaining == 60
    [request] = seen
    assert request.url.host == "10.77.0.1"
    assert request.headers["host"] == "api.hotel.test"
    assert request.extensions["sni_hostname"] == "api.hotel.test"


async def test_mock_unknown_charset_and_unexpected_errors_are_data() -> None:
    def odd_charset(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"Content-Type": "text/html; charset=x-no-such"}, content=b"<a href=/l>"
        )

    got = await probe(
        _literal_net(),
        spec("http://192.0.2.1/"),
        timeout_s=5,
        transport=httpx.MockTransport(odd_charset),
    )
    assert (got.status, got.body) == (200, "<a href=/l>")

    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug somewhere below")

    got = await probe(
        _literal_net(),
        spec("http://192.0.2.1/"),
        timeout_s=5,
        transport=httpx.MockTransport(broken),
    )
    assert got.error == "internal-error"


async def test_bad_url_is_data() -> None:
    got = await probe(_literal_net(), spec("http:///nohost"), timeout_s=1)
    assert got.error == "bad-url"
    api = await fetch_captive_api("http://insecure.test/api", _literal_net(), timeout_s=1)
    assert api.error == "not-https"


# --- RFC 8908 API over real TLS ----------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if OPENSSL is None:
        pytest.skip("openssl CLI not installed")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([OPENSSL, *args], check=True, capture_output=True, timeout=30, cwd=d)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=portal test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=api.hotel.test")
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:api.hotel.test,DNS:login.hotel.test\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\n"
    )
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    return Pki(d / "ca.pem", d / "srv.pem", d / "srv.key")


def _tls_server_context(pki: Pki) -> object:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    return context


@needs_dnsmasq
@needs_openssl
async def test_captive_api_over_verified_tls(
    dnsmasq: Callable[..., Dnsmasq], portal_server: Callable[..., Awaitable[PortalServer]], pki: Pki
) -> None:
    body = (
        b'{"captive": true, "user-portal-url": "https://api.hotel.test/portal",'
        b' "venue-info-url": "http://insecure.hotel.test/", "seconds-remaining": 300,'
        b' "can-extend-session": true}'
    )

    def routes(target: str, headers: dict[str, str]) -> Route:
        if target == "/captive-portal/api":
            return 200, {"Content-Type": "application/captive+json"}, body
        if target == "/bad":
            return 200, {"Content-Type": "application/captive+json"}, b"{not json"
        return 404, {}, b"no"

    web = await portal_server(routes, ssl=_tls_server_context(pki))
    dns_server = dnsmasq({"api.hotel.test": web.ip, "other.hotel.test": web.ip})
    me = loopback_ip()
    net = Network(id="n1", addresses=(me,), venue_dns=(dns_server.server,))
    uri = f"https://api.hotel.test:{web.port}/captive-portal/api"

    api = await fetch_captive_api(uri, net, timeout_s=5, ca_file=str(pki.ca))
    assert api.error == ""
    assert api.captive is True
    assert api.user_portal_url == "https://api.hotel.test/portal"
    assert api.venue_info_url == ""  # http:// is dropped (RFC 8908 §5)
    assert api.dropped == ("venue-info-url",)
    assert api.seconds_remaining == 300 and api.can_extend_session is True
    assert web.seen[-1].headers["accept"] == "application/captive+json"
    assert web.seen[-1].headers["host"] == f"api.hotel.test:{web.port}"
    assert web.seen[-1].peer == me

    # Not signed by a CA we trust (the system store does not know the throwaway CA).
    untrusted = await fetch_captive_api(uri, net, timeout_s=5)
    assert untrusted.error == "tls-error"
    # Right CA, wrong name: the certificate is for api.hotel.test only.
    wrong = uri.replace("api.hotel.test", "other.hotel.test")
    mismatch = await fetch_captive_api(wrong, net, timeout_s=5, ca_file=str(pki.ca))
    assert mismatch.error == "tls-error"
    missing = await fetch_captive_api(
        uri.replace("/captive-portal/api", "/nothing"), net, timeout_s=5, ca_file=str(pki.ca)
    )
    assert missing.error == "http-404"
    bad = await fetch_captive_api(
        uri.replace("/captive-portal/api", "/bad"), net, timeout_s=5, ca_file=str(pki.ca)
    )
    assert bad.error.startswith("not JSON")


def hotel_names(web: PortalServer, api: PortalServer) -> dict[str, str]:
    """The default probe hosts on the web server, the RFC 8908 API host on the TLS one."""
    return {
        "connectivitycheck.gstatic.com": web.ip,
        "detectportal.firefox.com": web.ip,
        "api.hotel.test": api.ip,
    }


def default_specs_on(port: int) -> list[ProbeSpec]:
    """The default probes, sent to `port` instead of 80."""
    return [
        ProbeSpec(s.url.replace(".com/", f".com:{port}/"), s.expected_status, s.expected_body)
        for s in DEFAULT_PROBE_SPECS
    ]


@needs_dnsmasq
@needs_openssl
async def test_probe_round_drives_the_session_to_captive_and_online(
    dnsmasq: Callable[..., Dnsmasq], portal_server: Callable[..., Awaitable[PortalServer]], pki: Pki
) -> None:
    """A whole detection round on loopback: probes + API → session → actions."""
    logged_in = False

    def web_routes(target: str, headers: dict[str, str]) -> Route:
        return online_routes(target, headers) if logged_in else captive_routes(target, headers)

    def api_routes(target: str, headers: dict[str, str]) -> Route:
        payload = (
            b'{"captive": false}'
            if logged_in
            else b'{"captive": true, "user-portal-url": "https://api.hotel.test/portal"}'
        )
        return 200, {"Content-Type": "application/captive+json"}, payload

    web = await portal_server(web_routes)
    api = await portal_server(api_routes, ssl=_tls_server_context(pki))
    dns_server = dnsmasq(hotel_names(web, api))
    specs = default_specs_on(web.port)
    net = Network(
        id="uuid-1",
        venue_dns=(dns_server.server,),
        api_uri=f"https://api.hotel.test:{api.port}/captive-portal/api",
    )
    s, actions = session_mod.step(session_mod.Session(), NetworkChanged(net), now=0.0)
    [start] = [a for a in actions if isinstance(a, StartProbe)]
    assert start.delay_s == 0.0
    finished = await probe_network(
        start.network, specs, probe_id=start.probe_id, timeout_s=5, ca_file=str(pki.ca)
    )
    assert finished.network_id == net.id and finished.probe_id == start.probe_id
    assert finished.api_uri == net.api_uri
    assert finished.api is not None and finished.api.captive is True
    s, actions = session_mod.step(s, finished, now=1.0)
    assert s.state is Connectivity.CAPTIVE
    assert s.portal_url == "https://api.hotel.test/portal"
    assert set(s.portal_hosts) == {"api.hotel.test", "login.hotel.test"}
    assert any(isinstance(a, PinPortalHosts) for a in actions)

    logged_in = True
    [retry] = [a for a in actions if isinstance(a, StartProbe)]
    assert retry.delay_s == 1.0
    finished = await probe_network(
        retry.network, specs, probe_id=retry.probe_id, timeout_s=5, ca_file=str(pki.ca)
    )
    s, actions = session_mod.step(s, finished, now=2.0)
    assert s.state is Connectivity.ONLINE
    # no retry: only the sparse re-probe of a network that was captive (core/expiry.py)
    [watch] = [a for a in actions if isinstance(a, StartProbe)]
    assert watch.delay_s == watch_delay_s(0, key=net.id)
    assert any(isinstance(a, UnpinPortalHosts) for a in actions)


# --- resolve_via -------------------------------------------------------------------------------


@needs_dnsmasq
async def test_resolve_via_returns_a_and_aaaa(dnsmasq: Callable[..., Dnsmasq]) -> None:
    dns_server = dnsmasq({"dual.hotel.test": ["10.77.0.1", "fd00::1"], "nx.hotel.test": ""})
    got = await resolve_via("dual.hotel.test", [dns_server.server], timeout_s=5)
    assert got == ["10.77.0.1", "fd00::1"]
    assert await resolve_via("nx.hotel.test", [dns_server.server], timeout_s=5) == []
    assert await resolve_via("dual.hotel.test", ["not-an-ip"], timeout_s=1) == []
    assert await resolve_via("dual.hotel.test", [], timeout_s=1) == []
    assert await resolve_via("a" * 64 + ".test", [dns_server.server], timeout_s=1) == []
    # Through a network: from its address and interface; a vanished interface finds nothing.
    on_lo = Network(id="n1", interface="lo", addresses=(loopback_ip(),))
    got = await resolve_via("dual.hotel.test", [dns_server.server], timeout_s=5, network=on_lo)
    assert got == ["10.77.0.1", "fd00::1"]
    gone = replace(on_lo, interface="portalnone0")
    assert (
        await resolve_via("dual.hotel.test", [dns_server.server], timeout_s=5, network=gone) == []
    )


@needs_dnsmasq
async def test_resolve_via_matches_dnspython_view(dnsmasq: Callable[..., Dnsmasq]) -> None:
    # Cross-check against a plain dnspython query, the reference client.
    dns_server = dnsmasq({"login.hotel.test": "10.77.0.1"})
    reply = await dns.asyncquery.udp(
        dns.message.make_query("login.hotel.test", "A"), dns_server.ip, port=dns_server.port,
        timeout=5,
    )  # fmt: skip
    assert reply.rcode() == dns.rcode.NOERROR
    expected = [rr.to_text() for rrset in reply.answer for rr in rrset]
    assert await resolve_via("login.hotel.test", [dns_server.server], timeout_s=5) == expected


def test_module_never_uses_the_system_resolver() -> None:
    # getaddrinfo would ask the user's (maybe encrypted) resolver instead of the venue's.
    from portal.edges import venue_dns

    source = Path(http_probe.__file__).read_text() + Path(venue_dns.__file__).read_text()
    for forbidden in ("getaddrinfo", "gethostbyname", "dns.resolver"):
        assert forbidden not in source


# --- the lab's portal simulator on loopback ----------------------------------------------------

HOTEL_PORTAL = Path(__file__).parent.parent / "lab" / "hotel_portal.py"


@pytest.fixture
def hotel_portal(tmp_path: Path, pki: Pki) -> Iterator[tuple[str, int, int, Path]]:
    """tests/lab/hotel_portal.py on a random loopback address: (ip, http, https, control)."""
    if not HOTEL_PORTAL.exists():
        pytest.skip("tests/lab/hotel_portal.py is not there")
    ip = loopback_ip()
    http_port, https_port = free_port(ip), free_port(ip)
    control = tmp_path / "control.sock"
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HOTEL_PORTAL),
            f"--listen={ip}",
            f"--http-port={http_port}",
            f"--https-port={https_port}",
            f"--cert={pki.cert}",
            f"--key={pki.key}",
            f"--control-socket={control}",
            f"--ready-file={ready}",
            "--lifetime=60",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("hotel_portal.py did not come up")
            time.sleep(0.02)
        yield ip, http_port, https_port, control
    finally:
        stop_pid(proc)


@needs_dnsmasq
@needs_openssl
async def test_lab_portal_sign_in_episode(
    dnsmasq: Callable[..., Dnsmasq], hotel_portal: tuple[str, int, int, Path], pki: Pki
) -> None:
    """The lab's hotel (DNS hijack, redirects, RFC 8908 API over https) on loopback."""
    ip, http_port, https_port, control = hotel_portal
    venue = dnsmasq({"#": ip})  # the hotel's DNS answers every name with its portal
    me = loopback_ip()
    net = Network(
        id="uuid-hotel",
        addresses=(me,),
        venue_dns=(venue.server,),
        api_uri=f"https://login.hotel.test:{https_port}/captive-portal/api",
    )
    specs = [
        ProbeSpec(s.url.replace(".com/", f".com:{http_port}/"), s.expected_status, s.expected_body)
        for s in DEFAULT_PROBE_SPECS
    ]
    s, actions = session_mod.step(session_mod.Session(), NetworkChanged(net), now=0.0)
    [start] = [a for a in actions if isinstance(a, StartProbe)]
    finished = await probe_network(
        net, specs, probe_id=start.probe_id, timeout_s=5, ca_file=str(pki.ca)
    )
    for _, response in finished.results:
        assert response.status == 302
        assert response.addresses == (ip,)
    s, actions = session_mod.step(s, finished, now=0.5)
    assert s.state is Connectivity.CAPTIVE
    assert s.portal_url == f"https://login.hotel.test:{https_port}/portal"
    assert "login.hotel.test" in s.portal_hosts
    [pin] = [a for a in actions if isinstance(a, PinPortalHosts)]
    # What the daemon does with that action: look the names up through the venue's DNS.
    for host in pin.hosts:
        assert await resolve_via(host, net.venue_dns, timeout_s=5) == [ip]

    transport = httpx.AsyncHTTPTransport(uds=str(control))
    async with httpx.AsyncClient(transport=transport, trust_env=False) as lab:
        signed_in = await lab.post(f"http://lab/__lab/login?ip={me}")
        assert signed_in.status_code == 200

    [retry] = [a for a in actions if isinstance(a, StartProbe)]
    finished = await probe_network(
        net, specs, probe_id=retry.probe_id, timeout_s=5, ca_file=str(pki.ca)
    )
    s, actions = session_mod.step(s, finished, now=1.5)
    assert s.state is Connectivity.ONLINE
    assert 0 < s.seconds_remaining <= 3600  # from the API once signed in
    assert UnpinPortalHosts("uuid-hotel") in actions
    # no retry: only the sparse re-probe of a network that was captive (core/expiry.py)
    [watch] = [a for a in actions if isinstance(a, StartProbe)]
    assert watch.delay_s == watch_delay_s(0, key="uuid-hotel")


# --- the same in a child process (what the daemon runs) ----------------------------------------


@needs_dnsmasq
@needs_openssl
async def test_a_probe_round_in_a_child_process_equals_the_in_process_one(
    dnsmasq: Callable[..., Dnsmasq], portal_server: Callable[..., Awaitable[PortalServer]], pki: Pki
) -> None:
    """probe_child carries the request and the whole result (responses with headers and body,
    the TLS-fetched RFC 8908 answer) across a real child process without changing them."""
    from portal.edges import probe_child

    def api_routes(target: str, headers: dict[str, str]) -> Route:
        payload = b'{"captive": true, "user-portal-url": "https://api.hotel.test/portal"}'
        return 200, {"Content-Type": "application/captive+json"}, payload

    web = await portal_server(captive_routes)
    api = await portal_server(api_routes, ssl=_tls_server_context(pki))
    dns_server = dnsmasq({**hotel_names(web, api), "nx.example": ""})
    specs = [*default_specs_on(web.port), ProbeSpec("http://nx.example/")]
    me = loopback_ip()
    net = Network(
        id="uuid-7",
        interface="lo",
        addresses=(me,),
        venue_dns=(dns_server.server,),
        api_uri=f"https://api.hotel.test:{api.port}/captive-portal/api",
    )
    here = await probe_network(net, specs, probe_id=3, timeout_s=5, ca_file=str(pki.ca))
    there = await probe_child.probe_network_in_child(
        net, specs, probe_id=3, timeout_s=5, ca_file=str(pki.ca)
    )
    assert there == here
    assert there.api is not None and there.api.captive is True
    assert {r.error for _, r in there.results} >= {"", "dns-nxdomain"}
    assert any(r.headers for _, r in there.results)
    peers = {seen.peer for seen in web.seen}
    assert peers == {me}  # the child bound to the network's address too


async def test_a_failing_child_is_a_failed_round_with_one_clear_line_and_never_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever goes wrong with the child, the daemon gets a probe round whose every probe
    failed ("probe-failed": the session retries as after any failed round) and one warning."""
    from portal.edges import probe_child

    net = Network(id="n1")
    specs = [ProbeSpec("http://a.test/"), ProbeSpec("http://b.test/")]

    def fake_python(body: str) -> None:
        script = tmp_path / "python"
        script.write_text("#!/bin/sh\n" + body + "\n")
        script.chmod(0o755)
        monkeypatch.setattr(probe_child, "PYTHON", str(script))

    async def failed_round(timeout_s: float, match: str) -> None:
        caplog.clear()
        got = await probe_child.probe_network_in_child(net, specs, probe_id=7, timeout_s=timeout_s)
        assert (got.network_id, got.probe_id, got.api) == ("n1", 7, None)
        assert [(s, r.url, r.status, r.error) for s, r in got.results] == [
            (s, s.url, 0, "probe-failed") for s in specs
        ]
        [line] = [r.getMessage() for r in caplog.records if r.name == "portal.probe"]
        assert line.startswith("probe of n1 failed: ") and match in line, line
        assert match in got.error  # what `portal status` shows as the reason

    # An interpreter this user cannot execute (a venv made from a Python under /root), or one
    # that is gone: the child cannot even start.
    fake_python("exit 0")
    (tmp_path / "python").chmod(0o644)
    await failed_round(1, "cannot start the probe process")
    monkeypatch.setattr(probe_child, "PYTHON", str(tmp_path / "gone"))
    await failed_round(1, "cannot start the probe process")
    fake_python("exit 3")
    await failed_round(1, "exited with status 3")
    fake_python("echo '{not json'")
    await failed_round(1, "unreadable")
    fake_python('echo \'{"results": [[{"url": 5, "bogus": 1}]]}\'')
    await failed_round(1, "unreadable")
    # A child that hangs is killed at the bound; its PID is gone afterwards.
    fake_python(f"echo $$ > {tmp_path}/pid; exec sleep 60")
    monkeypatch.setattr(probe_child, "START_ALLOWANCE_S", 0.5)
    t0 = time.monotonic()
    await failed_round(0.5, "did not finish")
    assert time.monotonic() - t0 < 5
    pid = int((tmp_path / "pid").read_text())  # noqa: ASYNC240 (a few bytes, written already)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
