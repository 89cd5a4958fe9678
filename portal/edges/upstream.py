"""Forwarding queries to upstream resolvers, with spoofing resistance.

Each forwarded query leaves from a fresh UDP socket (a random source port picked by the kernel)
with a fresh random 16-bit ID; an answer is accepted only from the upstream it was sent to, with
that ID and the same question (RFC 5452). The networks portal serves are untrusted, so a fixed
port or ID would invite spoofed answers. A truncated answer is retried over TCP. When no upstream
answers within the bound, the caller gets None and replies SERVFAIL.

Decides nothing about which names are forwarded: that is portal.core.answer.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import struct
from collections.abc import Sequence

from portal.core.model import Upstream
from portal.core.wire import RCODE_REFUSED, RCODE_SERVFAIL, rcode_of, response_matches, with_id

log = logging.getLogger("portal.upstream")

UDP_TIMEOUT_S = 1.5  # per upstream attempt
TCP_TIMEOUT_S = 3.0
TOTAL_TIMEOUT_S = 4.0  # the whole forward, all upstreams included: then SERVFAIL


class Forwarder:
    def __init__(self, upstreams: Sequence[Upstream] = ()) -> None:
        self.upstreams: tuple[Upstream, ...] = tuple(upstreams)
        self.sent = 0
        self.failed = 0

    def set_upstreams(self, upstreams: Sequence[Upstream]) -> None:
        self.upstreams = tuple(upstreams)

    async def forward(
        self,
        data: bytes,
        question: bytes,
        *,
        upstreams: Sequence[Upstream] | None = None,
        tcp: bool = False,
    ) -> bytes | None:
        """Forward the client's query; return the answer with the client's ID, or None."""
        servers = tuple(upstreams) if upstreams is not None else self.upstreams
        if not servers:
            return None
        client_id = struct.unpack_from("!H", data, 0)[0]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TOTAL_TIMEOUT_S
        fallback: bytes | None = None
        for server in servers:
            left = deadline - loop.time()
            if left <= 0:
                break
            self.sent += 1
            qid = secrets.randbits(16)
            query = with_id(data, qid)
            try:
                if tcp:
                    answer = await _tcp_exchange(
                        server, query, qid, question, min(TCP_TIMEOUT_S, left)
                    )
                else:
                    answer = await _udp_exchange(
                        server, query, qid, question, min(UDP_TIMEOUT_S, left)
                    )
                    if answer is not None and answer[2] & 0x02:  # TC: retry over TCP (RFC 7766)
                        left = deadline - loop.time()
                        if left > 0:
                            answer = (
                                await _tcp_exchange(
                                    server, query, qid, question, min(TCP_TIMEOUT_S, left)
                                )
                                or answer
                            )
            except OSError as exc:
                log.debug("upstream %s: %s, trying the next", server, exc)
                answer = None
            if answer is None:
                continue
            if rcode_of(answer) in (RCODE_SERVFAIL, RCODE_REFUSED):
                fallback = fallback or answer  # another upstream may do better
                continue
            return with_id(answer, client_id)
        if fallback is not None:
            return with_id(fallback, client_id)
        self.failed += 1
        return None


def _expire(fut: asyncio.Future[bytes]) -> None:
    if not fut.done():
        fut.set_result(b"")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def _udp_exchange(
    server: Upstream, query: bytes, qid: int, question: bytes, timeout_s: float
) -> bytes | None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(_family(server.host), socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    fut: asyncio.Future[bytes] = loop.create_future()
    fd = sock.fileno()

    def readable() -> None:
        while True:
            try:
                packet = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ECONNREFUSED from an ICMP port unreachable
                if not fut.done():
                    fut.set_exception(exc)
                return
            # connect() already restricts the source; check ID and question too
            if response_matches(packet, qid, question):
                if not fut.done():
                    fut.set_result(packet)
                return
            log.debug("upstream %s: mismatched answer, ignoring", server)

    try:
        # connect(): the kernel picks a random ephemeral port and drops datagrams from others
        sock.connect((server.host, server.port))
        loop.add_reader(fd, readable)
        try:
            sock.send(query)
            handle = loop.call_later(timeout_s, _expire, fut)
            try:
                answer = await fut
            finally:
                handle.cancel()
        finally:
            loop.remove_reader(fd)
    finally:
        sock.close()
    return answer or None


async def _tcp_exchange(
    server: Upstream, query: bytes, qid: int, question: bytes, timeout_s: float
) -> bytes | None:
    async def exchange() -> bytes | None:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(struct.pack("!H", len(query)) + query)
            await writer.drain()
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                packet = await reader.readexactly(length)
                if response_matches(packet, qid, question):
                    return packet
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(exchange(), timeout_s)
    except (TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
        log.debug("upstream %s over TCP: %s", server, exc or "timeout")
        return None
