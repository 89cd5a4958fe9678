"""Soak: the real daemon for N minutes under mixed DNS load and override churn.

Starts a private dbus-daemon, a dnsmasq upstream and `portal daemon` on a random loopback port,
then for `--minutes` sends a steady mix of queries (UDP and TCP; overridden, forwarded and
missing names; A, AAAA, HTTPS; now and then a malformed packet) while adding and removing
overrides over the control API (and through the real CLI every so often). It samples the
daemon's resident memory and open file descriptors and fails when any answer was wrong or
missing, or when memory or descriptors keep growing.

Not part of the test suite (it runs for minutes): `python3 bench/soak.py --minutes 10`.
It must not touch anything but loopback and the processes it starts (stopped by PID).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import dns.asyncquery  # noqa: E402
import dns.exception  # noqa: E402
import dns.message  # noqa: E402
import dns.rcode  # noqa: E402

from portal.edges.client import Client  # noqa: E402
from tests.support.daemon import Daemon, run_cli  # noqa: E402
from tests.support.dbus import private_bus  # noqa: E402
from tests.support.dns import dnsmasq  # noqa: E402
from tests.support.procs import REPO as _REPO  # noqa: E402
from tests.support.procs import free_port  # noqa: E402

UPSTREAM = {"upstream.test": "192.0.2.10", "www.example.test": "192.0.2.20"}
STABLE = {f"stable{i}.soak.example": f"10.77.0.{i + 1}" for i in range(8)}  # never removed
CHURN = [f"churn{i}.soak.example" for i in range(64)]  # added and removed all the time


@dataclass
class Stats:
    queries: int = 0
    udp: int = 0
    tcp: int = 0
    garbage: int = 0
    tcp_refused: int = 0
    adds: int = 0
    removes: int = 0
    cli_adds: int = 0
    errors: list[str] = field(default_factory=list)
    rss_kib: list[tuple[float, int]] = field(default_factory=list)
    fds: list[tuple[float, int]] = field(default_factory=list)

    def error(self, text: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(text)
        else:
            self.errors[-1] = f"... and more ({text})"


def proc_value(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def addresses(msg: dns.message.Message) -> list[str]:
    return sorted(r.to_text() for rrset in msg.answer for r in rrset)


async def one_query(d: Daemon, stats: Stats, rng: random.Random) -> None:
    kind = rng.random()
    tcp = rng.random() < 0.1
    if kind < 0.02:  # malformed: must never stop the stub (answer or not, both fine)
        stats.garbage += 1
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(data, d.listen)
        return
    if kind < 0.45:
        name, addr = rng.choice(list(STABLE.items()))
        rdtype = rng.choice(["A", "A", "AAAA", "HTTPS"])
        want: list[str] | None = [addr] if rdtype == "A" else []
        rcode: int = dns.rcode.NOERROR
    elif kind < 0.75:
        name, addr = rng.choice(list(UPSTREAM.items()))
        rdtype, want, rcode = "A", [addr], dns.rcode.NOERROR
    else:
        name, rdtype, want, rcode = rng.choice(CHURN), "A", None, -1  # racing the churn
    q = dns.message.make_query(name, rdtype, use_edns=rng.choice([-1, 0]))
    stats.queries += 1
    try:
        if tcp:
            stats.tcp += 1
            msg = await dns.asyncquery.tcp(q, d.host, port=d.port, timeout=5)
        else:
            stats.udp += 1
            msg = await dns.asyncquery.udp(q, d.host, port=d.port, timeout=5)
    except dns.exception.Timeout:
        stats.error(f"timeout: {name} {rdtype} {'tcp' if tcp else 'udp'}")
        return
    except EOFError:
        # the stub closed the TCP connection unanswered: its cap on TCP clients (64) was full
        stats.tcp_refused += 1
        return
    except (OSError, dns.exception.DNSException) as exc:
        stats.error(f"{type(exc).__name__}: {name} {rdtype}: {exc}")
        return
    if rcode >= 0 and msg.rcode() != rcode:
        stats.error(f"rcode {dns.rcode.to_text(msg.rcode())} for {name} {rdtype}")
    elif want is not None and addresses(msg) != want:
        stats.error(f"wrong answer for {name} {rdtype}: {addresses(msg)} != {want}")


async def load(d: Daemon, stats: Stats, qps: int, until: float, seed: int) -> None:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()
    interval = 1.0 / qps
    next_at = loop.time()
    while loop.time() < until:
        next_at += interval
        task = loop.create_task(one_query(d, stats, rng))
        pending.add(task)
        task.add_done_callback(pending.discard)
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif len(pending) > 512:  # the client fell behind: do not pile up sockets
            await asyncio.sleep(0.01)
    if pending:
        await asyncio.wait(pending, timeout=10)


async def churn(d: Daemon, stats: Stats, until: float, seed: int) -> None:
    rng = random.Random(seed + 1)
    client = await Client.open(d.bus)
    present: set[str] = set()
    last_cli = time.monotonic()
    try:
        while time.monotonic() < until:
            name = rng.choice(CHURN)
            try:
                if name in present:
                    await client.call("RemoveOverride", "s", [name])
                    present.discard(name)
                    stats.removes += 1
                else:
                    ip = f"10.78.{rng.randrange(256)}.{rng.randrange(1, 255)}"
                    ttl = rng.choice([0, 5, 60, 0xFFFFFFFFFFFFFFFF])
                    await client.call("AddOverride", "sastb", [name, [ip], ttl, True])
                    present.add(name)
                    stats.adds += 1
            except Exception as exc:  # noqa: BLE001 - a 5 s override may expire first
                if "no override" not in str(exc):
                    stats.error(f"control {name}: {exc}")
                present.discard(name)
            if time.monotonic() - last_cli > 30:  # the real CLI now and then
                last_cli = time.monotonic()
                out = await asyncio.to_thread(
                    run_cli, "add", "cli.soak.example", "10.79.0.1", "--ttl", "1m", bus=d.bus
                )
                stats.cli_adds += 1
                if out.returncode != 0:
                    stats.error(f"cli add: {out.stderr.strip()}")
            await asyncio.sleep(rng.uniform(0.05, 0.3))
    finally:
        await client.aclose()


async def sample(d: Daemon, stats: Stats, until: float, every_s: float) -> None:
    assert d.proc is not None
    start = time.monotonic()
    while time.monotonic() < until:
        t = time.monotonic() - start
        stats.rss_kib.append((t, proc_value(d.proc.pid, "VmRSS")))
        stats.fds.append((t, len(os.listdir(f"/proc/{d.proc.pid}/fd"))))
        await asyncio.sleep(every_s)


def trend(samples: list[tuple[float, int]]) -> dict[str, Any]:
    """Warm-up excluded (the first fifth): first and last fifth's medians, least-squares slope."""
    if len(samples) < 5:
        return {"samples": len(samples)}
    cut = len(samples) // 5
    steady = samples[cut:]
    head = statistics.median(v for _, v in steady[: max(1, len(steady) // 4)])
    tail = statistics.median(v for _, v in steady[-max(1, len(steady) // 4) :])
    xs = [t for t, _ in steady]
    ys = [v for _, v in steady]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs) or 1.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den
    return {
        "samples": len(samples),
        "first": samples[0][1],
        "min": min(ys),
        "max": max(ys),
        "last": samples[-1][1],
        "steady_head_median": head,
        "steady_tail_median": tail,
        "slope_per_min": round(slope * 60, 2),
    }


async def run(d: Daemon, minutes: float, qps: int, seed: int, *, churning: bool) -> Stats:
    # pre-load the stable overrides through the real CLI
    for name, addr in STABLE.items():
        out = await asyncio.to_thread(
            run_cli, "add", name, addr, "--until-removed", "--any-network", bus=d.bus
        )
        if out.returncode != 0:
            raise SystemExit(f"setup failed: {out.stderr}")
    stats = Stats()
    until_mono = time.monotonic() + minutes * 60
    until_loop = asyncio.get_running_loop().time() + minutes * 60
    await asyncio.gather(
        load(d, stats, qps, until_loop, seed),
        churn(d, stats, until_mono, seed) if churning else asyncio.sleep(0),
        sample(d, stats, until_mono, max(1.0, minutes * 60 / 120)),
    )
    return stats


def daemon_args(bus: str, port: int, tmp: Path, upstream: str) -> list[str]:
    return [
        *("daemon", "--bus", bus, "--listen", f"127.0.0.1:{port}"),
        *("--state-dir", str(tmp / "state"), "--config", str(tmp / "none.toml")),
        *("--upstream", upstream, "--log-level", "info"),
        # loopback only: no probing of this machine's network, no resolver changes
        *("--network-source", "none", "--wiring", "none"),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--qps", type=int, default=400, help="queries per second offered")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-churn", action="store_true", help="queries only (to isolate memory)")
    p.add_argument("--json", metavar="FILE", help="also write the figures here")
    p.add_argument(
        "--max-rss-growth-kib",
        type=int,
        default=4096,
        help="fail when steady-state memory grows more than this",
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="portal-soak-") as tmp_s:
        tmp = Path(tmp_s)
        with private_bus() as bus, dnsmasq(UPSTREAM) as up:
            port = free_port()
            (tmp / "none.toml").touch()
            d = Daemon(
                bus=bus.address,
                host="127.0.0.1",
                port=port,
                state_dir=tmp / "state",
                args=daemon_args(bus.address, port, tmp, up.upstream),
                log_path=tmp / "daemon.log",
                env=dict(os.environ, PYTHONPATH=str(_REPO)),
            )
            d.start()
            try:
                started = time.monotonic()
                stats = asyncio.run(
                    run(d, args.minutes, args.qps, args.seed, churning=not args.no_churn)
                )
                elapsed = time.monotonic() - started
                alive = d.proc is not None and d.proc.poll() is None
                internal = d.log().count("internal error")
            finally:
                d.stop()
    rss, fds = trend(stats.rss_kib), trend(stats.fds)
    report = {
        "minutes": round(elapsed / 60, 2),
        "queries": stats.queries,
        "qps": round(stats.queries / elapsed, 1),
        "udp": stats.udp,
        "tcp": stats.tcp,
        "garbage_packets": stats.garbage,
        "tcp_closed_at_cap": stats.tcp_refused,
        "adds": stats.adds,
        "removes": stats.removes,
        "cli_adds": stats.cli_adds,
        "errors": len(stats.errors),
        "error_samples": stats.errors[:10],
        "internal_errors_logged": internal,
        "daemon_alive": alive,
        "rss_kib": rss,
        "open_fds": fds,
        # one sample in ten, (seconds, KiB): to see whether growth levels off
        "rss_series": [(round(t), v) for t, v in stats.rss_kib[::10]],
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    growth = rss.get("steady_tail_median", 0) - rss.get("steady_head_median", 0)
    fd_growth = fds.get("steady_tail_median", 0) - fds.get("steady_head_median", 0)
    ok = (
        not stats.errors
        and alive
        and internal == 0
        and growth <= args.max_rss_growth_kib
        and fd_growth <= 8
    )
    print("soak: " + ("PASS" if ok else "FAIL"), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
