"""Plumbing for the reliability tests: misbehaving upstreams, raw DNS exchanges, a bus that can
be killed and restarted on the same address, throwaway users and tiny file systems.

Everything started here is bounded in time and stopped by PID or by closing its own sockets;
nothing here decides what the tests expect.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import secrets
import selectors
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.rrset

from tests.helpers import BUS_CONFIG, REPO, Daemon, free_port, stop_pid, wait_for

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


class RestartableBus:
    """A private dbus-daemon whose process can be killed and started again on the same socket."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="portal-rbus-"))
        os.chmod(self.directory, 0o755)
        self.socket = self.directory / "bus"
        self.conf = self.directory / "bus.conf"
        self.conf.write_text(BUS_CONFIG.format(socket=self.socket, extra=""))
        self.address = f"unix:path={self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={self.conf}", "--nofork", "--nopidfile"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_for(self.socket.exists, 10):
            raise RuntimeError("dbus-daemon did not start")
        os.chmod(self.socket, 0o777)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def close(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tiny tmpfs mounted on `path` (root only), unmounted lazily at the end."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system holding `directory` up to the last byte; return the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (65536, 4096, 1):  # big writes first, then the last crumbs
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


class Users:
    """Throwaway system users (and groups), deleted at the end; names are unique per run."""

    def __init__(self) -> None:
        self.users: list[str] = []
        self.groups: list[str] = []

    def group(self) -> str:
        name = f"prg{secrets.token_hex(3)}"
        subprocess.run(["groupadd", name], check=True)
        self.groups.append(name)
        return name

    def user(self, *groups: str) -> str:
        name = f"pru{secrets.token_hex(3)}"
        cmd = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        if groups:
            cmd += ["--groups", ",".join(groups)]
        subprocess.run([*cmd, name], check=True)
        self.users.append(name)
        return name

    def close(self) -> None:
        for name in self.users:
            subprocess.run(["userdel", name], check=False, capture_output=True)
        for g in self.groups:
            subprocess.run(["groupdel", g], check=False, capture_output=True)


def start_daemon(
    bus: str,
    directory: Path,
    *,
    upstreams: list[str] | None = None,
    extra_args: list[str] | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    state_dir: Path | None = None,
    start: bool = True,
) -> Daemon:
    """The real daemon as tests/conftest.py's make_daemon starts it, for fixtures of a wider
    scope (one daemon shared by a module's many cheap cases). The caller stops it."""
    port = port or free_port(host)
    state = state_dir or directory / "state"
    none = directory / "none.toml"
    none.touch()
    args = ["daemon", "--bus", bus, "--listen", f"{host}:{port}", "--state-dir", str(state)]
    args += ["--log-level", "debug", "--config", str(none)]
    # never probe the test machine's network nor touch its resolver (extra_args may override)
    args += ["--network-source", "none", "--wiring", "none"]
    for u in upstreams or []:
        args += ["--upstream", u]
    args += extra_args or []
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PORTAL_BUS", None)
    d = Daemon(
        bus=bus,
        host=host,
        port=port,
        state_dir=state,
        args=args,
        log_path=directory / f"daemon-{port}.log",
        env=env,
    )
    if start:
        d.start()
    return d
