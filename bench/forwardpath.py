"""Where a forwarded query's time goes in portal's DNS thread, at the rate `bench/run` measures
latency (2000 queries/s: nothing queues, every query wakes the thread).

`sudo python3 bench/forwardpath.py [ROUNDS]` (root: dnsmasq runs as root here; loopback only,
about half a minute). dnsmasq on 127.0.0.2 answers the 1000 names as the upstream, pinned to the
load CPU with dnsperf, as `bench/run`'s upstream is. portal's stub runs in this process, pinned
to the server CPU, with the real forwarder and DNS thread, and each round is dnsperf straight to
the upstream, through the stub, then through the stub with its steps timed (wrappers around
them, which add about a microsecond each):

- `decide`: the query's decision (`Answers.decide`: parse it, find no override, a Forward);
- `send up`: the flight's bookkeeping and its `send()` to the upstream (`Forwarder._attempt`);
  `pick` is the socket's choice within it;
- `answer`: the upstream's answer read, matched and relayed (`_UdpPool._readable`);
- `reply`: the reply's `sendto()` to the client (`dns_stub._sendto`).

A send that wakes a process on another, idle CPU pays for that wake-up in the sender (on a VM,
an interrupt to another virtual CPU): `reply` is little else, and shows that cost. Prints the
medians per round. Figures in docs/benchmarks.md (*Where each target stands*).
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import measure as m  # noqa: E402
import procs as p  # noqa: E402

import bench as b  # noqa: E402
from portal.core.answer import Answers  # noqa: E402
from portal.core.model import Upstream  # noqa: E402
from portal.edges import dns_stub  # noqa: E402
from portal.edges import upstream as upstream_edge  # noqa: E402
from portal.edges.dns_stub import DnsStub  # noqa: E402
from portal.edges.reactor import ThreadReactor  # noqa: E402

SPANS = {
    "decide": (Answers, "decide"),
    "send up": (upstream_edge.Forwarder, "_attempt"),
    "pick": (upstream_edge._UdpPool, "pick"),  # noqa: SLF001
    "answer": (upstream_edge._UdpPool, "_readable"),  # noqa: SLF001
    "reply": (dns_stub, "_sendto"),
}


def timed(spans: dict[str, list[int]], key: str, f: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter_ns()
        try:
            return f(*args, **kwargs)
        finally:
            spans[key].append(time.perf_counter_ns() - t)

    return wrapper


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    cpus = b.Cpus.pick()
    base = p.workdir("forwardpath")
    records = b.name_table("up", 1000, 2)
    qfile = b.write_queries(base / "q", list(records))
    (base / "up").mkdir()
    spans: dict[str, list[int]] = {key: [] for key in SPANS}
    originals = {key: getattr(cls, name) for key, (cls, name) in SPANS.items()}
    stub = None
    try:
        up = p.start_dnsmasq(base / "up", "127.0.0.2", records, cpu=cpus.load, label="upstream")
        if cpus.server is not None:
            os.sched_setaffinity(0, {cpus.server})  # the DNS thread starts from here
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        stub = DnsStub(
            [sock], upstream_edge.Forwarder(ThreadReactor(), [Upstream(up.host, up.port)])
        )
        stub.serve_udp()
        rows = []
        for _ in range(rounds):
            direct = b.dnsperf(up, qfile, seconds=2, cpu=cpus.load, rate=2000)
            plain = b.dnsperf(sock.getsockname(), qfile, seconds=2, cpu=cpus.load, rate=2000)
            for key, (cls, name) in SPANS.items():
                spans[key].clear()
                setattr(cls, name, timed(spans, key, originals[key]))
            b.dnsperf(sock.getsockname(), qfile, seconds=2, cpu=cpus.load, rate=2000)
            for key, (cls, name) in SPANS.items():
                setattr(cls, name, originals[key])
            d50 = m.percentile(direct.latencies_s, 50) * 1e6
            s50 = m.percentile(plain.latencies_s, 50) * 1e6
            row = {key: statistics.median(v) / 1000 for key, v in spans.items() if v}
            rows.append((d50, s50, row))
            steps = ", ".join(f"{k} {v:.1f}" for k, v in row.items())
            print(
                f"direct p50 {d50:.0f} µs, through the stub {s50:.0f} µs "
                f"(added {s50 - d50:.0f}); steps, µs: {steps}",
                flush=True,
            )
        added = statistics.median(s - d for d, s, _ in rows)
        print(f"median added p50 {added:.0f} µs; medians of the steps, µs: " + ", ".join(
            f"{k} {statistics.median(r[k] for _, _, r in rows if k in r):.1f}" for k in SPANS
        ))  # fmt: skip
    finally:
        for key, (cls, name) in SPANS.items():
            setattr(cls, name, originals[key])
        if stub is not None:
            stub.reactor.stop()
        p.stop_all()
        p.rm_tree(base)


if __name__ == "__main__":
    p.install_cleanup()
    main()
