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
import threading
import time
from collections.abc import Iterator

import dns.message
import pytest

from portal.core.answer import Answers, local_entries
from portal.core.model import Override
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


# -- serve_cached: the DNS thread's wait that answers from the answer cache (C only) -----------


def a_query(name: str, qid: int) -> bytes:
    return dns.message.make_query(name, "A", id=qid, use_edns=False).to_wire()


@pytest.fixture
def native() -> None:
    if _udpbatch is None:
        pytest.skip(NOT_BUILT)


class Waiting:
    """serve_cached() in a thread of its own, as the DNS thread runs it: it blocks until it has
    something to return. Bounded: a datagram that it cannot answer ends a wait left behind."""

    def __init__(self, server: socket.socket, table_ref: list[object]) -> None:
        self.server = server
        self.result: list[tuple[bytes, object]] | BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(table_ref,), name="serve-cached", daemon=True
        )
        self.thread.start()

    def _run(self, table_ref: list[object]) -> None:
        try:
            self.result = udp_batch.serve_cached(self.server, 8, table_ref)
        except BaseException as exc:
            self.result = exc

    def returned(self, timeout: float = 5) -> list[tuple[bytes, object]]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"serve_cached() did not return in {timeout} s"
        assert isinstance(self.result, list), self.result
        return self.result

    def end(self) -> None:
        if self.thread.is_alive():
            with udp() as s:
                s.sendto(b"\0", self.server.getsockname())
            self.thread.join(5)


def recv_reply(client: socket.socket) -> bytes:
    client.settimeout(5)
    return client.recv(4096)


def test_serve_cached_answers_what_the_cache_holds_as_answer_cache_does(native: None) -> None:
    """The bytes are exactly Answers.cached()'s, for another ID than the query that filled the
    cache, and serve_cached() does not return for them: only a datagram it cannot answer ends
    the wait, returned as recv_many() returns it."""
    answers = Answers(local_entries({"a.example": Override("a.example", ("192.0.2.1",), None)}))
    first = a_query("a.example", 1)
    assert isinstance(answers.decide(first, time.time(), "127.0.0.1"), bytes)  # fills the cache
    again = a_query("a.example", 0xBEEF)
    expected = answers.cached(again, time.time(), "127.0.0.1")
    assert expected is not None and expected[:2] == b"\xbe\xef"
    with udp() as server, udp() as client:
        waiting = Waiting(server, [answers.cache.table])
        try:
            client.sendto(again, server.getsockname())
            assert recv_reply(client) == expected
            time.sleep(0.05)
            assert waiting.thread.is_alive(), "returned after an answer it could send itself"
            other = a_query("b.example", 7)  # not in the cache: for Python
            client.sendto(other, server.getsockname())
            assert waiting.returned() == [(other, client.getsockname())]
        finally:
            waiting.end()


def test_serve_cached_answers_and_returns_from_one_batch(native: None) -> None:
    table = {a_query("a.example", 0)[2:]: (b"REPLY", None)}
    with udp() as server, udp() as client:
        for qid in (1, 2):
            client.sendto(a_query("a.example", qid), server.getsockname())
        client.sendto(b"\0", server.getsockname())
        wait_readable(server)
        waiting = Waiting(server, [table])
        assert waiting.returned() == [(b"\0", client.getsockname())]
        assert [recv_reply(client), recv_reply(client)] == [b"\0\1REPLY", b"\0\2REPLY"]


def test_serve_cached_returns_what_it_may_not_answer(native: None) -> None:
    """An expired answer, no table (None, an empty reference), an empty one, a table swapped
    between two wakeups of one wait, and a client not on 127.*: each goes back to Python,
    unanswered."""
    query = a_query("a.example", 5)
    key = query[2:]
    with udp() as server, udp() as client:
        for table_ref in ([{key: (b"OLD", time.time() - 1)}], [None], [], [{}]):
            waiting = Waiting(server, table_ref)
            client.sendto(query, server.getsockname())
            assert waiting.returned() == [(query, client.getsockname())], table_ref
        # one wait, two tables: the item replaced while it waits is read at its next wakeup
        table_ref = [{key: (b"NEW", time.time() + 60)}]
        waiting = Waiting(server, table_ref)
        try:
            client.sendto(query, server.getsockname())
            assert recv_reply(client) == b"\0\5NEW"
            table_ref[0] = {}
            client.sendto(query, server.getsockname())
            assert waiting.returned() == [(query, client.getsockname())]
        finally:
            waiting.end()
    with udp(socket.AF_INET6, "::1") as server, udp(socket.AF_INET6, "::1") as client:
        waiting = Waiting(server, [{key: (b"NEW", None)}])
        client.sendto(query, server.getsockname())
        assert waiting.returned() == [(query, client.getsockname())]


def test_serve_cached_reports_a_failed_read(native: None) -> None:
    read, write = os.pipe()  # not a socket: recvmmsg() fails at once (ENOTSOCK)
    try:
        with pytest.raises(OSError):
            _udpbatch.serve(read, 8, [{}])
    finally:
        os.close(read)
        os.close(write)


def test_while_serve_cached_waits_its_buffers_are_not_lent(native: None) -> None:
    """serve() and recv() share one area for the datagrams they read: while serve() waits in
    one thread, a recv() or a second serve() from another is refused, never given it."""
    with udp() as server, udp() as other:
        other.setblocking(False)
        waiting = Waiting(server, [{}])
        try:
            deadline = time.monotonic() + 5
            while waiting.thread.is_alive() and time.monotonic() < deadline:
                try:
                    udp_batch.recv_many(other, 8)
                except RuntimeError:
                    break
                time.sleep(0.01)  # until the thread is in its wait
            else:
                pytest.fail("recv() was not refused while serve() waited")
            with pytest.raises(RuntimeError):
                _udpbatch.serve(other.fileno(), 8, [{}])
        finally:
            waiting.end()
        [(wake, _)] = waiting.returned()
        assert wake == b"\0"
        assert udp_batch.recv_many(other, 8) == ([], None)  # lent again once serve() returned
