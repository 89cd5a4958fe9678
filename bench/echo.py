"""Where the override p50 gap to dnsmasq comes from: a minimal Python server beside both.

`sudo python3 bench/echo.py [ROUNDS]` (root: dnsmasq runs as root here; loopback only, about a
minute). Three servers answer the same 1000 names, each pinned to the server CPU, with dnsperf
at 2000 queries/s on the other, rounds interleaved as in `bench/run`:

- dnsmasq, as `bench/run` starts it;
- the least a Python server can do: one thread in a blocking `recvfrom()`, the reply looked up
  in a dict of built answers by the query's bytes after the ID, the ID put back, `sendto()`;
- portal's daemon, as `bench/run` starts it (its DNS thread does the same, through the stub).

The minimal server against dnsmasq is the interpreter's own cost per query (its wake-up, the
bytes and address objects, the lookup); portal against the minimal server is what the stub does
beyond that. Prints the median p50 of each and the paired differences per round.
"""

from __future__ import annotations

import socket
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import measure as m  # noqa: E402
import procs as p  # noqa: E402

import bench as b  # noqa: E402
from portal.core.answer import Answers, local_entries  # noqa: E402
from portal.core.model import Override  # noqa: E402


def minimal_server(host: str, records: dict[str, str]) -> tuple[tuple[str, int], threading.Event]:
    """The minimal Python server, in a thread of this process pinned to the server CPU."""
    overrides = {n: Override(n, (ip,), None) for n, ip in records.items()}
    answers = Answers(local_entries(overrides))
    replies: dict[bytes, bytes] = {}
    for name in records:
        query = p.a_query(name, 0)
        reply = answers.decide(query, time.time(), "127.0.0.1")
        assert isinstance(reply, bytes)
        replies[query[2:]] = reply[2:]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    stop = threading.Event()

    def serve() -> None:
        get, recvfrom, sendto = replies.get, sock.recvfrom, sock.sendto
        while not stop.is_set():
            data, addr = recvfrom(65535)
            reply = get(data[2:])
            if reply is not None:
                sendto(data[:2] + reply, addr)

    threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname(), stop


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    cpus = b.Cpus.pick()
    base = p.workdir("echo")
    p.PYCACHE = base / "pycache"
    p.install_like(base)
    if cpus.server is not None:
        import os

        os.sched_setaffinity(0, {cpus.server})  # the minimal server's thread runs here
    records = b.name_table("bench", 1000, 1)
    qfile = b.write_queries(base / "q", list(records))
    bus, _ = p.private_bus(base)
    try:
        (base / "dnsmasq").mkdir()
        dnsmasq = p.start_dnsmasq(base / "dnsmasq", "127.0.0.1", records, cpu=cpus.server)
        (base / "portal").mkdir()
        portal = p.start_portal(base / "portal", bus, "127.0.0.1", cpu=cpus.server)
        hosts = base / "hosts"
        hosts.write_text("".join(f"{ip} {name}\n" for name, ip in records.items()))
        p.portal_cli(bus, "import", str(hosts), "--ttl", "never", "--any-network")
        minimal, stop = minimal_server("127.0.0.1", records)
        targets = {"dnsmasq": dnsmasq, "minimal Python": minimal, "portal": portal}
        p50: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(rounds):
            for name, target in targets.items():
                run = b.dnsperf(target, qfile, seconds=2, cpu=cpus.load, rate=2000)
                lat = run.latencies_s or (run.avg_latency_s,)
                p50[name].append(m.percentile(lat, 50) * 1e6)
        stop.set()
        for name, values in p50.items():
            rounded = ", ".join(f"{v:.0f}" for v in values)
            print(f"{name:15s} p50 median {statistics.median(values):6.1f} µs  ({rounded})")
        for a, c in (
            ("minimal Python", "dnsmasq"),
            ("portal", "minimal Python"),
            ("portal", "dnsmasq"),
        ):
            diffs = [x - y for x, y in zip(p50[a], p50[c], strict=True)]
            print(
                f"{a} - {c}: median {statistics.median(diffs):+.1f} µs per round "
                f"({', '.join(f'{d:+.0f}' for d in diffs)})"
            )
    finally:
        p.stop_all()
        p.rm_tree(base)


if __name__ == "__main__":
    main()
