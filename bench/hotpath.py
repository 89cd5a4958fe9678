"""How long portal's DNS thread spends in Python per answered override, beyond the system calls.

`python3 bench/hotpath.py [TREE]` (no root, loopback only, a few seconds). The stub's path for one
datagram of its blocking read (`DnsStub._on_solo`: the answer from the cache of built answers,
its send, then the non-blocking read for anything queued behind it) is timed in-process against
two bare loops over the same sockets that only make the same system calls: `sendto()` alone, and
`sendto()` plus that read. The difference is the interpreter's own work per answer; what a
client waits for is the part before the send. Medians of seven rounds of 20 000 answers each,
the three loops in turn. Figures in docs/benchmarks.md (*Where each target stands*).

Where portal._udpbatch is built the daemon no longer takes this path for a cached answer (its C
wait, udp_batch.serve_cached, answers those without Python); this measures the path of an
install without a C compiler.
"""

from __future__ import annotations

import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

TREE = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TREE))

from procs import a_query  # noqa: E402

from portal.core.answer import local_entries  # noqa: E402
from portal.core.model import Override  # noqa: E402
from portal.edges.dns_stub import DnsStub  # noqa: E402
from portal.edges.reactor import ThreadReactor  # noqa: E402
from portal.edges.udp_batch import NATIVE, recv_many  # noqa: E402
from portal.edges.upstream import Forwarder  # noqa: E402

ROUNDS, PER_ROUND = 7, 20_000


def main() -> None:
    names = [f"bench-{i:04d}.example" for i in range(1000)]
    overrides = {n: Override(n, (f"10.{i // 250}.{i % 250}.1",), None) for i, n in enumerate(names)}
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    stub = DnsStub([server], Forwarder(ThreadReactor()))  # its thread never starts: timed here
    stub.set_entries(local_entries(overrides))
    query = a_query("bench-0042.example", 0x1234)
    addr = client.getsockname()
    stub._on_solo(server, query, addr)  # the first answer is built and cached
    reply = client.recv(512)
    assert reply.endswith(bytes([10, 0, 42, 1])), reply

    def drain() -> None:
        try:
            while True:
                client.recv(512)
        except BlockingIOError:
            pass

    def the_stub(n: int) -> None:
        on_solo = stub._on_solo
        for _ in range(n):
            on_solo(server, query, addr)

    def send_only(n: int) -> None:
        sendto = server.sendto
        for _ in range(n):
            sendto(reply, addr)

    def send_and_read(n: int) -> None:
        sendto = server.sendto
        for _ in range(n):
            sendto(reply, addr)
            recv_many(server, 64)

    loops: dict[str, Callable[[int], None]] = {
        "the stub's path": the_stub,
        "sendto() alone": send_only,
        "sendto() + the read": send_and_read,
    }
    took: dict[str, list[float]] = {label: [] for label in loops}
    for _ in range(ROUNDS):
        for label, loop in loops.items():
            drain()
            start = time.perf_counter()
            loop(PER_ROUND)
            took[label].append((time.perf_counter() - start) / PER_ROUND * 1e6)
    drain()
    import portal

    print(f"portal from {Path(portal.__file__).parent}; UDP path: ", end="")
    print("recvmmsg/sendmmsg (C extension)" if NATIVE else "pure Python")
    median = {label: statistics.median(values) for label, values in took.items()}
    for label, value in median.items():
        print(f"{label:22s} {value:6.2f} µs per answer (min {min(took[label]):.2f})")
    stub_us = median["the stub's path"]
    beyond_both = stub_us - median["sendto() + the read"]
    beyond_send = stub_us - median["sendto() alone"]
    print(f"Python per answer: {beyond_both:.2f} µs (beyond sendto() alone: {beyond_send:.2f} µs)")


if __name__ == "__main__":
    main()
