"""portal/edges/udp_batch.py over real loopback sockets, in both of its implementations.

Every test runs twice: with the C extension (portal._udpbatch: recvmmsg/sendmmsg), skipped with
the reason where it is not built, and with the pure-Python fallback (one recvfrom/sendto per
datagram), which is what an install without a C compiler runs. Both must give the same
datagrams, the same addresses as socket.recvfrom() and the same errors.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from portal.edges import udp_batch
from tests.support.procs import free_port

try:
    from portal import _udpbatch  # type: ignore[attr-defined]
except ImportError as exc:
    _udpbatch = None
    NOT_BUILT = f"portal._udpbatch is not built here ({exc}): only the fallback runs"
else:
    NOT_BUILT = ""


@pytest.fixture(params=["native", "python"])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "native":
        if _udpbatch is None:
            pytest.skip(NOT_BUILT)
        monkeypatch.setattr(udp_batch, "_udpbatch", _udpbatch)
    else:
        monkeypatch.setattr(udp_batch, "_udpbatch", None)
    yield request.param


def udp(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    return s


def wait_readable(sock: socket.socket) -> None:
    """Until a datagram waits on `sock`. Loopback queues a datagram before sendto() returns
    (the softirq runs as the sender leaves the device layer), so the rest are there with it."""
    readable, _, _ = select.select([sock], [], [], 5)
    assert readable, "no datagram arrived on loopback in 5 s"


def test_nothing_waiting_is_an_empty_list(impl: str) -> None:
    with udp() as s:
        s.setblocking(False)
        assert udp_batch.recv_many(s, 8) == ([], None)
        assert udp_batch.recv_data(s, 8) == ([], None)


def test_reads_what_waits_in_order_with_the_senders_addresses(impl: str) -> None:
    with udp() as server, udp() as a, udp() as b:
        sent = [(a if i % 2 else b, b"q%03d" % i + bytes(i)) for i in range(40)]
        for sender, data in sent:
            sender.sendto(data, server.getsockname())
        wait_readable(server)
        got, error = udp_batch.recv_many(server, 64)
        assert error is None
        assert got == [(data, sender.getsockname()) for sender, data in sent]
        assert udp_batch.recv_many(server, 64) == ([], None)


def test_at_most_limit_per_call(impl: str) -> None:
    with udp() as server, udp() as client:
        for i in range(10):
            client.sendto(bytes([i]), server.getsockname())
        wait_readable(server)
        first, _ = udp_batch.recv_many(server, 3)
        rest, _ = udp_batch.recv_many(server, 64)
        assert [d for d, _ in first] == [bytes([i]) for i in range(3)]
        assert [d for d, _ in rest] == [bytes([i]) for i in range(3, 10)]


def test_a_big_datagram_is_whole(impl: str) -> None:
    with udp() as server, udp() as client:
        big = os.urandom(65507)  # the largest IPv4 UDP payload
        client.sendto(big, server.getsockname())
        client.sendto(b"small", server.getsockname())
        wait_readable(server)
        got, error = udp_batch.recv_many(server, 64)
        assert error is None and [d for d, _ in got] == [big, b"small"]


def test_ipv6_addresses_are_as_recvfrom_gives_them(impl: str) -> None:
    try:
        server, client = udp(socket.AF_INET6, "::1"), udp(socket.AF_INET6, "::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with server, client:
        client.sendto(b"six", server.getsockname())
        wait_readable(server)
        [(data, addr)], error = udp_batch.recv_many(server, 4)
        assert error is None and data == b"six"
        assert addr == client.getsockname()  # (host, port, flowinfo, scope_id)
        # and a reply to that address reaches the client
        assert udp_batch.send_many(server, [(b"back", addr)]) == 1
        client.settimeout(5)
        assert client.recvfrom(100) == (b"back", server.getsockname())


def test_a_connected_socket_reports_icmp_port_unreachable(impl: str) -> None:
    """ECONNREFUSED after an ICMP error (the forwarder's dead upstream) is returned, not raised."""
    with udp() as s:
        s.connect(("127.0.0.1", free_port()))  # nobody listens there
        s.send(b"anyone?")
        deadline = time.monotonic() + 5
        while True:
            got, error = udp_batch.recv_data(s, 8)
            if error is not None or time.monotonic() > deadline:
                break
            time.sleep(0.001)
        assert got == [] and isinstance(error, ConnectionRefusedError)


def test_connected_reads_give_the_data(impl: str) -> None:
    with udp() as server, udp() as s:
        s.connect(server.getsockname())
        for i in range(5):
            server.sendto(b"answer%d" % i, s.getsockname())
        wait_readable(s)
        got, error = udp_batch.recv_data(s, 64)
        assert error is None and got == [b"answer%d" % i for i in range(5)]


def test_send_many_reaches_every_address_and_skips_what_cannot_be_sent(impl: str) -> None:
    clients = [udp() for _ in range(3)]
    with udp() as server:
        items: list[tuple[bytes, object]] = [
            (b"r%d" % i, c.getsockname()) for i, c in enumerate(clients)
        ]
        # not an address, then an address the kernel refuses (port 0): both skipped, as a
        # failed sendto() would be, and the ones after them still go out
        items.insert(1, (b"bad", ("not an address", 53)))
        items.insert(3, (b"zero", ("127.0.0.1", 0)))
        assert udp_batch.send_many(server, items) == 3
        for i, c in enumerate(clients):
            c.settimeout(5)
            assert c.recvfrom(100) == (b"r%d" % i, server.getsockname())
            c.setblocking(False)
            with pytest.raises(BlockingIOError):
                c.recv(100)
            c.close()


def test_more_than_one_batch_is_sent_whole(impl: str) -> None:
    with udp() as server, udp() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        n = udp_batch.BATCH * 2 + 5
        assert (
            udp_batch.send_many(server, [(b"%d" % i, client.getsockname()) for i in range(n)]) == n
        )
        client.settimeout(5)
        assert [client.recv(100) for _ in range(n)] == [b"%d" % i for i in range(n)]


def test_the_fallback_is_chosen_by_the_environment() -> None:
    """PORTAL_NO_UDPBATCH turns the extension off (what the bench and the tests use to compare);
    without it, the extension runs where it is built."""
    code = "from portal.edges import udp_batch; print(udp_batch.NATIVE)"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    off = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "PORTAL_NO_UDPBATCH": "1"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert off.stdout.strip() == "False"
    env.pop("PORTAL_NO_UDPBATCH", None)
    on = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert on.stdout.strip() == str(_udpbatch is not None)
