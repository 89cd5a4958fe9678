"""DNS servers for tests: real dnsmasq upstreams, scripted upstreams, raw exchanges, dig."""

from __future__ import annotations

import contextlib
import heapq
import os
import selectors
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.rrset

from tests.support.procs import free_port, stop_pid, wait_for

UPSTREAM_RECORDS = {"upstream.test": "192.0.2.10", "www.example.test": "192.0.2.20"}


@dataclass
class Dnsmasq:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def upstream(self) -> str:
        return f"{self.host}:{self.port}"


@contextlib.contextmanager
def dnsmasq(
    records: dict[str, str],
    *,
    host: str = "127.0.0.1",
    extra: Sequence[str] = (),
    txt: dict[str, str] | None = None,
) -> Iterator[Dnsmasq]:
    """A real dnsmasq answering `records` (name → IPv4) on host:random port, nothing else."""
    port = free_port(host)
    directory = Path(tempfile.mkdtemp(prefix="portal-dnsmasq-"))
    log = directory / "dnsmasq.log"
    args = [
        "dnsmasq",
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        f"--listen-address={host}",
        "--bind-interfaces",
        f"--port={port}",
        "--user=root" if os.geteuid() == 0 else "--user=" + str(os.getuid()),
        "--pid-file=",
        f"--log-facility={log}",
        "--log-queries",
        "--cache-size=0",
    ]
    args += [f"--address=/{name}/{ip}" for name, ip in records.items()]
    for name, text in (txt or {}).items():
        args.append(f"--txt-record={name},{text}")
    args += list(extra)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if not wait_for(lambda: _udp_open(host, port) or proc.poll() is not None, 10):
            raise RuntimeError("dnsmasq did not start")
        if proc.poll() is not None:
            raise RuntimeError(
                f"dnsmasq failed: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        yield Dnsmasq(host, port, proc, log)
    finally:
        stop_pid(proc)
        shutil.rmtree(directory, ignore_errors=True)


def _udp_open(host: str, port: int) -> bool:
    # a root-zone SOA query: any answer means the server is up
    query = bytes.fromhex("abcd01000001000000000000") + b"\x00\x00\x06\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(query, (host, port))
            s.recvfrom(4096)
            return True
        except OSError:
            return False


# What a fake upstream does with one query: a list of (delay_s, reply bytes); [] = stay silent.
Behaviour = Callable[[bytes], list[tuple[float, bytes]]]


def answer_a(query: bytes, address: str = "192.0.2.53", *, ttl: int = 60) -> bytes:
    """A correct answer to `query` (same ID and question) with one A record."""
    q = dns.message.from_wire(query)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(q.question[0].name, ttl, "IN", "A", address))
    return r.to_wire()


@dataclass
class FakeUpstream:
    """A UDP+TCP DNS server on 127.0.0.1 that behaves as told, served by one thread."""

    behaviour: Behaviour
    host: str = "127.0.0.1"
    port: int = 0
    received: list[bytes] = field(default_factory=list)
    sources: list[tuple[str, int]] = field(default_factory=list)  # of each UDP query
    tcp_received: list[bytes] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def upstream(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> FakeUpstream:
        for _ in range(50):  # a port free for both UDP and TCP
            self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self._udp.bind((self.host, 0))
            self.port = self._udp.getsockname()[1]
            self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self._tcp.bind((self.host, self.port))
                break
            except OSError:
                self._udp.close()
                self._tcp.close()
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        self._tcp.listen(64)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._udp.close()
        self._tcp.close()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._udp, selectors.EVENT_READ, "udp")
        sel.register(self._tcp, selectors.EVENT_READ, "listen")
        later: list[tuple[float, int, socket.socket, bytes, tuple[str, int] | None]] = []
        seq = 0
        conns: list[socket.socket] = []
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                while later and later[0][0] <= now:
                    _, _, sock, data, addr = heapq.heappop(later)
                    with contextlib.suppress(OSError):
                        if addr is None:
                            sock.sendall(struct.pack("!H", len(data)) + data)
                        else:
                            sock.sendto(data, addr)
                timeout = 0.05 if not later else max(0.0, min(0.05, later[0][0] - now))
                for key, _ in sel.select(timeout):
                    if key.data == "udp":
                        try:
                            data, addr = self._udp.recvfrom(65535)
                        except OSError:
                            continue
                        self.received.append(data)
                        self.sources.append(addr)
                        for delay, reply in self._safe(data):
                            seq += 1
                            heapq.heappush(later, (now + delay, seq, self._udp, reply, addr))
                    elif key.data == "listen":
                        conn, _ = self._tcp.accept()
                        conn.settimeout(2)
                        conns.append(conn)
                        sel.register(conn, selectors.EVENT_READ, "conn")
                    else:
                        conn = key.fileobj  # type: ignore[assignment]
                        try:
                            head = conn.recv(2, socket.MSG_WAITALL)
                            (length,) = struct.unpack("!H", head)
                            data = conn.recv(length, socket.MSG_WAITALL)
                        except (OSError, struct.error):
                            sel.unregister(conn)
                            conn.close()
                            continue
                        self.tcp_received.append(data)
                        for delay, reply in self._safe(data):
                            seq += 1
                            heapq.heappush(later, (now + delay, seq, conn, reply, None))
        finally:
            for c in conns:
                c.close()
            sel.close()

    def _safe(self, data: bytes) -> list[tuple[float, bytes]]:
        try:
            return self.behaviour(data)
        except Exception:  # a behaviour that cannot read the query stays silent
            return []


@contextlib.contextmanager
def fake_upstream(behaviour: Behaviour) -> Iterator[FakeUpstream]:
    up = FakeUpstream(behaviour).start()
    try:
        yield up
    finally:
        up.close()


def udp_exchange(
    addr: tuple[str, int], data: bytes, *, timeout_s: float = 3.0, expect: int = 1
) -> list[bytes]:
    """Send one datagram; collect up to `expect` replies, waiting at most `timeout_s` for each."""
    out: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        s.sendto(data, addr)
        for _ in range(expect):
            try:
                out.append(s.recv(65535))
            except TimeoutError:
                break
    return out


def tcp_exchange(addr: tuple[str, int], data: bytes, *, timeout_s: float = 5.0) -> bytes | None:
    """One length-prefixed message over a fresh TCP connection; None when the stub closes it."""
    with socket.create_connection(addr, timeout=timeout_s) as s:
        s.sendall(struct.pack("!H", len(data)) + data)
        return read_tcp_message(s)


def read_tcp_message(s: socket.socket) -> bytes | None:
    head = recv_exactly(s, 2)
    if head is None:
        return None
    return recv_exactly(s, struct.unpack("!H", head)[0])


def recv_exactly(s: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def dig(*args: str, port: int, host: str = "127.0.0.1", timeout: float = 15) -> str:
    out = subprocess.run(
        ["dig", f"@{host}", "-p", str(port), "+tries=1", "+time=5", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return out.stdout
