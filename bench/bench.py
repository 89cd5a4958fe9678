"""The benchmark run behind `bench/run`: portal's DNS stub against dnsmasq and unbound, CLI and
start-up timings, memory and idle wakeups, plus profiles of the hot paths.

Writes bench/results/latest.md (the table for docs/benchmarks.md), latest.json (raw figures)
and the profiles beside them. Bounded in time (SIGALRM); every process it starts is pinned,
recorded and stopped by PID (procs.py). Sends traffic to loopback only. Asserts nothing: figures
are compared with their targets in the report, never in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import measure as m
import procs as p

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TIME_BOUND_S = 570  # the whole run, setup and cleanup included, stays under 10 minutes

SERVER_HOST = "127.0.0.1"
UPSTREAM_HOST = "127.0.0.2"  # the shared upstream lives on another loopback address
NAMES = 1000
SCENARIOS = ("answers", "forward", "profile", "idle", "startup", "cli", "imports", "modes")
# Network sources the daemon can run with (`network_source`), each measured for memory: real
# NetworkManager in the lab, the kernel's tables in the lab's laptop without NetworkManager,
# and none (the set-up of every other scenario).
MODES = ("nm", "netlink", "none")
MODE_NAMES = {"nm": "NetworkManager", "netlink": "netlink (no NetworkManager)", "none": "none"}
SETTLE_S = 3.0  # after a start or an import, before reading VmRSS: the probe child has exited


@dataclass
class Plan:
    reps: int = 3
    qps_s: int = 5  # dnsperf at full speed
    latency_s: int = 2  # dnsperf at a fixed rate, every latency recorded
    # latency-only rounds after the `reps` full ones, interleaved across servers: a p50 on a
    # shared machine moves by 10-20 % between runs seconds apart, so take more of them
    extra_latency_reps: int = 4
    rate_qps: int = 2000  # "moderate": far below every server's limit
    idle_s: int = 60
    start_reps: int = 7
    cli_reps: int = 11
    profile_s: int = 5


QUICK = Plan(
    reps=1,
    qps_s=2,
    latency_s=1,
    extra_latency_reps=0,
    idle_s=10,
    start_reps=3,
    cli_reps=3,
    profile_s=2,
)


@dataclass
class Cpus:
    server: int | None
    load: int | None

    @classmethod
    def pick(cls) -> Cpus:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(None, None)  # one core: nothing to separate; the report says so
        return cls(cpus[0], cpus[1])


@dataclass
class Results:
    data: dict[str, Any] = field(default_factory=dict)

    def put(self, section: str, key: str, value: Any) -> None:
        self.data.setdefault(section, {})[key] = value

    def get(self, section: str, key: str, default: Any = None) -> Any:
        return self.data.get(section, {}).get(key, default)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- tools ---------------------------------------------------------------------------------------

APT = {
    "dnsperf": "dnsperf",
    "dnsmasq": "dnsmasq-base",
    "unbound": "unbound",
    "dbus-daemon": "dbus-daemon",
    "taskset": "util-linux",
}
PYPI = {"py-spy": "py-spy", "pyinstrument": "pyinstrument"}


def ensure_tools(*, install: bool) -> list[str]:
    """Install what is missing (apt as root, pip for the profilers); return what still is."""
    missing = [tool for tool in APT if shutil.which(tool) is None]
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"installing {', '.join(APT[t] for t in missing)} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends"]
            + sorted({APT[t] for t in missing}),
            env=env,
            check=False,
            timeout=300,
        )
    missing_py = [tool for tool in PYPI if _tool(tool) is None]
    if missing_py and install:
        log(f"installing {', '.join(missing_py)} with pip")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", *(PYPI[t] for t in missing_py)],
            check=False,
            timeout=300,
        )
    return [t for t in APT if shutil.which(t) is None] + [t for t in PYPI if _tool(t) is None]


def _tool(name: str) -> str | None:
    """A Python tool installed for this interpreter (pip puts it beside it), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def versions() -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[0] if text else "?"

    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": f"{model}, {os.cpu_count()} CPUs",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dnsmasq": first_line(["dnsmasq", "--version"]),
        "unbound": line_starting(["unbound", "-V"], "Version"),
        "dnsperf": line_starting(["dnsperf", "-H"], "Version"),
        "udp_batch": udp_batch_in_use(),
    }


def udp_batch_in_use() -> str:
    """How the measured portal reads and sends UDP: portal/edges/udp_batch.py's choice, made
    by the same interpreter and environment as the daemon's (PORTAL_NO_UDPBATCH included)."""
    code = "from portal.edges import udp_batch; print(udp_batch.NATIVE)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=p.portal_env(),
    ).stdout.strip()
    if out == "True":
        return "recvmmsg/sendmmsg (C extension portal._udpbatch)"
    if out == "False":
        return "one recvfrom/sendto per datagram (pure Python: the extension not built or off)"
    return "unknown (the tree has no portal/edges/udp_batch.py)"


def line_starting(cmd: list[str], prefix: str) -> str:
    """The first line of `cmd`'s output that starts with `prefix`, or "?"."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
    return next((line for line in out.splitlines() if line.startswith(prefix)), "?")


# -- /proc ---------------------------------------------------------------------------------------


def ticks(pid: int) -> int:
    return m.cpu_ticks(Path(f"/proc/{pid}/stat").read_text())


def rss_kib(pid: int) -> int:
    return m.status_field(Path(f"/proc/{pid}/status").read_text(), "VmRSS")


def switches(pid: int) -> int:
    texts = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            texts.append((task / "status").read_text())
        except OSError:  # a thread that just ended
            continue
    return m.context_switches(texts)


def oncpu_ms(pid: int) -> float:
    """CPU time of all live threads so far, in ns precision (/proc/PID/task/*/schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e6


def timed_run(cmd: list[str], env: dict[str, str] | None) -> tuple[float, float, int, bytes]:
    """(wall ms, CPU ms of the child, exit status, stderr). CPU time, unlike wall time, barely
    moves when other work shares the machine."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd="/",  # `python3 -c` puts the working directory first on sys.path: keep it neutral
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = (time.perf_counter() - t0) * 1e3
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    return wall, (usage.ru_utime + usage.ru_stime) * 1e3, proc.returncode, err


CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- dnsperf -------------------------------------------------------------------------------------


def dnsperf(
    server: p.Server | tuple[str, int],
    qfile: Path,
    *,
    seconds: int,
    cpu: int | None,
    rate: int | None = None,
) -> m.PerfRun:
    host, port = (server.host, server.port) if isinstance(server, p.Server) else server
    cmd = ["taskset", "-c", str(cpu)] if cpu is not None else []
    cmd += ["dnsperf", "-s", host, "-p", str(port), "-d", str(qfile), "-l", str(seconds)]
    cmd += ["-t", "2"]
    if rate is not None:
        cmd += ["-Q", str(rate), "-v"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    run = m.parse_dnsperf(out.stdout + out.stderr)
    codes = m.rcodes(out.stdout)
    if codes and set(codes) != {"NOERROR"}:
        log(f"  warning: {host}:{port} answered {codes}")
    return run


def load_run(
    res: Results,
    section: str,
    label: str,
    target: p.Server | tuple[str, int],
    pid: int | None,
    qfile: Path,
    plan: Plan,
    cpus: Cpus,
    *,
    full: bool = True,
) -> None:
    """One full-speed run (QPS, CPU per query) and one fixed-rate run (latencies); with
    `full=False` the fixed-rate run only."""
    run: dict[str, float] = {}
    if full:
        before = ticks(pid) if pid else 0
        fast = dnsperf(target, qfile, seconds=plan.qps_s, cpu=cpus.load)
        run["cpu_us_per_query"] = (
            (ticks(pid) - before) / CLK_TCK * 1e6 / max(fast.completed, 1) if pid else float("nan")
        )
        run["qps"], run["lost"] = fast.qps, fast.lost
    slow = dnsperf(target, qfile, seconds=plan.latency_s, cpu=cpus.load, rate=plan.rate_qps)
    lat = slow.latencies_s or (slow.avg_latency_s,)
    run["p50_ms"] = m.percentile(lat, 50) * 1e3
    run["p99_ms"] = m.percentile(lat, 99) * 1e3
    run["lost_at_rate"] = slow.lost
    runs = res.get(section, label, [])
    runs.append(run)
    res.put(section, label, runs)
    speed = f"{run['qps']:,.0f} qps, {run['cpu_us_per_query']:.1f} µs CPU/query, " if full else ""
    log(f"  {section}/{label}: {speed}p50 {run['p50_ms']:.3f} ms, p99 {run['p99_ms']:.3f} ms")


# -- the run -------------------------------------------------------------------------------------


def name_table(prefix: str, count: int, net: int) -> dict[str, str]:
    return {f"{prefix}-{i:04d}.example": f"10.{net}.{i // 250}.{i % 250 + 1}" for i in range(count)}


def write_queries(path: Path, names: Sequence[str]) -> Path:
    path.write_text("".join(f"{n} A\n" for n in names))
    return path


class Bench:
    def __init__(self, plan: Plan, only: Sequence[str], res: Results, label: str) -> None:
        self.label = label  # prefix of the side files (profiles, import times)
        self.plan = plan
        self.only = set(only)
        self.res = res
        self.cpus = Cpus.pick()
        self.base = p.workdir("run")
        p.PYCACHE = self.base / "pycache"
        p.install_like(self.base)
        self.overrides = name_table("bench", NAMES, 1)
        self.forwarded = name_table("fwd", NAMES, 2)
        self.q_over = write_queries(self.base / "overrides.q", list(self.overrides))
        self.q_fwd = write_queries(self.base / "forward.q", list(self.forwarded))
        self.servers: dict[str, p.Server] = {}

    def wants(self, *names: str) -> bool:
        return bool(self.only.intersection(names))

    def run(self) -> None:
        res = self.res
        res.put(
            "machine", "cpus", f"server on CPU {self.cpus.server}, load on CPU {self.cpus.load}"
        )
        res.put("machine", "loadavg_start", os.getloadavg())
        bus, _ = p.private_bus(self.base)
        self.bus = bus
        if self.wants("answers", "forward", "profile", "idle"):
            self.start_servers()
            if self.wants("answers"):
                self.answers()
            if self.wants("forward"):
                self.forward()
            if self.wants("profile"):
                self.profile()
            self.memory("after_load")
            if self.wants("idle"):
                self.idle()
            for s in self.servers.values():
                s.stop()
        if self.wants("startup"):
            self.startup()
        if self.wants("cli", "imports"):
            self.cli()
        if self.wants("modes"):
            self.modes()
        res.put("machine", "loadavg_end", os.getloadavg())

    def start_servers(self) -> None:
        cpus, base = self.cpus, self.base
        log("starting the shared upstream (unbound with local data) and the servers")
        up_dir = base / "upstream"
        up_dir.mkdir()
        first_fwd = next(iter(self.forwarded))
        upstream = p.start_unbound(
            up_dir,
            UPSTREAM_HOST,
            self.forwarded,
            cpu=cpus.load,
            wait_name=first_fwd,
            label="upstream",
        )
        self.upstream = upstream
        up = f"{upstream.host}:{upstream.port}"
        first = next(iter(self.overrides))
        pdir = base / "portal"
        pdir.mkdir()
        portal = p.start_portal(pdir, self.bus, SERVER_HOST, cpu=cpus.server, upstreams=[up])
        self.res.put("memory", "portal_empty_kib", rss_kib(portal.pid))
        hosts = pdir / "hosts"
        hosts.write_text("".join(f"{ip} {name}\n" for name, ip in self.overrides.items()))
        out = p.portal_cli(self.bus, "import", str(hosts), "--ttl", "never", "--any-network")
        if out.returncode != 0 or p.ask_a(portal.host, portal.port, first) != self.overrides[first]:
            raise RuntimeError(f"portal import failed: {out.stderr.decode()}\n{portal.log()}")
        self.portal_state = pdir / "state"
        ddir = base / "dnsmasq"
        ddir.mkdir()
        dnsmasq = p.start_dnsmasq(
            ddir, SERVER_HOST, self.overrides, cpu=cpus.server, upstream=up, wait_name=first
        )
        udir = base / "unbound"
        udir.mkdir()
        unbound = p.start_unbound(
            udir,
            SERVER_HOST,
            self.overrides,
            cpu=cpus.server,
            wait_name=first,
            forward_to=f"{upstream.host}@{upstream.port}",
        )
        self.servers = {"portal": portal, "dnsmasq": dnsmasq, "unbound": unbound}
        for name, s in self.servers.items():
            if p.ask_a(s.host, s.port, first_fwd) != self.forwarded[first_fwd]:
                raise RuntimeError(f"{name} does not forward to the upstream")
        self.memory("after_start")

    def memory(self, when: str) -> None:
        for name, s in self.servers.items():
            if s.alive():
                self.res.put("memory", f"{name}_{when}_kib", rss_kib(s.pid))

    def answers(self) -> None:
        log(f"override answers: {NAMES} names, {self.plan.reps} rounds")
        for i in range(self.plan.reps + self.plan.extra_latency_reps):
            for name, s in self.servers.items():
                load_run(
                    self.res, "answers", name, s, s.pid, self.q_over, self.plan, self.cpus,
                    full=i < self.plan.reps,
                )  # fmt: skip

    def forward(self) -> None:
        log(f"forwarding: {NAMES} names to one upstream, {self.plan.reps} rounds")
        up = self.upstream
        for i in range(self.plan.reps + self.plan.extra_latency_reps):
            full = i < self.plan.reps
            for name in ("portal", "dnsmasq", "unbound"):
                s = self.servers[name]
                load_run(
                    self.res, "forward", name, s, s.pid, self.q_fwd, self.plan, self.cpus,
                    full=full,
                )  # fmt: skip
            load_run(
                self.res, "forward", "direct", up, None, self.q_fwd, self.plan, self.cpus,
                full=full,
            )  # fmt: skip

    def profile(self) -> None:
        spy = _tool("py-spy")
        if spy is None:
            log("py-spy missing: no profile")
            return
        portal = self.servers["portal"]
        for kind, qfile in (("answers", self.q_over), ("forward", self.q_fwd)):
            out = RESULTS / f"{self.label}-profile-{kind}.txt"
            cmd = ["taskset", "-c", str(self.cpus.load)] if self.cpus.load is not None else []
            cmd += [
                spy,
                "record",
                "--pid",
                str(portal.pid),
                "--duration",
                str(self.plan.profile_s),
                "--rate",
                "500",
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
            ]
            spy_proc = p.spawn(cmd, cpu=None, log=self.base / "py-spy.log")
            time.sleep(0.3)
            dnsperf(portal, qfile, seconds=self.plan.profile_s, cpu=self.cpus.load)
            try:
                spy_proc.wait(self.plan.profile_s + 30)
            finally:
                p.stop(spy_proc)
            if not out.exists():
                log(f"py-spy wrote no profile: {(self.base / 'py-spy.log').read_text()[-500:]}")
                continue
            own, total, samples = m.collapsed_profile(out.read_text())
            self.res.put(
                "profile",
                kind,
                {
                    "samples": samples,
                    "self": own.most_common(12),
                    "total": total.most_common(20),
                },
            )
            log(f"  profile/{kind}: {samples} samples, top {own.most_common(3)}")

    def idle(self) -> None:
        log(f"idle: context switches of every server over {self.plan.idle_s} s")
        time.sleep(2)  # let the last replies drain
        before = {n: switches(s.pid) for n, s in self.servers.items()}
        time.sleep(self.plan.idle_s)
        for n, s in self.servers.items():
            self.res.put(
                "idle", n, {"switches": switches(s.pid) - before[n], "s": self.plan.idle_s}
            )
        self.memory("after_idle")

    def startup(self) -> None:
        log(f"start to first answer, {self.plan.start_reps} starts each")
        first = next(iter(self.overrides))
        want = self.overrides[first]
        state = getattr(self, "portal_state", None)
        if state is None or not state.exists():
            state = self._portal_state_for_startup()
        for _ in range(self.plan.start_reps):
            for name in ("portal", "dnsmasq", "unbound"):
                d = self.base / f"start-{name}"
                d.mkdir(exist_ok=True)
                port = p.free_port(SERVER_HOST)
                if name == "portal":
                    shutil.rmtree(d / "state", ignore_errors=True)
                    shutil.copytree(state, d / "state")
                    (d / "portal.toml").write_text(p.PORTAL_CONFIG)
                    cmd = [
                        *p.portal_cmd(),
                        "daemon",
                        "--bus",
                        self.bus,
                        "--listen",
                        f"{SERVER_HOST}:{port}",
                        "--state-dir",
                        str(d / "state"),
                        "--config",
                        str(d / "portal.toml"),
                        "--log-level",
                        "info",
                        *p.PORTAL_FLAGS,
                    ]
                    env: dict[str, str] | None = p.portal_env()
                elif name == "dnsmasq":
                    cmd = p.dnsmasq_cmd(SERVER_HOST, port, self.overrides, upstream=None)
                    env = None
                else:
                    conf = d / "unbound.conf"
                    conf.write_text(p.unbound_conf(SERVER_HOST, port, self.overrides, d))
                    cmd = ["unbound", "-d", "-c", str(conf)]
                    env = None
                t0 = time.perf_counter()
                proc = p.spawn(cmd, cpu=self.cpus.server, log=d / "log", env=env)
                ok = p.wait_until(
                    lambda port=port: p.ask_a(SERVER_HOST, port, first, 0.005) == want,  # type: ignore[misc]
                    15,
                    0.0005,
                )
                elapsed_ms = (time.perf_counter() - t0) * 1e3
                cpu_ms = oncpu_ms(proc.pid) if ok else 0.0
                p.stop(proc)
                if not ok:
                    log(f"  {name} never answered:\n{(d / 'log').read_text()[-1000:]}")
                    continue
                runs = self.res.get("startup", name, [])
                runs.append(elapsed_ms)
                self.res.put("startup", name, runs)
                cpu = self.res.get("startup_cpu", name, [])
                cpu.append(cpu_ms)
                self.res.put("startup_cpu", name, cpu)
        for name in ("portal", "dnsmasq", "unbound"):
            runs = self.res.get("startup", name, [])
            if runs:
                cpu = self.res.get("startup_cpu", name)
                log(
                    f"  {name}: median {m.median(runs):.1f} ms, CPU {m.median(cpu):.1f} ms "
                    f"over {len(runs)} starts"
                )
        self._startup_imports(state, first, want)

    def _startup_imports(self, state: Path, first: str, want: str) -> None:
        """One more start under `-X importtime`, killed at its first answer: what the daemon
        imported before it could answer (the D-Bus imports come after, by design)."""
        d = self.base / "start-importtime"
        shutil.copytree(state, d / "state")
        (d / "portal.toml").write_text(p.PORTAL_CONFIG)
        port = p.free_port(SERVER_HOST)
        cmd = [p.PYTHON, "-X", "importtime", *p.portal_cmd()[1:], "daemon"]
        cmd += ["--bus", self.bus, "--listen", f"{SERVER_HOST}:{port}"]
        cmd += ["--state-dir", str(d / "state"), "--config", str(d / "portal.toml")]
        cmd += p.PORTAL_FLAGS
        proc = p.spawn(cmd, cpu=self.cpus.server, log=d / "log", env=p.portal_env())
        ok = p.wait_until(lambda: p.ask_a(SERVER_HOST, port, first, 0.005) == want, 15, 0.0005)
        proc.kill()  # at once: what it imports after its first answer is not the question
        p.stop(proc)
        if not ok:
            log("  the daemon under -X importtime never answered")
            return
        text = (d / "log").read_text(errors="replace")
        (RESULTS / f"{self.label}-importtime-daemon.txt").write_text(text)
        costs = m.parse_importtime(text)
        top = m.top_imports(costs, depth=1, count=16)
        self.res.put("startup_imports", "top", [(c.module, c.cumulative_us, c.depth) for c in top])
        self.res.put("startup_imports", "total_us", sum(c.self_us for c in costs))

    def _portal_state_for_startup(self) -> Path:
        """A state dir holding the same 1000 overrides, made through the CLI."""
        d = self.base / "state-maker"
        d.mkdir()
        portal = p.start_portal(d, self.bus, SERVER_HOST, cpu=self.cpus.server)
        hosts = d / "hosts"
        hosts.write_text("".join(f"{ip} {name}\n" for name, ip in self.overrides.items()))
        p.portal_cli(self.bus, "import", str(hosts), "--ttl", "never", "--any-network")
        portal.stop()
        return d / "state"

    def cli(self) -> None:
        log("CLI: portal add → first correct answer; list; status (a daemon with 3 overrides)")
        d = self.base / "cli"
        d.mkdir()
        portal = p.start_portal(d, self.bus, SERVER_HOST, cpu=self.cpus.server)
        self.servers = {}
        try:
            for i in range(3):
                p.portal_cli(
                    self.bus, "add", f"seed-{i}.example", f"10.3.0.{i + 1}", "--any-network"
                )
            if self.wants("cli"):
                self._cli_timings(portal)
            if self.wants("imports"):
                self._imports()
        finally:
            portal.stop()

    def _cli_timings(self, portal: p.Server) -> None:
        reps = self.plan.cli_reps
        timed: dict[str, list[float]] = {}

        cpu: dict[str, list[float]] = {}

        def run(label: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
            wall, used, rc, err = timed_run(cmd, env)
            if rc != 0:
                log(f"  {label} failed: {err.decode()[-300:]}")
                return
            timed.setdefault(label, []).append(wall)
            cpu.setdefault(label, []).append(used)

        env = p.portal_env()
        # one untimed run of each first, as hyperfine's --warmup: the bytecode cache and the
        # page cache are then what they are on a machine where portal has run before
        for args in (["add", "warm.example", "10.4.1.1", "--any-network"], ["list"], ["status"]):
            timed_run([*p.portal_cmd(), *args, "--bus", self.bus], env)
        for i in range(reps):
            name, ip = f"cli-{i}.example", f"10.4.0.{i + 1}"
            cmd = [*p.portal_cmd(), "add", name, ip, "--any-network", "--bus", self.bus]
            t0 = time.perf_counter()
            wall, used, rc, err = timed_run(cmd, env)
            got = p.ask_a(portal.host, portal.port, name, 1.0)
            total_ms = (time.perf_counter() - t0) * 1e3
            if rc == 0 and got == ip:
                timed.setdefault("add_to_answer", []).append(total_ms)
                cpu.setdefault("add_to_answer", []).append(used)
            else:
                log(f"  add failed: {err.decode()[-300:]} (answer {got})")
            run("list", [*p.portal_cmd(), "list", "--bus", self.bus], env)
            run("status", [*p.portal_cmd(), "status", "--bus", self.bus], env)
            run("python_floor", [p.PYTHON, "-c", "pass"], env)
            run("import_cli", [p.PYTHON, "-c", "import portal.cli"], env)
        for label, values in timed.items():
            self.res.put("cli", label, values)
            self.res.put("cli_cpu", label, cpu[label])
            log(f"  {label}: median {m.median(values):.1f} ms, CPU {m.median(cpu[label]):.1f} ms")

    def _imports(self) -> None:
        cmd = [p.PYTHON, "-X", "importtime", *p.portal_cmd()[1:], "list", "--bus", self.bus]
        out = subprocess.run(
            cmd, capture_output=True, text=True, env=p.portal_env(), timeout=60, check=False
        )
        costs = m.parse_importtime(out.stderr)
        (RESULTS / f"{self.label}-importtime-list.txt").write_text(out.stderr)
        top = m.top_imports(costs, depth=1, count=12)
        self.res.put("imports", "list", [(c.module, c.cumulative_us, c.depth) for c in top])
        total = sum(c.self_us for c in costs)
        self.res.put("imports", "total_us", total)
        watched = {
            c.module: c.cumulative_us
            for c in costs
            if c.module
            in (
                "asyncio",
                "dns.message",
                "dbus_next.aio",
                "dbus_next",
                "argparse",
                "json",
                "portal.cli",
                "portal.edges.client",
            )
        }
        self.res.put("imports", "watched", watched)
        log(f"  imports: {total / 1e3:.1f} ms in all; {watched}")
        pyi = _tool("pyinstrument")
        if pyi:
            prof = RESULTS / f"{self.label}-pyinstrument-list.txt"
            subprocess.run(
                [
                    pyi,
                    "-r",
                    "text",
                    "-o",
                    str(prof),
                    *p.portal_cmd()[1:],
                    "list",
                    "--bus",
                    self.bus,
                ],
                capture_output=True,
                env=p.portal_env(),
                timeout=60,
                check=False,
            )

    def modes(self) -> None:
        """Idle RSS of the daemon in each network mode, with no override and with 1000."""
        log("memory per mode: NetworkManager and netlink in the lab, none here; 0 and 1000 names")
        hosts = self.base / "modes-hosts"
        hosts.write_text("".join(f"{ip} {name}\n" for name, ip in self.overrides.items()))
        for mode in MODES:
            try:
                if mode == "none":
                    figures = self._mode_none(hosts)
                else:
                    figures = self._mode_in_lab(mode, hosts)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                log(f"  {mode}: not measured: {exc}")
                continue
            self.res.put("modes", mode, figures)
            log(
                f"  {mode}: "
                + ", ".join(
                    f"{k.removesuffix('_kib')} {v / 1024:.1f} MiB" for k, v in figures.items()
                )
            )

    def _mode_none(self, hosts: Path) -> dict[str, Any]:
        d = self.base / "mode-none"
        d.mkdir()
        portal = p.start_portal(d, self.bus, SERVER_HOST, cpu=self.cpus.server)
        try:
            time.sleep(SETTLE_S)
            empty = rss_kib(portal.pid)
            out = p.portal_cli(self.bus, "import", str(hosts), "--ttl", "never", "--any-network")
            if out.returncode != 0:
                raise RuntimeError(f"import failed: {out.stderr.decode()[-300:]}")
            time.sleep(SETTLE_S)
            return {"none_empty_kib": empty, "none_loaded_kib": rss_kib(portal.pid)}
        finally:
            portal.stop()

    def _mode_in_lab(self, mode: str, hosts: Path) -> dict[str, Any]:
        """The daemon on the lab's laptop (tests/lab/lab.py), twice: on the hotel network
        signed in (online: the probe round, in a child process, finds nothing to do), then
        freshly started behind its portal (captive: the daemon also pins the sign-in host,
        looked up through the venue's DNS)."""
        sys.path.insert(0, str(HERE.parent))
        from tests.lab.lab import Lab, LabError, unavailable_reason

        reason = unavailable_reason(nm=mode == "nm")
        if reason:
            raise RuntimeError(reason)
        env = {k: v for k, v in p.portal_env().items() if k.startswith("PYTHON")}
        cmd = p.portal_cmd()
        policy = p.REPO / "dbus" / "org.portalhelper.Portal1.conf"
        figures: dict[str, Any] = {}
        try:
            with Lab(dns_mode="hijack", nm=mode == "nm", bus_policy_files=[policy]) as lab:
                if mode == "nm":
                    lab.wait_nm_activated()
                lab.login()
                figures |= self._lab_daemon(lab, cmd, env, mode, hosts, "online")
                lab.logout()
                figures |= self._lab_daemon(lab, cmd, env, mode, hosts, "captive")
        except LabError as exc:
            raise RuntimeError(str(exc)) from exc
        return figures

    def _lab_daemon(
        self, lab: Any, cmd: list[str], env: dict[str, str], mode: str, hosts: Path, want: str
    ) -> dict[str, Any]:
        state_dir = lab.run_dir / f"portal-state-{want}"
        argv = [*cmd, "daemon", "--log-level", "info", "--listen", "127.0.0.153:53"]
        argv += ["--state-dir", str(state_dir), "--config", "/dev/null"]
        argv += ["--wiring", "none", "--network-source", mode]
        daemon = lab.spawn_laptop(argv, env=env, name=f"portal-daemon-{want}")
        try:

            def state() -> str:
                out = lab.run_laptop([*cmd, "status", "--json"], env=env)
                return str(json.loads(out.stdout)["state"]) if out.returncode == 0 else ""

            if not p.wait_until(lambda: state() == want, 40, 0.2):
                raise RuntimeError(f"never {want} ({state()}): {daemon.read_log()[-1000:]}")
            time.sleep(SETTLE_S)
            empty = rss_kib(daemon.pid)
            out = lab.run_laptop(
                [*cmd, "import", str(hosts), "--ttl", "never", "--any-network"], env=env
            )
            if out.returncode != 0:
                raise RuntimeError(f"import failed: {out.stderr[-300:]}")
            time.sleep(SETTLE_S)
            return {f"{want}_empty_kib": empty, f"{want}_loaded_kib": rss_kib(daemon.pid)}
        finally:
            daemon.stop()


# -- the report ----------------------------------------------------------------------------------


def med(runs: list[dict[str, float]] | None, key: str) -> float:
    """The median of `key` over the runs that measured it (latency-only rounds have no QPS)."""
    values = [r[key] for r in runs or () if key in r]
    return m.median(values) if values else float("nan")


def report(res: Results, plan: Plan, vers: dict[str, str], label: str) -> str:
    d = res.data
    lines = [f"# portal benchmarks — {label}", ""]
    lines.append(
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {vers['cpu']}, "
        f"kernel {vers['kernel']}, Python {vers['python']}; {vers['dnsmasq']}; "
        f"unbound {vers['unbound'].removeprefix('Version ')}; dnsperf "
        f"{vers['dnsperf'].removeprefix('Version ')}. {res.get('machine', 'cpus')}. "
        f"portal's UDP path: {vers.get('udp_batch', '?')}. "
        f"Load average at start {_load(res.get('machine', 'loadavg_start'))}, "
        f"at end {_load(res.get('machine', 'loadavg_end'))}. Median of {plan.reps} "
        f"round(s) at full speed for {plan.qps_s} s; latency: median of "
        f"{plan.reps + plan.extra_latency_reps} round(s) at {plan.rate_qps} qps for "
        f"{plan.latency_s} s, servers in turn."
    )
    lines += ["", "## Targets", ""]
    lines.append(targets_table(res))
    for section, title in (
        ("answers", "Override answers (1000 names)"),
        ("forward", "Forwarding to one local upstream"),
    ):
        if section not in d:
            continue
        lines += ["", f"## {title}", ""]
        rows = []
        ref = d[section].get("dnsmasq")
        uref = d[section].get("unbound")
        direct_p50 = med(d[section].get("direct"), "p50_ms")
        for name, runs in d[section].items():
            row = [
                name,
                m.fmt_num(med(runs, "qps")),
                f"{m.ratio(med(runs, 'qps'), med(ref, 'qps')):.2f}×" if ref else "–",
                f"{m.ratio(med(runs, 'qps'), med(uref, 'qps')):.2f}×" if uref else "–",
                m.fmt_num(med(runs, "cpu_us_per_query"), 1),
                m.fmt_num(med(runs, "p50_ms"), 3),
                m.fmt_num(med(runs, "p99_ms"), 3),
            ]
            if section == "forward":
                added = med(runs, "p50_ms") - direct_p50 if name != "direct" else float("nan")
                row.append(m.fmt_num(added, 3))
            rows.append(row)
        header = ["server", "QPS", "vs dnsmasq", "vs unbound", "CPU µs/query", "p50 ms", "p99 ms"]
        if section == "forward":
            header.append("added p50 ms")
        lines.append(m.markdown_table(header, rows))
    if "startup" in d:
        lines += ["", "## Start to first answer (1000 names loaded)", ""]
        cpu = d.get("startup_cpu", {})
        rows = [
            [
                n,
                f"{m.median(v):.1f}",
                f"{min(v):.1f}",
                f"{max(v):.1f}",
                _cpu(cpu.get(n)),
                str(len(v)),
            ]
            for n, v in d["startup"].items()
            if v
        ]
        header = ["server", "median ms", "min", "max", "CPU ms (median)", "starts"]
        lines.append(m.markdown_table(header, rows))
    if "startup_imports" in d:
        lines += ["", "## Daemon imports up to its first answer (`-X importtime`)", ""]
        rows = [
            [f"`{'  ' * depth}{mod}`", f"{us / 1e3:.1f}"]
            for mod, us, depth in d["startup_imports"]["top"]
        ]
        lines.append(m.markdown_table(["module (cumulative)", "ms"], rows))
        total = d["startup_imports"]["total_us"] / 1e3
        lines.append(
            f"\nAll imports together: {total:.1f} ms (the daemon killed at its first answer)."
        )
    if "cli" in d:
        lines += ["", "## CLI (daemon with a few overrides, private bus)", ""]
        names = {
            "add_to_answer": "portal add → first answer",
            "list": "portal list",
            "status": "portal status",
            "python_floor": "python3 -c pass (floor)",
            "import_cli": "python3 -c 'import portal.cli'",
        }
        cpu = d.get("cli_cpu", {})
        rows = [
            [
                names.get(k, k),
                f"{m.median(v):.1f}",
                f"{min(v):.1f}",
                f"{max(v):.1f}",
                _cpu(cpu.get(k)),
            ]
            for k, v in d["cli"].items()
        ]
        header = ["command", "median ms", "min", "max", "CPU ms (median)"]
        lines.append(m.markdown_table(header, rows))
    if "memory" in d or "idle" in d:
        lines += ["", "## Memory and idle wakeups", ""]
        rows = []
        for n in ("portal", "dnsmasq", "unbound"):
            mem = d.get("memory", {})
            idle = d.get("idle", {}).get(n)
            rows.append(
                [
                    n,
                    _mib(mem.get(f"{n}_after_start_kib")),
                    _mib(mem.get(f"{n}_after_load_kib")),
                    _mib(mem.get(f"{n}_after_idle_kib")),
                    f"{idle['switches']} in {idle['s']} s" if idle else "–",
                ]
            )
        lines.append(
            m.markdown_table(
                ["server", "RSS after start", "after load", "after idle", "wakeups idle"], rows
            )
        )
        if "portal_empty_kib" in d.get("memory", {}):
            lines.append(f"\nportal with no override: {_mib(d['memory']['portal_empty_kib'])}.")
    if "modes" in d:
        lines += ["", "## Idle memory per network mode (VmRSS)", ""]
        rows = [
            [MODE_NAMES[mode]]
            + [
                _mib(fig.get(f"{situation}_{kind}_kib"))
                for situation in ("none", "online", "captive")
                for kind in ("empty", "loaded")
            ]
            for mode, fig in d["modes"].items()
        ]
        header = ["network source", "no network: 0", f"{NAMES}", "online: 0", f"{NAMES}"]
        header += ["behind a portal: 0", f"{NAMES}"]
        lines.append(m.markdown_table(header, rows))
        lines.append(
            f"\n0 and {NAMES}: overrides loaded. NetworkManager and netlink run on the lab's "
            "laptop (tests/lab/lab.py), online (signed in) and then, freshly started, behind the "
            "hotel's portal; none runs here, with no network source."
        )
    if "profile" in d:
        lines += ["", "## Where portal spends its time (py-spy, self samples)", ""]
        for kind, prof in d["profile"].items():
            total = max(prof["samples"], 1)
            rows = [[f"`{fn}`", f"{100 * n / total:.1f}%"] for fn, n in prof["self"][:10]]
            lines += [
                f"{kind} ({prof['samples']} samples):",
                "",
                m.markdown_table(["function", "self"], rows),
                "",
            ]
    if "imports" in d:
        lines += ["", "## CLI imports (`python3 -X importtime … list`)", ""]
        rows = [[f"`{mod}`", f"{us / 1e3:.1f}"] for mod, us, _depth in d["imports"]["list"]]
        lines.append(m.markdown_table(["module (cumulative)", "ms"], rows))
        lines.append(f"\nAll imports together: {d['imports']['total_us'] / 1e3:.1f} ms.")
    return "\n".join(lines) + "\n"


def _cpu(values: list[float] | None) -> str:
    return f"{m.median(values):.1f}" if values else "–"


def _load(v: Any) -> str:
    return "/".join(f"{x:.1f}" for x in v) if v else "?"


def _mib(kib: int | None) -> str:
    return f"{kib / 1024:.1f} MiB" if kib else "–"


def targets_table(res: Results) -> str:
    d = res.data
    rows: list[list[str]] = []

    def add(
        what: str,
        value: str,
        ref: str,
        ratio: str,
        target: str,
        ok: bool | None,
        unbound: str = "–",
    ) -> None:
        rows.append([what, value, ref, ratio, unbound, target, m.verdict(ok)])

    def vs_unbound(section: dict[str, Any], key: str, value: float, unit: str, digits: int) -> str:
        """unbound's figure and portal's ratio to it (only where unbound ran as that server)."""
        if not section.get("unbound"):
            return "–"
        u = med(section["unbound"], key)
        return f"{m.fmt_num(u, digits)}{unit} ({m.ratio(value, u):.2f}×)"

    a = d.get("answers", {})
    if a.get("portal") and a.get("dnsmasq"):
        pq, dq = med(a["portal"], "qps"), med(a["dnsmasq"], "qps")
        add(
            "override QPS",
            m.fmt_num(pq),
            m.fmt_num(dq),
            f"{pq / dq:.2f}×",
            "≥ 1.0× dnsmasq",
            pq >= dq,
            vs_unbound(a, "qps", pq, "", 0),
        )
        pc, dc = med(a["portal"], "cpu_us_per_query"), med(a["dnsmasq"], "cpu_us_per_query")
        add(
            "override CPU/query",
            f"{pc:.1f} µs",
            f"{dc:.1f} µs",
            f"{pc / dc:.2f}×",
            "≤ dnsmasq",
            pc <= dc,
            vs_unbound(a, "cpu_us_per_query", pc, " µs", 1),
        )
        pl, dl = med(a["portal"], "p50_ms"), med(a["dnsmasq"], "p50_ms")
        add(
            "override p50",
            f"{pl:.3f} ms",
            f"{dl:.3f} ms",
            f"{pl / dl:.2f}×",
            "≤ dnsmasq",
            pl <= dl,
            vs_unbound(a, "p50_ms", pl, " ms", 3),
        )
    f = d.get("forward", {})
    if f.get("portal") and f.get("dnsmasq"):
        pq, dq = med(f["portal"], "qps"), med(f["dnsmasq"], "qps")
        add(
            "forward QPS",
            m.fmt_num(pq),
            m.fmt_num(dq),
            f"{pq / dq:.2f}×",
            "≥ 1.0× dnsmasq",
            pq >= dq,
            vs_unbound(f, "qps", pq, "", 0),
        )
        pc, dc = med(f["portal"], "cpu_us_per_query"), med(f["dnsmasq"], "cpu_us_per_query")
        add(
            "forward CPU/query",
            f"{pc:.1f} µs",
            f"{dc:.1f} µs",
            f"{pc / dc:.2f}×",
            "– (reported)",
            None,
            vs_unbound(f, "cpu_us_per_query", pc, " µs", 1),
        )
        pl, dl = med(f["portal"], "p50_ms"), med(f["dnsmasq"], "p50_ms")
        add(
            "forward p50",
            f"{pl:.3f} ms",
            f"{dl:.3f} ms",
            f"{pl / dl:.2f}×",
            "– (see added p50)",
            None,
            vs_unbound(f, "p50_ms", pl, " ms", 3),
        )
    if f.get("portal") and f.get("direct"):
        added = med(f["portal"], "p50_ms") - med(f["direct"], "p50_ms")
        direct = med(f["direct"], "p50_ms")
        dadded = med(f["dnsmasq"], "p50_ms") - direct if f.get("dnsmasq") else float("nan")
        uadded = med(f["unbound"], "p50_ms") - direct if f.get("unbound") else float("nan")
        add(
            "forward added p50",
            f"{added:.3f} ms",
            f"{dadded:.3f} ms",
            f"{m.ratio(added, dadded):.2f}×",
            "≤ 0.100 ms",
            added <= 0.1,
            f"{uadded:.3f} ms ({m.ratio(added, uadded):.2f}×)" if f.get("unbound") else "–",
        )
    c = d.get("cli", {})
    for key, what, limit in (
        ("add_to_answer", "`portal add` → answer", 100),
        ("list", "`portal list`", 60),
        ("status", "`portal status`", 60),
    ):
        if c.get(key):
            v = m.median(c[key])
            used = m.median(d.get("cli_cpu", {}).get(key) or [float("nan")])
            floor = m.median(c["python_floor"]) if c.get("python_floor") else float("nan")
            add(
                what,
                f"{v:.0f} ms (CPU {used:.0f} ms)",
                f"`python3 -c pass` {floor:.0f} ms" if floor == floor else "–",
                f"{v / limit:.2f}× limit",
                f"≤ {limit} ms",
                v <= limit,
            )
    s = d.get("startup", {})
    if s.get("portal"):
        v = m.median(s["portal"])
        ref = m.median(s["dnsmasq"]) if s.get("dnsmasq") else float("nan")
        used = m.median(d.get("startup_cpu", {}).get("portal") or [float("nan")])
        add(
            "daemon start → answer",
            f"{v:.0f} ms (CPU {used:.0f} ms)",
            f"{ref:.0f} ms (dnsmasq)",
            f"{v / 100:.2f}× limit",
            "≤ 100 ms",
            v <= 100,
            f"{m.median(s['unbound']):.0f} ms ({m.ratio(v, m.median(s['unbound'])):.2f}×)"
            if s.get("unbound")
            else "–",
        )
    mem = d.get("memory", {})
    if mem.get("portal_after_start_kib"):
        start = mem["portal_after_start_kib"]
        later = max(mem.get("portal_after_load_kib", 0), mem.get("portal_after_idle_kib", 0))
        add(
            "idle RSS",
            _mib(max(start, later)),
            _mib(mem.get("dnsmasq_after_start_kib")),
            f"{max(start, later) / 1024 / 30:.2f}× limit",
            "≤ 30 MiB",
            max(start, later) <= 30 * 1024,
        )
        if later:
            grow = later - start
            add(
                "RSS growth after load",
                f"{grow / 1024:+.1f} MiB",
                "–",
                "–",
                "none (≤ 1 MiB)",
                grow <= 1024,
            )
    modes = d.get("modes", {})
    if modes:
        worst = {k: max(f.values()) for k, f in modes.items()}
        add(
            "idle RSS, every network mode",
            ", ".join(f"{MODE_NAMES[k].split(' ')[0]} {_mib(v)}" for k, v in worst.items()),
            "–",
            f"{max(worst.values()) / 1024 / 30:.2f}× limit",
            "≤ 30 MiB",
            max(worst.values()) <= 30 * 1024,
        )
    idle = d.get("idle", {}).get("portal")
    if idle:
        ref = d["idle"].get("dnsmasq")
        add(
            f"wakeups idle {idle['s']} s",
            str(idle["switches"]),
            f"{ref['switches']} (dnsmasq)" if ref else "–",
            "–",
            "0 periodic",
            idle["switches"] <= 2,
        )
    add("activation → captive → notification", "see e2e", "–", "–", "–", None)
    header = ["figure", "portal", "dnsmasq (or limit)", "ratio", "unbound (ratio)", "target", ""]
    return m.markdown_table(header, rows)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one short round (a smoke run)")
    ap.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios: {','.join(SCENARIOS)}",
    )
    ap.add_argument("--label", default="latest", help="name of the result files")
    ap.add_argument("--tree", help="run portal from this source tree (e.g. a patched checkout)")
    ap.add_argument("--no-install", action="store_true", help="only check for the tools")
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if args.tree:
        p.REPO = Path(args.tree).resolve()
        p.FORCE_MODULE = True
    missing = ensure_tools(install=not args.no_install)
    hard = [t for t in missing if t in APT]
    if hard:
        print(f"bench/run: missing {', '.join(hard)}", file=sys.stderr)
        return 1
    plan = QUICK if args.quick else Plan()
    RESULTS.mkdir(exist_ok=True)
    p.install_cleanup()
    signal.alarm(TIME_BOUND_S)
    res = Results()
    bench = Bench(plan, only, res, args.label)
    t0 = time.monotonic()
    try:
        bench.run()
    finally:
        p.stop_all()
        p.rm_tree(bench.base)
        signal.alarm(0)
    res.put("machine", "duration_s", time.monotonic() - t0)
    res.put("machine", "tree", str(p.REPO))
    vers = versions()
    text = report(res, plan, vers, args.label)
    (RESULTS / f"{args.label}.md").write_text(text)
    (RESULTS / f"{args.label}.json").write_text(
        json.dumps({"versions": vers, **res.data}, indent=1)
    )
    print(text)
    log(f"done in {time.monotonic() - t0:.0f} s; {RESULTS / (args.label + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
