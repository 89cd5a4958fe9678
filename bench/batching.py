"""Does batching UDP pay? The two experiments behind portal/edges/udp_batch.py (docs/benchmarks.md,
the fourth round), repeatable on a busy machine because they count rather than time:

    python3 bench/batching.py calls --tree ../parent [--rounds 3]   # as root (perf)
    python3 bench/batching.py micro [--batch 32]

`calls`: portal daemons from this tree with the C extension, from this tree in pure Python
(PORTAL_NO_UDPBATCH=1) and from --tree (e.g. the parent commit), each on its own private bus
with 1000 overrides and the same local upstream; in every round, in turn, dnsperf for 5 s at full
speed and at 2000 queries/s, local answers and forwards, while `perf stat` counts the daemon's
system calls (the raw_syscalls:sys_enter tracepoint: no hardware counters needed, so it works in
a VM) and its CPU time. System calls per query do not depend on the load; the tracepoint's own
cost makes the CPU of the variants with more calls look a little worse.

`micro`: one process, a loopback socket with `--batch` datagrams queued, read (and sent) in one
go by plain recvfrom()/sendto(), by the C extension and by recvmmsg()/sendmmsg() through ctypes;
the median time per datagram of 300 tries each.

Writes nothing but its output (and stops every process it starts by PID, procs.py). Traffic on
loopback only.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import procs as p

HERE = Path(__file__).resolve().parent
SECONDS = 5
NAMES = 1000


# -- calls -------------------------------------------------------------------------------------


def perf_stat(pid: int, run: Callable[[], int]) -> dict[str, float]:
    """perf stat on `pid` while `run()` sends queries; figures per completed query."""
    perf = subprocess.Popen(
        ["perf", "stat", "-x,", "-e", "task-clock,raw_syscalls:sys_enter", "-p", str(pid)],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.2)  # attached
    done = max(run(), 1)
    perf.send_signal(signal.SIGINT)
    err = perf.communicate(timeout=30)[1]
    counts = {}
    for line in err.splitlines():
        cols = line.split(",")
        if len(cols) > 3 and cols[0][:1].isdigit():
            counts[cols[2]] = float(cols[0])
    return {
        "qps": done / SECONDS,
        "cpu_us": counts.get("task-clock", float("nan")) * 1000 / done,  # task-clock is in ms
        "calls": counts.get("raw_syscalls:sys_enter", float("nan")) / done,
    }


def dnsperf(server: p.Server, qfile: Path, rate: int | None) -> int:
    cmd = ["taskset", "-c", "1", "dnsperf", "-s", server.host, "-p", str(server.port)]
    cmd += ["-d", str(qfile), "-l", str(SECONDS), "-t", "2"]
    if rate:
        cmd += ["-Q", str(rate)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 30, check=False)
    found = re.search(r"Queries completed:\s+(\d+)", out.stdout)
    return int(found.group(1)) if found else 0


def calls(parent: Path, rounds: int) -> None:
    p.FORCE_MODULE = True  # every variant's CLI and daemon from its own tree
    p.install_cleanup()
    base = p.workdir("batching")
    names = {f"bench-{i:04d}.example": f"10.{i // 250}.{i % 250}.1" for i in range(NAMES)}
    fwd = {f"fwd-{i:04d}.example": f"10.200.{i // 250}.{i % 250 + 1}" for i in range(NAMES)}
    try:
        (base / "upstream").mkdir()
        up = p.start_unbound(
            base / "upstream", "127.0.0.2", fwd, cpu=1, wait_name="fwd-0000.example"
        )
        q_over, q_fwd = base / "q_over", base / "q_fwd"
        q_over.write_text("".join(f"{n} A\n" for n in names))
        q_fwd.write_text("".join(f"{n} A\n" for n in fwd))
        variants = {
            "parent": (parent, {}),
            "native": (HERE.parent, {}),
            "python": (HERE.parent, {"PORTAL_NO_UDPBATCH": "1"}),
        }
        servers: dict[str, p.Server] = {}
        for name, (tree, env) in variants.items():
            p.REPO = tree.resolve()
            d = base / name
            d.mkdir()
            bus, _ = p.private_bus(d)
            saved = dict(os.environ)
            os.environ.update(env)  # the daemon's environment (portal_env copies os.environ)
            try:
                server = p.start_portal(
                    d, bus, "127.0.0.1", cpu=0, upstreams=[f"127.0.0.2:{up.port}"]
                )
            finally:
                os.environ.clear()
                os.environ.update(saved)
            hosts = d / "hosts"
            hosts.write_text("".join(f"{ip} {n}\n" for n, ip in names.items()))
            out = p.portal_cli(bus, "import", str(hosts), "--ttl", "never", "--any-network")
            if out.returncode != 0:
                raise RuntimeError(f"{name}: import failed: {out.stderr.decode()}")
            servers[name] = server
        results: dict[str, list[dict[str, float]]] = {}
        for r in range(rounds):
            for kind, qfile in (("answers", q_over), ("forward", q_fwd)):
                for speed, rate in (("full", None), ("2000/s", 2000)):
                    for name, s in servers.items():
                        fig = perf_stat(s.pid, lambda s=s, q=qfile, r=rate: dnsperf(s, q, r))
                        results.setdefault(f"{kind} {speed} {name}", []).append(fig)
                        print(
                            f"round {r + 1} {kind:7} {speed:6} {name:6} qps {fig['qps']:8.0f}"
                            f"  CPU {fig['cpu_us']:6.1f} µs/query  {fig['calls']:5.2f} calls/query"
                            f"  load {os.getloadavg()[0]:.1f}",
                            flush=True,
                        )
        print("\nmedians:")
        for key, figs in results.items():
            cpu = statistics.median(f["cpu_us"] for f in figs)
            n = statistics.median(f["calls"] for f in figs)
            print(f"{key:26} CPU {cpu:6.1f} µs/query  {n:5.2f} system calls/query")
    finally:
        p.stop_all()
        p.rm_tree(base)


# -- micro -------------------------------------------------------------------------------------


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(Iovec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", Msghdr), ("len", ctypes.c_uint)]


class CtypesBatch:
    """recvmmsg/sendmmsg through ctypes, as lean as ctypes allows: every structure made once."""

    N, SIZE = 64, 4096

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.recvmmsg = libc.recvmmsg
        self.recvmmsg.argtypes = [
            ctypes.c_int,
            ctypes.POINTER(Mmsghdr),
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        self.sendmmsg = libc.sendmmsg
        self.sendmmsg.argtypes = [
            ctypes.c_int,
            ctypes.POINTER(Mmsghdr),
            ctypes.c_uint,
            ctypes.c_int,
        ]
        self.bufs = [ctypes.create_string_buffer(self.SIZE) for _ in range(self.N)]
        self.names = [ctypes.create_string_buffer(128) for _ in range(self.N)]
        self.iovs = (Iovec * self.N)()
        self.msgs = (Mmsghdr * self.N)()
        self.out_iovs = (Iovec * self.N)()
        self.out_msgs = (Mmsghdr * self.N)()
        for i in range(self.N):
            self.iovs[i].base = ctypes.addressof(self.bufs[i])
            self.iovs[i].len = self.SIZE
            self.msgs[i].hdr.iov = ctypes.pointer(self.iovs[i])
            self.msgs[i].hdr.iovlen = 1
            self.msgs[i].hdr.name = ctypes.addressof(self.names[i])
            self.out_msgs[i].hdr.iov = ctypes.pointer(self.out_iovs[i])
            self.out_msgs[i].hdr.iovlen = 1
        self.unpack = struct.Struct("!H4s").unpack_from
        self.keep: list[Any] = []

    def recv(self, fd: int, limit: int) -> list[tuple[bytes, tuple[str, int]]]:
        msgs, bufs, names = self.msgs, self.bufs, self.names
        for i in range(limit):
            msgs[i].hdr.namelen = 128
        got = self.recvmmsg(fd, msgs, limit, socket.MSG_DONTWAIT, None)
        out = []
        for i in range(max(got, 0)):
            port, addr = self.unpack(names[i].raw, 2)
            out.append((bufs[i].raw[: msgs[i].len], (socket.inet_ntoa(addr), port)))
        return out

    def send(self, fd: int, items: list[tuple[bytes, tuple[str, int]]]) -> int:
        self.keep = []
        for i, (data, (host, port)) in enumerate(items):
            name = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port)
            name = ctypes.create_string_buffer(name + socket.inet_aton(host) + bytes(8), 16)
            self.keep += [name, data]
            self.out_iovs[i].base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
            self.out_iovs[i].len = len(data)
            self.out_msgs[i].hdr.name = ctypes.addressof(name)
            self.out_msgs[i].hdr.namelen = 16
        sent: int = self.sendmmsg(fd, self.out_msgs, len(items), socket.MSG_DONTWAIT)
        return sent


def micro(batch: int) -> None:
    sys.path.insert(0, str(HERE.parent))
    try:
        from portal import _udpbatch  # type: ignore[attr-defined]
    except ImportError:
        sys.exit("portal._udpbatch is not built in this tree (pip install -e . with a compiler)")
    ct = CtypesBatch()
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (server, client):
        s.bind(("127.0.0.1", 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    query = os.urandom(40)

    def plain_recv() -> list[Any]:
        out = []
        try:
            for _ in range(64):
                out.append(server.recvfrom(65535, socket.MSG_DONTWAIT))
        except BlockingIOError:
            pass
        return out

    items = [(query, client.getsockname())] * batch

    def plain_send() -> int:
        for data, addr in items:
            server.sendto(data, socket.MSG_DONTWAIT, addr)
        return len(items)

    readers = {
        "recvfrom": plain_recv,
        "C extension": lambda: _udpbatch.recv(server.fileno(), 64, True),
        "ctypes": lambda: ct.recv(server.fileno(), 64),
    }
    senders = {
        "sendto": plain_send,
        "C extension": lambda: _udpbatch.send(server.fileno(), items),
        "ctypes": lambda: ct.send(server.fileno(), items),
    }
    for how, fn in readers.items():  # the same datagrams, the same addresses
        for _ in range(batch):
            client.sendto(query, server.getsockname())
        assert fn() == [(query, client.getsockname())] * batch, how
    times: dict[str, list[float]] = {}
    for _ in range(300):
        for how, fn in readers.items():
            for _ in range(batch):
                client.sendto(query, server.getsockname())
            t = time.perf_counter_ns()
            got = fn()
            times.setdefault(f"read {how}", []).append((time.perf_counter_ns() - t) / len(got))
        for how, fn in senders.items():
            t = time.perf_counter_ns()
            n = fn()
            times.setdefault(f"send {how}", []).append((time.perf_counter_ns() - t) / n)
            _drain(client)
    print(f"batches of {batch}, load {os.getloadavg()[0]:.1f}; median per datagram of 300:")
    for key, values in times.items():
        print(f"  {key:18} {statistics.median(values) / 1000:6.2f} µs")


def _drain(sock: socket.socket) -> None:
    try:
        while True:
            sock.recv(65535, socket.MSG_DONTWAIT)
    except BlockingIOError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("calls", help="system calls and CPU per query, three daemons in turn")
    c.add_argument("--tree", required=True, type=Path, help="the checkout to compare with")
    c.add_argument("--rounds", type=int, default=3)
    mi = sub.add_parser("micro", help="per datagram: recvfrom/sendto, C extension, ctypes")
    mi.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    if args.what == "calls":
        calls(args.tree, args.rounds)
    else:
        micro(args.batch)


if __name__ == "__main__":
    main()
