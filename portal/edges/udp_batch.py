"""Many UDP datagrams per call: the stub's queries and replies, the forwarder's answers.

    recv_many(sock, limit) -> (list of (data, address), error or None)   never blocks
    recv_data(sock, limit) -> (list of data, error or None)              a connected socket
    send_many(sock, items) -> int                                        never blocks
    serve_cached(sock, limit, table_ref) -> list of (data, address)      blocks; C only

With portal._udpbatch (C, built where a compiler was there when portal was installed), each
call is one recvmmsg() or sendmmsg() for up to BATCH datagrams; without it, the same in pure
Python, one recvfrom() or sendto() per datagram. `NATIVE` says which one runs; the tests run
both. Under load the stub reads dozens of queries and upstream answers per wakeup, and one
system call for all of them is most of what separated its cost per query from dnsmasq's
(bench/).

A read returns what waits, at most `limit` datagrams, and the error that stopped it, if any
(for a connected socket, ECONNREFUSED after an ICMP port unreachable): the caller handles the
datagrams first. A send skips a datagram the kernel refuses (a full buffer under a flood) as a
failed sendto() would: the client asks again. Nothing here decides anything.

`serve_cached` exists with the C extension only: the DNS thread's wait when nothing else needs
it, which answers the queries whose reply core/answer.py's AnswerCache already built (its table,
read the way AnswerCache.get reads it) without returning to Python, and returns the rest. Without
the extension the stub does the same in Python after a blocking recvfrom() (edges/dns_stub.py).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar

try:
    if os.environ.get("PORTAL_NO_UDPBATCH"):  # the pure-Python path, on purpose (tests, bench)
        raise ImportError("turned off by PORTAL_NO_UDPBATCH")
    from portal import _udpbatch  # type: ignore[attr-defined]

    NATIVE = True
    BATCH: int = _udpbatch.MAX_BATCH
except ImportError:
    _udpbatch = None
    NATIVE = False
    BATCH = 64

MAX_DATAGRAM = 65535
_DONTWAIT = socket.MSG_DONTWAIT
T = TypeVar("T")
Address = Any  # (host, port) or (host, port, flowinfo, scope_id), as socket.recvfrom() gives


def recv_many(
    sock: socket.socket, limit: int = BATCH
) -> tuple[list[tuple[bytes, Address]], OSError | None]:
    """Up to `limit` datagrams waiting on `sock`, with their senders' addresses."""
    if _udpbatch is not None:
        try:
            return _udpbatch.recv(sock.fileno(), limit, True), None
        except OSError as exc:
            return [], exc
    return _drain(sock.recvfrom, limit)


def recv_data(sock: socket.socket, limit: int = BATCH) -> tuple[list[bytes], OSError | None]:
    """Up to `limit` datagrams waiting on a connected `sock` (the sender is its peer)."""
    if _udpbatch is not None:
        try:
            return _udpbatch.recv(sock.fileno(), limit, False), None
        except OSError as exc:
            return [], exc
    return _drain(sock.recv, limit)


def _drain(read: Callable[[int, int], T], limit: int) -> tuple[list[T], OSError | None]:
    """The pure-Python path: `read` (recvfrom or recv) until nothing waits or `limit` came."""
    out: list[T] = []
    try:
        for _ in range(limit):
            out.append(read(MAX_DATAGRAM, _DONTWAIT))
    except (BlockingIOError, InterruptedError):
        pass
    except OSError as exc:
        return out, exc
    return out, None


def serve_cached(
    sock: socket.socket, limit: int, table_ref: list[Any]
) -> list[tuple[bytes, Address]]:
    """Wait for datagrams on `sock` (blocking); answer each from a 127.* address that the dict
    `table_ref[0]` holds (bytes after the ID → (reply after the ID, valid_until or None)), as
    AnswerCache.get would; return the others, at least one. `table_ref[0]` is read once per
    wakeup: replace it to swap tables (None: answer nothing). OSError when the read fails.
    Needs the C extension (NATIVE)."""
    assert _udpbatch is not None, "serve_cached needs portal._udpbatch"
    datagrams: list[tuple[bytes, Address]] = _udpbatch.serve(sock.fileno(), limit, table_ref)
    return datagrams


def send_many(sock: socket.socket, items: list[tuple[bytes, Address]]) -> int:
    """Send each (data, address); return how many went out (the rest were refused)."""
    if _udpbatch is not None:
        sent: int = _udpbatch.send(sock.fileno(), items)
        return sent
    sent = 0
    sendto = sock.sendto
    for data, addr in items:
        try:
            sendto(data, _DONTWAIT, addr)
            sent += 1
        except OSError:
            continue
    return sent
