"""The DNS thread's reactor (edges/reactor.py) with real sockets on loopback.

What must hold: datagrams on the one socket are handled in the thread, from a blocking read;
work handed over from another thread runs in the thread and wakes it from that read (the wake-up
datagram is recognisable); with something in flight it waits in epoll, runs readers and timers
on time; a failing callback is logged and the thread serves on; stop() ends and joins it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from portal.edges.reactor import ThreadReactor
from tests.support.procs import wait_for


@pytest.fixture
def udp() -> Iterator[tuple[socket.socket, socket.socket]]:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(3)
    yield server, client
    server.close()
    client.close()


async def test_solo_reads_wake_ups_timers_and_stop(
    udp: tuple[socket.socket, socket.socket],
) -> None:
    server, client = udp
    r = ThreadReactor()
    seen: list[tuple[bytes, str]] = []
    wakes: list[Any] = []

    def on_datagram(data: bytes, addr: Any) -> None:
        if addr == r.waker_address:
            wakes.append(addr)
            return
        seen.append((data, threading.current_thread().name))
        server.sendto(data.upper(), addr)

    in_flight = [0]
    r.serve_solo(server, on_datagram)
    r.busy = lambda: in_flight[0] > 0
    r.add_reader(server.fileno(), lambda: on_datagram(*server.recvfrom(512, socket.MSG_DONTWAIT)))
    r.start()
    try:
        client.sendto(b"ping", server.getsockname())
        assert client.recv(512) == b"PING"
        assert seen == [(b"ping", "portal-dns")]
        # work from this thread, while the thread sleeps in recvfrom(): it wakes and runs it
        ran: list[str] = []
        r.call_soon_threadsafe(lambda: ran.append(threading.current_thread().name))
        assert wait_for(lambda: ran == ["portal-dns"])
        assert wakes and all(w == r.waker_address for w in wakes)
        # something in flight: epoll, with a timer due in 0.2 s
        fired: list[float] = []
        t0 = time.monotonic()

        def arm() -> None:
            in_flight[0] = 1
            r.call_at(r.time() + 0.2, lambda: fired.append(time.monotonic() - t0))

        r.call_soon_threadsafe(arm)
        client.sendto(b"during", server.getsockname())  # the reader serves it in epoll mode
        assert client.recv(512) == b"DURING"
        assert wait_for(lambda: bool(fired))
        assert 0.15 < fired[0] < 1.0
        cancelled: list[int] = []
        r.call_soon_threadsafe(
            lambda: r.call_at(r.time() + 0.05, lambda: cancelled.append(1)).cancel()
        )
        await asyncio.sleep(0.2)
        assert not cancelled
        in_flight[0] = 0
    finally:
        await asyncio.to_thread(r.stop)
    assert not r.alive()


async def test_a_failing_callback_is_logged_and_the_thread_serves_on(
    udp: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    server, client = udp
    r = ThreadReactor()

    def on_datagram(data: bytes, addr: Any) -> None:
        if addr == r.waker_address:
            return
        if data == b"boom":
            raise RuntimeError("a bug")
        server.sendto(b"ok", addr)

    r.serve_solo(server, on_datagram)
    r.start()
    try:
        client.sendto(b"boom", server.getsockname())
        r.call_soon_threadsafe(lambda: 1 / 0)
        client.sendto(b"fine", server.getsockname())
        assert client.recv(512) == b"ok"
        assert r.alive()
    finally:
        await asyncio.to_thread(r.stop)
    messages = [rec.getMessage() for rec in caplog.records]
    assert "internal error on a datagram, continuing" in messages
    assert "internal error in the DNS thread, continuing" in messages


async def test_a_dead_thread_tells_the_daemon(udp: tuple[socket.socket, socket.socket]) -> None:
    """Only what escapes every guard (BaseException) ends the thread; on_fatal is told."""
    server, client = udp
    loop = asyncio.get_running_loop()
    r = ThreadReactor()
    told: asyncio.Future[BaseException] = loop.create_future()
    r.on_fatal = told.set_result

    def on_datagram(data: bytes, addr: Any) -> None:
        if addr != r.waker_address:
            raise SystemExit("unexpected")

    r.serve_solo(server, on_datagram)
    r.start()
    client.sendto(b"x", server.getsockname())
    exc = await asyncio.wait_for(told, 3)
    assert isinstance(exc, SystemExit)
    await asyncio.to_thread(r.stop)
    assert not r.alive()


async def test_started_before_a_loop_serves_and_reports_a_death_when_the_loop_comes(
    udp: tuple[socket.socket, socket.socket],
) -> None:
    """The daemon's first step (portal/early.py) starts the thread before any asyncio loop
    exists; a coroutine handed over then is not run (done(None)), and a death before the loop
    is attached is told when it is."""
    server, client = udp
    r = ThreadReactor()
    results: list[Any] = []

    def on_datagram(data: bytes, addr: Any) -> None:
        if addr == r.waker_address:
            return
        if data == b"die":
            raise SystemExit("unexpected")
        if data == b"coro":

            async def never() -> None:
                raise AssertionError("no loop to run it on")

            r.run_coroutine(never(), results.append)
        server.sendto(data.upper(), addr)

    r.serve_solo(server, on_datagram)
    r.start_thread()  # no loop, not even a running one: this is a plain thread
    client.sendto(b"ping", server.getsockname())
    assert client.recv(512) == b"PING"
    client.sendto(b"coro", server.getsockname())
    assert client.recv(512) == b"CORO"
    assert wait_for(lambda: results == [None])
    client.sendto(b"die", server.getsockname())
    assert wait_for(lambda: not r.alive())
    loop = asyncio.get_running_loop()
    told: asyncio.Future[BaseException] = loop.create_future()
    r.on_fatal = told.set_result
    r.attach(loop)
    assert isinstance(await asyncio.wait_for(told, 3), SystemExit)
    await asyncio.to_thread(r.stop)


async def test_without_a_solo_socket_work_and_timers_still_run() -> None:
    """The forwarder alone (no stub socket yet, or several): the reactor wakes itself through
    its own inbox, in epoll."""
    r = ThreadReactor()
    r.start()
    try:
        ran: list[str] = []
        r.call_soon_threadsafe(lambda: ran.append(threading.current_thread().name))
        assert wait_for(lambda: ran == ["portal-dns"])
        fired: list[float] = []
        t0 = time.monotonic()
        r.call_soon_threadsafe(
            lambda: r.call_at(r.time() + 0.1, lambda: fired.append(time.monotonic() - t0))
        )
        assert wait_for(lambda: bool(fired)) and 0.05 < fired[0] < 1.0
    finally:
        await asyncio.to_thread(r.stop)
    assert not r.alive()


async def test_an_ipv6_solo_socket_gets_an_ipv6_waker() -> None:
    server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        server.bind(("::1", 0))
    except OSError as exc:
        server.close()
        pytest.skip(f"no IPv6 loopback here: {exc}")
    r = ThreadReactor()
    woken: list[Any] = []
    r.serve_solo(server, lambda data, addr: woken.append(addr))
    r.start()
    try:
        r.call_soon_threadsafe(lambda: None)
        assert wait_for(lambda: woken == [r.waker_address])
        assert r.waker_address[0] == "::1"
    finally:
        await asyncio.to_thread(r.stop)
        server.close()
