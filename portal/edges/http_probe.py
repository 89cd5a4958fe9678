"""HTTP connectivity probes and the RFC 8908 API, sent the way the network itself would see them.

    probe(network, spec, *, timeout_s) -> ProbeResponse
    fetch_captive_api(uri, network, *, timeout_s, ca_file=None) -> CaptiveApi
    resolve_via(host, servers, *, timeout_s) -> list[str]          A and AAAA
    probe_network(network, specs, *, probe_id, timeout_s, ca_file=None) -> ProbeFinished

Every name is resolved through the network's own DNS servers (`network.venue_dns`, queried
directly by portal.edges.venue_dns, never the system resolver, which may be a DoT/DoH resolver
that cannot see the portal). Requests go to the resolved address with the Host header and TLS SNI
left as in the URL, leave from the network's own address (`local_address`) and, where the
kernel permits, are bound to its interface (SO_BINDTODEVICE), so a VPN's routes cannot carry
them. Redirects are never followed: a redirect is the portal's answer. No proxy from the
environment is used.

A server entry is "ADDR", "ADDR:PORT" or "[V6ADDR]:PORT" (portal.core.inet; ports other than 53
are for tests).

Failures are data, never exceptions: a ProbeResponse or CaptiveApi with `error` set
("timeout", "dns-timeout", "dns-nxdomain", "dns-nodata", "dns-error", "no-dns",
"connect-refused", "connect-error", "no-route", "bind-error", "tls-error", "http-error", ...).

It must not decide what an answer means (that is core/detect.py), ask the system resolver,
follow a redirect, or send anything a probe does not need (no cookies, no credentials).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

import httpcore
import httpx

from portal.core.detect import api_uri_to_fetch, parse_captive_api
from portal.core.model import Network
from portal.core.packet import TYPE_A, TYPE_AAAA
from portal.core.probe_model import CaptiveApi, ProbeFinished, ProbeResponse, ProbeSpec
from portal.edges.venue_dns import (
    _device_option,
    _Failure,
    _is_v6,
    _lookup,
    _os_code,
    _servers,
    _source_for,
    resolve_via,
)

__all__ = [
    "fetch_captive_api",
    "probe",
    "probe_network",
    "resolve_via",
]

log = logging.getLogger("portal.http_probe")

MAX_BODY_BYTES = 64 * 1024  # a sign-in page's first 64 KiB hold its redirect; the rest is noise
USER_AGENT = "portal (captive-portal check)"


async def _resolve_for_request(
    host: str, network: Network, *, deadline: float, device: list[tuple[int, int, bytes]]
) -> list[str]:
    """IPv4 first (portals often intercept only IPv4), IPv6 when there is no A record; IPv6
    first on a network where we have no IPv4 address (NAT64 venues: DNS64 still answers the
    real A records, which such a network cannot reach)."""
    if _is_literal(host):
        return [host]
    servers = _servers(network.venue_dns)
    first_type, second_type = TYPE_A, TYPE_AAAA
    if _ipv6_only(network):
        first_type, second_type = second_type, first_type
    try:
        return await _lookup(
            host, first_type, servers, deadline=deadline, network=network, device=device
        )
    except _Failure as failure:
        # No record of that type (or a server that will not say, as dnsmasq answers REFUSED for
        # a name it only knows in the other family): try the other, but report the first
        # failure if that fails too.
        if failure.code not in ("dns-nodata", "dns-error"):
            raise
        first = failure
    try:
        return await _lookup(
            host, second_type, servers, deadline=deadline, network=network, device=device
        )
    except _Failure as failure:
        raise (failure if first.code == "dns-nodata" else first) from None


def _ipv6_only(network: Network) -> bool:
    """Whether the network gave us IPv6 addresses (beyond link-local) and no IPv4 one."""
    versions = set()
    for text in network.addresses:
        try:
            ip = ipaddress.ip_address(text.split("/", 1)[0])
        except ValueError:
            continue
        if not ip.is_link_local:
            versions.add(ip.version)
    return versions == {6}


# --- HTTP --------------------------------------------------------------------------------------


class _Stream(httpcore.AsyncNetworkStream):
    """An httpcore stream over asyncio streams on a socket we opened ourselves.

    The `timeout` parameters are httpcore's interface (ruff's ASYNC109 is silenced for them).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass  # the peer went first; closed either way

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:  # ssl.SSLError included; _os_code() finds it in the chain
            raise httpcore.ConnectError(str(exc)) from exc
        return self

    def get_extra_info(self, info: str) -> object:
        if info == "is_readable":
            return self._reader.at_eof()
        names = {"client_addr": "sockname", "server_addr": "peername"}
        return self._writer.get_extra_info(names.get(info, info))


class _VenueBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections with the socket options set BEFORE connect().

    httpcore's own backend applies `socket_options` after connecting, when the route is
    already chosen, so SO_BINDTODEVICE would not keep a probe off a VPN.
    """

    def __init__(self, options: list[tuple[int, int, bytes]]) -> None:
        self._options = options

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        family = socket.AF_INET6 if _is_v6(host) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            for level, option, value in self._options:
                sock.setsockopt(level, option, value)
            if local_address:
                sock.bind((local_address, 0))
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock)
        except TimeoutError as exc:
            sock.close()
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            sock.close()
            raise httpcore.ConnectError(str(exc)) from exc
        except BaseException:  # cancelled by the probe's deadline: still ours to close
            sock.close()
            raise
        return _Stream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("probes never use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _client(
    network: Network,
    address: str,
    *,
    timeout_s: float,
    device: list[tuple[int, int, bytes]],
    verify: ssl.SSLContext,
    transport: httpx.AsyncBaseTransport | None,
) -> httpx.AsyncClient:
    if transport is None:
        real = httpx.AsyncHTTPTransport(verify=verify, trust_env=False, retries=0)
        # httpx has no parameter for httpcore's network backend: swap in a pool that opens
        # sockets our way (bound to the interface before connecting, from our own address).
        real._pool = httpcore.AsyncConnectionPool(
            ssl_context=verify,
            max_connections=1,
            retries=0,
            local_address=_source_for(network, address),
            network_backend=_VenueBackend(device),
        )
        transport = real
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=False,
        trust_env=False,  # an http_proxy from the environment would answer instead of the venue
    )


def _host_of(url: str) -> str:
    try:
        host = urlsplit(url).hostname
    except ValueError as exc:
        raise _Failure("bad-url", f"{url!r}: {exc}") from exc
    if not host:
        raise _Failure("bad-url", f"no host in {url!r}")
    return host


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _fetch(
    url: str,
    address: str,
    network: Network,
    *,
    deadline: float,
    device: list[tuple[int, int, bytes]],
    verify: ssl.SSLContext,
    accept: str,
    transport: httpx.AsyncBaseTransport | None,
) -> tuple[httpx.Response, str]:
    """GET `url` from `address` (the host's venue-resolved address): (response, body text)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _Failure("timeout")
    split = urlsplit(url)
    host = _host_of(url)
    target = httpx.URL(url).copy_with(host=address)
    headers = {
        "Host": split.netloc.rpartition("@")[2],  # the URL's host[:port], as a browser sends it
        "User-Agent": USER_AGENT,
        "Accept": accept,
        "Cache-Control": "no-cache",  # a caching proxy's stored 204 says nothing about now
        "Connection": "close",
    }
    # Connecting to the address, TLS must still name (and verify) the host: SNI = host.
    extensions = {"sni_hostname": host} if split.scheme == "https" else {}
    client = _client(
        network, address, timeout_s=remaining, device=device, verify=verify, transport=transport
    )
    async with client, asyncio.timeout(remaining):
        request = client.build_request("GET", target, headers=headers, extensions=extensions)
        response = await client.send(request, stream=True)
        try:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size >= MAX_BODY_BYTES:
                    break
        finally:
            await response.aclose()
    raw = b"".join(chunks)[:MAX_BODY_BYTES]
    try:
        return response, raw.decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know: the URLs we look for are ASCII
        return response, raw.decode("utf-8", errors="replace")


def _failure_code(exc: BaseException) -> tuple[str, str]:
    """(error code, detail) for anything a probe step may raise."""
    if isinstance(exc, _Failure):
        return exc.code, exc.detail
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timeout", str(exc)
    code = _os_code(exc, ssl.SSLError)
    if code is not None:
        return code, str(exc)
    if isinstance(exc, httpx.ConnectError):
        return "connect-error", str(exc)
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return "read-error", str(exc)
    if isinstance(exc, httpx.HTTPError):
        return "http-error", str(exc)
    if isinstance(exc, OSError):
        return "connect-error", str(exc)
    if isinstance(exc, ValueError | httpx.InvalidURL):
        return "bad-url", str(exc)
    # Not expected: still data for the caller, but worth a full trace in the log.
    log.warning("probe failed unexpectedly", exc_info=exc)
    return "internal-error", f"{type(exc).__name__}: {exc}"


async def probe(
    network: Network,
    spec: ProbeSpec,
    *,
    timeout_s: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ProbeResponse:
    """Probe `spec.url` through `network` (see the module docstring). Never raises.

    `transport` replaces the real HTTP transport (tests use httpx.MockTransport); DNS is
    still real.
    """
    deadline = time.monotonic() + timeout_s
    resolved: tuple[str, ...] = ()
    try:
        host = _host_of(spec.url)
        device = _device_option(network.interface)
        addresses = await _resolve_for_request(host, network, deadline=deadline, device=device)
        if not _is_literal(host):
            resolved = tuple(addresses)  # kept even if HTTP fails: a hijacking DNS tells
        response, body = await _fetch(
            spec.url,
            addresses[0],
            network,
            deadline=deadline,
            device=device,
            verify=_tls_context(None),  # probes are http://; a redirect is never followed
            accept="*/*",
            transport=transport,
        )
    except Exception as exc:  # a failed probe is data, never an exception
        code, detail = _failure_code(exc)
        log.debug("probe %s on %s: %s %s", spec.url, network.id, code, detail)
        return ProbeResponse(url=spec.url, addresses=resolved, error=code)
    return ProbeResponse(
        url=spec.url,
        status=response.status_code,
        headers=tuple((k.lower(), v) for k, v in response.headers.multi_items()),
        body=body,
        addresses=resolved,
    )


@functools.lru_cache(maxsize=4)
def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verify against `ca_file`, else the system's CA store (certifi's when there is none).

    Built once per CA file and kept: loading a CA store costs about 50 ms, more than a whole
    probe round on a local network. A changed CA file is read again after a restart.
    """
    context = ssl.create_default_context(cafile=ca_file)
    if ca_file is None:
        paths = ssl.get_default_verify_paths()
        if not paths.cafile and not (paths.capath and os.listdir(paths.capath)):
            import certifi  # httpx's own dependency; only for systems without a CA store

            context.load_verify_locations(cafile=certifi.where())
    return context


async def fetch_captive_api(
    uri: str,
    network: Network,
    *,
    timeout_s: float,
    ca_file: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> CaptiveApi:
    """GET the RFC 8908 API at `uri` through `network`'s DNS and address. Never raises.

    https only, certificates verified (RFC 8908 §4: the client MUST verify the server); the
    answer is parsed by core/detect.parse_captive_api.
    """
    if not api_uri_to_fetch(uri):
        return CaptiveApi(error="not-https")
    deadline = time.monotonic() + timeout_s
    try:
        context = _tls_context(ca_file)
        host = _host_of(uri)
        device = _device_option(network.interface)
        addresses = await _resolve_for_request(host, network, deadline=deadline, device=device)
        response, body = await _fetch(
            uri,
            addresses[0],
            network,
            deadline=deadline,
            device=device,
            verify=context,
            accept="application/captive+json",
            transport=transport,
        )
    except Exception as exc:  # a failed probe is data, never an exception
        code, detail = _failure_code(exc)
        log.info("captive-portal API %s on %s: %s %s, ignoring", uri, network.id, code, detail)
        return CaptiveApi(error=code)
    if response.status_code != 200:
        log.info("captive-portal API %s answered %d, ignoring", uri, response.status_code)
        return CaptiveApi(error=f"http-{response.status_code}")
    api = parse_captive_api(body)
    if api.error:
        log.info("captive-portal API %s: %s, ignoring", uri, api.error)
    elif api.dropped:
        log.info("captive-portal API %s: invalid %s, ignoring", uri, ", ".join(api.dropped))
    return api


async def probe_network(
    network: Network,
    specs: Sequence[ProbeSpec],
    *,
    probe_id: int,
    timeout_s: float,
    ca_file: str | None = None,
) -> ProbeFinished:
    """One probe round, in this process: every spec and (when the network advertises one) the
    API, at once. The daemon runs it in a child (probe_child.probe_network_in_child)."""
    api_uri = api_uri_to_fetch(network.api_uri)
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(probe(network, s, timeout_s=timeout_s)) for s in specs]
        api_task = (
            group.create_task(
                fetch_captive_api(api_uri, network, timeout_s=timeout_s, ca_file=ca_file)
            )
            if api_uri
            else None
        )
    results = tuple((spec, task.result()) for spec, task in zip(specs, tasks, strict=True))
    return ProbeFinished(
        network.id,
        probe_id,
        results,
        api_task.result() if api_task is not None else None,
        api_uri if api_task is not None else "",
    )
