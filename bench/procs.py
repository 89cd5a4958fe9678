"""Processes for the benchmarks: a private D-Bus, portal's daemon and CLI, dnsmasq, unbound.

Starts every server pinned to a CPU with taskset (taskset execs, so the PID we hold is the
server's own), records it in one registry and stops it by that PID — never by name — when the
run ends, fails or is interrupted. Binds only to loopback. Measures nothing itself; see measure.py
for the arithmetic and bench.py for the scenarios.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORCE_MODULE = False  # set for --tree: run `python -m portal` from REPO, not the installed script
# The interpreter portal runs on: the harness's own, until install_like() gives portal an
# environment laid out as scripts/install's.
PYTHON = sys.executable
SCRIPT: Path | None = None  # that environment's `portal` console script
# Where portal's bytecode goes (set per run): an installed package has its .pyc files, so the
# figures must not include compiling portal at every start (PYTHONDONTWRITEBYTECODE in the
# caller's environment would do that), nor may a run write into the source tree it measures.
PYCACHE: Path | None = None

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

# The benchmarks measure DNS and the control API: no network watching (it could probe the
# Internet on a link change) and no resolver wiring on the machine running them. Given as flags,
# with a config file that sets nothing (never the machine's /etc/portal/portal.toml): a default
# install's file sets nothing either, so the daemon does not read TOML at its start.
PORTAL_FLAGS = ("--wiring", "none", "--network-source", "none")
PORTAL_CONFIG = "# the benchmark's settings are flags (bench/procs.py PORTAL_FLAGS)\n"

_RUNNING: dict[int, subprocess.Popen[bytes]] = {}


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, by PID; forget it."""
    _RUNNING.pop(proc.pid, None)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)


def stop_all() -> None:
    for proc in list(_RUNNING.values()):
        stop(proc)


def _on_signal(signum: int, frame: object) -> None:
    stop_all()
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Stop everything we started on exit, SIGTERM, SIGINT and SIGALRM (the run's time bound)."""
    atexit.register(stop_all)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, _on_signal)


def spawn(
    cmd: Sequence[str],
    *,
    cpu: int | None,
    log: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    full = (["taskset", "-c", str(cpu)] if cpu is not None else []) + list(cmd)
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    try:
        proc = subprocess.Popen(full, stdout=out, stderr=out, env=env, stdin=subprocess.DEVNULL)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    _RUNNING[proc.pid] = proc
    return proc


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def free_port(host: str) -> int:
    """A port free for both UDP and TCP on host (the servers bind both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free port on {host}")


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


# -- DNS on the wire (just enough to check an answer) -------------------------------------------


def a_query(name: str, qid: int | None = None) -> bytes:
    qid = secrets.randbits(16) if qid is None else qid
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p)
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00\x00\x01\x00\x01"


def first_a(reply: bytes) -> str | None:
    """The first A record's address in a reply to a_query(), or None (any error, no data)."""
    if len(reply) < 12 or not reply[2] & 0x80 or reply[3] & 0x0F:
        return None
    ancount = struct.unpack_from("!H", reply, 6)[0]
    pos = 12
    while reply[pos] != 0:  # our own question: plain labels
        pos += reply[pos] + 1
    pos += 5
    for _ in range(ancount):
        if reply[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while reply[pos] != 0:
                pos += reply[pos] + 1
            pos += 1
        rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", reply, pos)
        pos += 10
        if rtype == 1 and rdlen == 4:
            return socket.inet_ntoa(reply[pos : pos + 4])
        pos += rdlen
    return None


def ask_a(host: str, port: int, name: str, timeout_s: float = 0.05) -> str | None:
    query = a_query(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        try:
            s.sendto(query, (host, port))
            reply, _ = s.recvfrom(4096)
        except OSError:
            return None
    if reply[:2] != query[:2]:
        return None
    try:
        return first_a(reply)
    except (IndexError, struct.error):
        return None


# -- servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop(self.proc)

    def log(self) -> str:
        path = self.workdir / f"{self.name}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def workdir(prefix: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=f"portal-bench-{prefix}-"))
    os.chmod(d, 0o755)
    return d


def private_bus(base: Path) -> tuple[str, subprocess.Popen[bytes]]:
    sock = base / "bus"
    conf = base / "bus.conf"
    conf.write_text(BUS_CONFIG.format(socket=sock))
    proc = spawn(
        ["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile"],
        cpu=None,
        log=base / "dbus.log",
    )
    if not wait_until(sock.exists, 10):
        stop(proc)
        raise RuntimeError("dbus-daemon did not start")
    return f"unix:path={sock}", proc


def install_like(base: Path) -> None:
    """Run portal from here on as scripts/install lays it out: a virtual environment of the
    distribution's interpreter with `portal` in its site-packages and pip's console script.

    The harness's own environment is the checkout's test environment, where portal is an
    editable install: its finder (a .pth file that imports a module at every interpreter start)
    and setuptools' distutils shim cost 15-20 ms per process that an installed portal never
    pays. Here the checkout (or --tree) and the harness's site-packages, for the dependencies,
    are plain path entries of a .pth file: the same imports, found the way an installed
    package's are. No pip and no network: nothing is built or fetched."""
    global PYTHON, SCRIPT
    env = base / "installed"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(env)], check=True, timeout=60)
    python = env / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    deps = sysconfig.get_path("purelib")
    Path(site, "portal-bench.pth").write_text(f"{REPO}\n{deps}\n")
    script = env / "bin" / "portal"
    # what pip writes for a console_scripts entry point
    script.write_text(
        f"#!{python}\n"
        "import re\nimport sys\nfrom portal.cli import main\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
        "    sys.exit(main())\n"
    )
    script.chmod(0o755)
    PYTHON, SCRIPT = str(python), script


def portal_cmd() -> list[str]:
    """The console script of install_like()'s environment (what users run), else the installed
    one when it belongs to this interpreter. With --tree (and no install_like()), the CLI from
    that tree, put first on sys.path (`-m` would import from the current directory first)."""
    if SCRIPT is not None:
        return [PYTHON, str(SCRIPT)]
    script = Path(sysconfig.get_path("scripts")) / "portal"
    if script.exists() and not FORCE_MODULE:
        return [sys.executable, str(script)]
    return [
        sys.executable,
        "-c",
        f"import sys; sys.path.insert(0, {str(REPO)!r}); "
        "from portal.cli import main; sys.exit(main())",
    ]


def portal_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PORTAL_BUS", None)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    if PYCACHE is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def start_portal(
    base: Path,
    bus: str,
    host: str,
    *,
    cpu: int | None,
    upstreams: Sequence[str] = (),
    state_dir: Path | None = None,
    wait_name: str | None = None,
) -> Server:
    """portal daemon on a private bus; waits until the stub answers (and the bus is claimed)."""
    port = free_port(host)
    state = state_dir or base / "state"
    config = base / "portal.toml"
    config.write_text(PORTAL_CONFIG)  # never the machine's /etc/portal/portal.toml
    cmd = [
        *portal_cmd(),
        "daemon",
        "--bus",
        bus,
        "--listen",
        f"{host}:{port}",
        "--state-dir",
        str(state),
        "--config",
        str(config),
        "--log-level",
        "info",
        *PORTAL_FLAGS,
    ]
    for u in upstreams:
        cmd += ["--upstream", u]
    proc = spawn(cmd, cpu=cpu, log=base / "portal.log", env=portal_env())
    server = Server("portal", host, port, proc, base)
    _wait_serving(server, wait_name)
    if not wait_until(lambda: "control API on" in server.log() or not server.alive(), 15):
        raise RuntimeError("portal did not claim its bus name:\n" + server.log())
    return server


def portal_cli(
    bus: str, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*portal_cmd(), *args, "--bus", bus],
        input=stdin,
        capture_output=True,
        env=portal_env(),
        timeout=60,
        check=False,
    )


def dnsmasq_cmd(
    host: str,
    port: int,
    records: dict[str, str],
    *,
    upstream: str | None,
    extra: Sequence[str] = (),
) -> list[str]:
    cmd = [
        "dnsmasq",
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        f"--listen-address={host}",
        "--bind-interfaces",
        f"--port={port}",
        "--user=root" if os.geteuid() == 0 else f"--user={os.getuid()}",
        "--pid-file=",
        # no cache: portal does not cache forwarded answers either, so both forward every query
        "--cache-size=0",
    ]
    cmd += [f"--address=/{name}/{ip}" for name, ip in records.items()]
    if upstream:
        h, _, p = upstream.partition(":")
        cmd.append(f"--server={h}#{p}")
    return cmd + list(extra)


def start_dnsmasq(
    base: Path,
    host: str,
    records: dict[str, str],
    *,
    cpu: int | None,
    upstream: str | None = None,
    wait_name: str | None = None,
    label: str = "dnsmasq",
) -> Server:
    port = free_port(host)
    proc = spawn(
        dnsmasq_cmd(host, port, records, upstream=upstream),
        cpu=cpu,
        log=base / f"{label}.log",
    )
    server = Server(label, host, port, proc, base)
    _wait_serving(server, wait_name)
    return server


def unbound_conf(
    host: str, port: int, records: dict[str, str], directory: Path, forward_to: str | None = None
) -> str:
    """unbound serving `records`; with `forward_to` ("IP@PORT") every other name is forwarded
    there, uncached (cache-max-ttl 0: an answer expires as it is stored), as portal and
    dnsmasq --cache-size=0 forward every query; without it, nothing else is answered."""
    lines = [
        "server:",
        f"  interface: {host}@{port}",
        f"  port: {port}",
        "  do-daemonize: no",
        '  username: ""',
        '  chroot: ""',
        f'  directory: "{directory}"',
        '  pidfile: ""',
        "  use-syslog: no",
        '  logfile: ""',
        "  verbosity: 0",
        "  num-threads: 1",
        "  so-reuseport: no",
        "  do-ip6: no",
        "  access-control: 127.0.0.0/8 allow",
        '  module-config: "iterator"',
    ]
    if forward_to is None:
        # everything is local: a benchmark never recurses to the Internet
        lines.append('  local-zone: "." static')
    else:
        # the records are transparent local zones (unbound makes them so); the rest goes to
        # the upstream on loopback, which unbound refuses to ask by default
        lines += [
            "  do-not-query-localhost: no",
            "  cache-max-ttl: 0",
            "  cache-max-negative-ttl: 0",
        ]
    lines += [f'  local-data: "{name}. 60 IN A {ip}"' for name, ip in records.items()]
    if forward_to is not None:
        lines += ["forward-zone:", '  name: "."', f"  forward-addr: {forward_to}"]
    lines += ["remote-control:", "  control-enable: no", ""]
    return "\n".join(lines)


def start_unbound(
    base: Path,
    host: str,
    records: dict[str, str],
    *,
    cpu: int | None,
    wait_name: str | None = None,
    label: str = "unbound",
    forward_to: str | None = None,
) -> Server:
    port = free_port(host)
    conf = base / f"{label}.conf"
    conf.write_text(unbound_conf(host, port, records, base, forward_to))
    proc = spawn(["unbound", "-d", "-c", str(conf)], cpu=cpu, log=base / f"{label}.log")
    server = Server(label, host, port, proc, base)
    _wait_serving(server, wait_name)
    return server


def _wait_serving(server: Server, name: str | None) -> None:
    probe = name or "ready.invalid"

    def up() -> bool:
        if not server.alive():
            return True
        if name is None:
            return _any_answer(server.host, server.port)
        return ask_a(server.host, server.port, probe) is not None

    if not wait_until(up, 15) or not server.alive():
        log = server.log()
        server.stop()
        raise RuntimeError(f"{server.name} did not start:\n{log}")


def _any_answer(host: str, port: int) -> bool:
    query = a_query("ready.invalid")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.1)
        try:
            s.sendto(query, (host, port))
            s.recvfrom(4096)
            return True
        except OSError:
            return False


def rm_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
