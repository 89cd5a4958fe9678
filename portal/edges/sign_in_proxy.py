"""The sign-in proxy: SOCKS5 and HTTP CONNECT on loopback, out through the captive interface.

One proxy per `portal open`, for the uid that runs it:

- it listens on 127.0.0.1 (an ephemeral port) and serves a connection only when the kernel says
  the client's end belongs to this process's uid (sock_diag, else /proc/net/tcp; the bytes are
  read by portal/core/peer_uid.py); anyone else is closed on at once, and logged;
- it resolves every name itself: an active override first, else the captive network's own DNS
  servers, queried from sockets bound to that interface (portal/edges/venue_dns.py) — never the
  user's resolver, which may be DoT/DoH or a VPN's and cannot see the venue's names;
- it connects out with SO_BINDTODEVICE on the captive interface (unprivileged since Linux 5.7),
  so routes a VPN adds (0.0.0.0/1 + 128.0.0.0/1, or its own table) cannot carry the sign-in
  page. Where the kernel refuses, it says so once and connects by the routing table;
- every resource is bounded: connections, bytes buffered per direction, the handshake, DNS,
  connect and idle times.

The protocols are parsed by portal/core/proxy_protocol.py; which names and addresses are
allowed is decided by portal/core/sign_in.py. This module only moves bytes, and it must not
outlive `close()`, log the contents of a connection, or touch the system resolver.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from portal.core import peer_uid, proxy_protocol
from portal.core.model import Network
from portal.core.proxy_protocol import (
    Greeting,
    Malformed,
    NeedMore,
    Protocol,
    Refused,
    Reply,
    Target,
)
from portal.core.report import OverrideView
from portal.core.sign_in import PROXY_HOST, connect_order, destination_refusal, override_addresses
from portal.edges.venue_dns import SO_BINDTODEVICE, resolve_via
from portal.errors import PortalError

log = logging.getLogger("portal.sign_in")

NETLINK_SOCK_DIAG = 4
READ_CHUNK = 4096  # handshakes are small; the relay reads up to Limits.buffer_bytes

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Limits:
    """Every resource a client can make the proxy hold, bounded."""

    max_connections: int = 128  # browsers keep up to 32 sockets per proxy; pages need a few
    buffer_bytes: int = 64 * 1024  # read size and write-buffer high mark, per direction
    handshake_timeout_s: float = 10.0
    dns_timeout_s: float = 5.0
    connect_timeout_s: float = 10.0
    idle_timeout_s: float = 120.0  # no byte either way for this long: close


class _Failed(Exception):
    """A connection attempt failed with this SOCKS reply (internal to this module)."""

    def __init__(self, reply: Reply, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason


class _Closed(Exception):
    """The client went away during the handshake."""


class _Idle(Exception):
    """Nothing moved either way for the idle timeout."""


# --- who is calling -------------------------------------------------------------------------


def peer_uid_of(client: tuple[str, int], server: tuple[str, int]) -> peer_uid.Lookup:
    """The uid owning the TCP socket whose own end is `client` and whose peer is `server`."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.sendto(peer_uid.inet_diag_request(client, server), (0, 0))
            found = peer_uid.parse_inet_diag_reply(nl.recv(65536), client, server)
        if found.known:
            return found
    except OSError as exc:
        log.debug("sock_diag is not available (%s); reading /proc/net/tcp", exc)
    # /proc/net/tcp6 holds dual-stack sockets talking IPv4 too (as ::ffff:a.b.c.d).
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            text = Path(table).read_text()
        except OSError:
            continue
        found = peer_uid.match_proc_net_tcp(text, client, server, byteorder=sys.byteorder)
        if found.known:
            return found
    return peer_uid.Lookup(None, "the kernel knows no such connection")


def device_option(interface: str) -> bytes | None:
    """The SO_BINDTODEVICE value for `interface`, or None where the kernel does not allow it.

    Raise PortalError when the interface is not here at all (the network is gone)."""
    try:
        socket.if_nametoindex(interface)
    except OSError as exc:
        raise PortalError(f"the network's interface {interface} is not here") from exc
    name = interface.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, name)
        except PermissionError:
            return None  # Linux < 5.7, or a seccomp filter
        except OSError as exc:
            raise PortalError(f"cannot bind to {interface}: {exc.strerror}") from exc
    return name


# --- the proxy ------------------------------------------------------------------------------


class SignInProxy:
    """SOCKS5 + HTTP CONNECT for one uid, out of one interface; see the module docstring."""

    def __init__(
        self,
        *,
        interface: str,
        network_id: str = "",
        venue_dns: Sequence[str] = (),
        overrides: Sequence[OverrideView] = (),
        uid: int,
        limits: Limits = Limits(),
    ) -> None:
        self.interface = interface
        self.network = Network(id=network_id, interface=interface)
        self.venue_dns = tuple(venue_dns)
        self.overrides = tuple(overrides)
        self.uid = uid
        self.limits = limits
        self.online = False  # once set, new requests get the "You're online" page
        self.served = 0
        self.refused_peers = 0
        self._device: bytes | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, port: int = 0) -> int:
        """Listen on 127.0.0.1:`port` (0: any free port); return the port."""
        self._device = device_option(self.interface)
        if self._device is None:
            log.warning(
                "this kernel does not let portal bind connections to %s (Linux < 5.7?): they "
                "follow the routing table, and a VPN may capture them",
                self.interface,
            )
        self._server = await asyncio.start_server(
            self._accept, PROXY_HOST, port, limit=self.limits.buffer_bytes
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def update(self, *, venue_dns: Sequence[str], overrides: Sequence[OverrideView]) -> None:
        """New answers from the daemon: they apply to the next connections."""
        self.venue_dns = tuple(venue_dns)
        self.overrides = tuple(overrides)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    # --- one connection ---

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._handlers) >= self.limits.max_connections:
            log.info("%d connections open already, closing a new one", len(self._handlers))
            await _close(writer)
            return
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (asyncio.CancelledError, _Closed, ConnectionError, TimeoutError):
            pass
        except Exception:  # one connection's bug must not end the proxy
            log.exception("sign-in proxy connection failed, ignoring")
        finally:
            self._handlers.discard(task)
            await _close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")[:2]
        server = writer.get_extra_info("sockname")[:2]
        who = peer_uid_of(client, server)
        if who.closed:  # a browser's spare connection, closed unused: nobody to refuse
            log.debug("%s:%d: %s", client[0], client[1], who.error)
            return
        if who.uid != self.uid:
            self.refused_peers += 1
            log.warning(
                "refused a connection from uid %s (%s:%d): this proxy serves uid %d only",
                "unknown" if who.uid is None else who.uid,
                client[0],
                client[1],
                self.uid,
            )
            return
        buf = bytearray()
        async with asyncio.timeout(self.limits.handshake_timeout_s):
            first = await reader.read(READ_CHUNK)
            if not first:
                return
            buf += first
            protocol = proxy_protocol.sniff(bytes(buf))
            if protocol is Protocol.SOCKS5:
                target = await self._socks_handshake(reader, writer, buf)
            elif protocol is Protocol.HTTP:
                target = await self._http_handshake(reader, writer, buf)
            else:
                log.debug("not SOCKS5 nor HTTP from %s:%d, closing", *client)
                return
        if target is None:
            return
        leftover = bytes(buf[target.size :])
        if self.online:
            await self._after_online(reader, writer, protocol, target)
            return
        try:
            upstream = await self._open(target)
        except _Failed as failed:
            log.info("%s:%d: %s", target.host, target.port, failed.reason)
            self._reply(writer, protocol, failed.reply, failed.reason)
            await writer.drain()
            return
        up_reader, up_writer = upstream
        try:
            bound = up_writer.get_extra_info("sockname")[:2]
            self._reply(writer, protocol, Reply.SUCCEEDED, bound=bound)
            self.served += 1
            if leftover:
                up_writer.write(leftover)
            await self._relay(reader, writer, up_reader, up_writer)
        finally:
            await _close(up_writer)

    async def _socks_handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, buf: bytearray
    ) -> Target | None:
        greeting = await _read_until(reader, buf, proxy_protocol.parse_greeting)
        if not isinstance(greeting, Greeting):
            log.debug("bad SOCKS5 greeting: %s", getattr(greeting, "reason", ""))
            return None
        method = proxy_protocol.choose_method(greeting)
        writer.write(proxy_protocol.format_method(method))
        await writer.drain()
        if method == proxy_protocol.METHOD_NONE_ACCEPTABLE:
            return None
        del buf[: greeting.size]
        request = await _read_until(reader, buf, proxy_protocol.parse_request)
        if isinstance(request, Refused):
            log.info("refused a SOCKS5 request: %s", request.reason)
            writer.write(proxy_protocol.format_reply(request.reply))
            await writer.drain()
            return None
        if not isinstance(request, Target):
            log.debug("bad SOCKS5 request: %s", getattr(request, "reason", ""))
            return None
        return request

    async def _http_handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, buf: bytearray
    ) -> Target | None:
        request = await _read_until(reader, buf, proxy_protocol.parse_http_connect)
        if isinstance(request, Target):
            return request
        if isinstance(request, Malformed | Refused):
            reply = (
                request.reply if isinstance(request, Refused) else Reply.ADDRESS_TYPE_NOT_SUPPORTED
            )
            log.info("refused an HTTP proxy request: %s", request.reason)
            writer.write(proxy_protocol.format_http_reply(reply, request.reason))
            await writer.drain()
        return None

    def _reply(
        self,
        writer: asyncio.StreamWriter,
        protocol: Protocol,
        reply: Reply,
        reason: str = "",
        *,
        bound: tuple[str, int] | None = None,
    ) -> None:
        if protocol is Protocol.SOCKS5:
            writer.write(proxy_protocol.format_reply(reply, bound))
        else:
            writer.write(proxy_protocol.format_http_reply(reply, reason))

    async def _after_online(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        protocol: Protocol,
        target: Target,
    ) -> None:
        """The window could not be closed: plain-HTTP requests get the "You're online" page,
        anything else a refusal that says why."""
        if protocol is not Protocol.SOCKS5 or target.port != 80:
            self._reply(writer, protocol, Reply.NOT_ALLOWED, "the network is online")
            await writer.drain()
            return
        self._reply(writer, protocol, Reply.SUCCEEDED)
        buf = bytearray()
        async with asyncio.timeout(self.limits.handshake_timeout_s):
            while True:
                complete = proxy_protocol.http_head_complete(bytes(buf))
                if complete:
                    break
                if complete is None:
                    return
                chunk = await reader.read(READ_CHUNK)
                if not chunk:
                    return
                buf += chunk
        writer.write(proxy_protocol.online_page())
        await writer.drain()

    # --- names, addresses, connections ---

    async def _addresses(self, target: Target) -> list[str]:
        if not target.is_name:
            return [target.host]
        pinned = override_addresses(target.host, self.overrides)
        if pinned:
            return list(pinned)
        if not self.venue_dns:
            raise _Failed(Reply.HOST_UNREACHABLE, "the network's DNS servers are not known")
        found = await resolve_via(
            target.host, self.venue_dns, timeout_s=self.limits.dns_timeout_s, network=self.network
        )
        if not found:
            raise _Failed(Reply.HOST_UNREACHABLE, "the network's DNS has no address for it")
        return found

    async def _open(self, target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        started = time.monotonic()
        addresses = connect_order(await self._addresses(target))
        allowed = [a for a in addresses if destination_refusal(a) is None]
        if not allowed:
            reason = destination_refusal(addresses[0]) if addresses else "no address"
            raise _Failed(Reply.NOT_ALLOWED, f"not connecting: {reason}")
        deadline = started + self.limits.connect_timeout_s
        failure = _Failed(Reply.HOST_UNREACHABLE, "no address answered")
        for index, address in enumerate(allowed):
            # Each address gets an equal share of what is left, so a dead first one leaves
            # time for the next.
            share = (deadline - time.monotonic()) / (len(allowed) - index)
            if share <= 0:
                break
            try:
                sock = await self._connect(address, target.port, timeout_s=share)
            except _Failed as failed:
                failure = failed
                continue
            reader, writer = await asyncio.open_connection(
                sock=sock, limit=self.limits.buffer_bytes
            )
            writer.transport.set_write_buffer_limits(high=self.limits.buffer_bytes)
            log.debug(
                "%s:%d -> %s in %.0f ms",
                target.host,
                target.port,
                address,
                (time.monotonic() - started) * 1000,
            )
            return reader, writer
        raise failure

    async def _connect(self, address: str, port: int, *, timeout_s: float) -> socket.socket:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self._device is not None:
                sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self._device)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (address, port)), timeout_s)
        except TimeoutError:
            sock.close()
            raise _Failed(Reply.TTL_EXPIRED, f"{address} did not answer in time") from None
        except ConnectionRefusedError:
            sock.close()
            raise _Failed(Reply.CONNECTION_REFUSED, f"{address} refused the connection") from None
        except OSError as exc:
            sock.close()
            reply = {
                errno.ENETUNREACH: Reply.NETWORK_UNREACHABLE,
                errno.ENETDOWN: Reply.NETWORK_UNREACHABLE,
                errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
            }.get(exc.errno or 0, Reply.GENERAL_FAILURE)
            raise _Failed(reply, f"{address}: {exc.strerror}") from None
        except BaseException:
            sock.close()
            raise
        return sock

    async def _relay(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Bytes both ways until both sides are done, either side fails, or nothing moves for
        the idle timeout. A half-close is passed on (HTTP/1.0 clients end requests that way)."""
        last = [time.monotonic()]
        idle_s = self.limits.idle_timeout_s
        chunk = self.limits.buffer_bytes

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while True:
                try:
                    data = await asyncio.wait_for(src.read(chunk), idle_s)
                except TimeoutError:
                    if time.monotonic() - last[0] >= idle_s:
                        raise _Idle() from None
                    continue  # the other direction is busy: a one-way stream is not idle
                if not data:
                    if dst.can_write_eof():
                        with contextlib.suppress(OSError):
                            dst.write_eof()
                    return
                last[0] = time.monotonic()
                dst.write(data)
                await dst.drain()

        tasks = [
            asyncio.ensure_future(pump(client_reader, up_writer)),
            asyncio.ensure_future(pump(up_reader, client_writer)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            for task in tasks:
                if not task.cancelled() and isinstance(task.exception(), _Idle):
                    log.debug("closing a connection idle for %.0f s", idle_s)


async def _read_until(
    reader: asyncio.StreamReader, buf: bytearray, parse: Callable[[bytes], R]
) -> R:
    """Read into `buf` until `parse` says more than "need more" (the parsers bound the size)."""
    while True:
        result = parse(bytes(buf))
        if not isinstance(result, NeedMore):
            return result
        chunk = await reader.read(READ_CHUNK)
        if not chunk:
            raise _Closed()
        buf += chunk


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 2)
