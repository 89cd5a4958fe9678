"""Shared test plumbing: a private dbus-daemon, real dnsmasq upstreams, the real daemon and CLI
as subprocesses. Everything started here is bounded in time and stopped by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PORTAL = [sys.executable, "-m", "portal"]

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  {extra}
</busconfig>
"""


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host`."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def wait_for(predicate: object, timeout_s: float = 10.0, interval_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval_s)
    return False


def stop_pid(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout_s: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@dataclass
class PrivateBus:
    address: str
    proc: subprocess.Popen[bytes]
    directory: Path

    def stop(self) -> None:
        stop_pid(self.proc)


@contextlib.contextmanager
def private_bus(extra_config: str = "") -> Iterator[PrivateBus]:
    """A private dbus-daemon with an open policy (everyone may own and call)."""
    directory = Path(tempfile.mkdtemp(prefix="portal-bus-"))
    os.chmod(directory, 0o755)
    sock = directory / "bus"
    conf = directory / "bus.conf"
    conf.write_text(BUS_CONFIG.format(socket=sock, extra=extra_config))
    proc = subprocess.Popen(
        ["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        if not wait_for(sock.exists, 10):
            raise RuntimeError("dbus-daemon did not start")
        os.chmod(sock, 0o777)
        yield PrivateBus(f"unix:path={sock}", proc, directory)
    finally:
        stop_pid(proc)
        shutil.rmtree(directory, ignore_errors=True)


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


@dataclass
class Daemon:
    bus: str
    host: str
    port: int
    state_dir: Path
    args: list[str]
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def start(self, *, wait: bool = True) -> None:
        notify = self.state_dir.parent / f"notify-{os.getpid()}-{time.monotonic_ns()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ns:
            ns.bind(str(notify))
            ns.settimeout(15)
            env = dict(self.env, NOTIFY_SOCKET=str(notify))
            logf = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
            self.proc = subprocess.Popen([*PORTAL, *self.args], env=env, stdout=logf, stderr=logf)
            logf.close()
            if wait:
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    try:
                        msg = ns.recv(4096).decode()
                    except TimeoutError:
                        break
                    if "READY=1" in msg:
                        break
                else:
                    raise RuntimeError("daemon not ready:\n" + self.log())
                if self.proc.poll() is not None:
                    raise RuntimeError("daemon exited:\n" + self.log())
        notify.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def listen(self) -> tuple[str, int]:
        return self.host, self.port

    def cli(
        self,
        *args: str,
        user: str | None = None,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        if user is not None:
            return run_cli_as(user, *args, bus=self.bus, input=input, timeout=timeout)
        return run_cli(*args, bus=self.bus, input=input, env=env, timeout=timeout)


def run_cli_as(
    user: str, *args: str, bus: str, input: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """The real CLI code, run as another user (fork, drop privileges, `portal.cli.main`).

    The interpreter may live where other users cannot read it (e.g. under /root), so the child
    keeps the parent's already-imported modules instead of exec'ing a new interpreter.
    """
    import importlib
    import pwd

    for mod in (
        "portal.cli",
        "portal.edges.client",
        "portal.edges.bus",
        "portal.core.overrides",
        "dbus_next",
        "dbus_next.aio",
        "asyncio",
        "json",
        "encodings.idna",
    ):
        importlib.import_module(mod)
    pw = pwd.getpwnam(user)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become the user, run the CLI, exit with its code
        code = 70
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            # pytest may have replaced sys.stdout/err with capture objects: write to the pipes
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            os.initgroups(user, pw.pw_gid)
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            os.environ["PORTAL_BUS"] = bus
            os.environ["HOME"] = "/"
            os.chdir("/")
            from portal.cli import main

            code = main(list(args))
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException as exc:  # noqa: BLE001 - report anything from the child
            os.write(2, f"child failed: {exc!r}\n".encode())
        finally:
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r) as o, os.fdopen(err_r) as e:
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired(list(args), timeout)
            time.sleep(0.02)
        return subprocess.CompletedProcess(
            list(args), os.waitstatus_to_exitcode(status), o.read(), e.read()
        )


def run_cli(
    *args: str,
    bus: str | None = None,
    user: str | None = None,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """The real CLI as a user types it: `portal ARGS` (with --bus, or as another user)."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO))
    full_env.update(env or {})
    if bus:
        full_env["PORTAL_BUS"] = bus
    cmd = [*PORTAL, *args]
    if user is not None:
        cmd = [
            "setpriv",
            f"--reuid={user}",
            f"--regid={user}",
            "--init-groups",
            "--",
            "env",
            f"PYTHONPATH={REPO}",
            f"PORTAL_BUS={bus or ''}",
            "HOME=/tmp",
            *cmd,
        ]
    return subprocess.run(
        cmd, env=full_env, input=input, capture_output=True, text=True, timeout=timeout, cwd="/"
    )


def dig(*args: str, port: int, host: str = "127.0.0.1", timeout: float = 15) -> str:
    out = subprocess.run(
        ["dig", f"@{host}", "-p", str(port), "+tries=1", "+time=5", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return out.stdout


class Netns:
    """A throwaway network + mount namespace held open by a `sleep` process (killed by PID).

    Processes started with `popen`/`run` live in it; the namespace vanishes with the last one.
    """

    def __init__(self, lifetime_s: int = 300) -> None:
        self.holder = subprocess.Popen(
            [
                "unshare",
                "--net",
                "--mount",
                "--propagation",
                "private",
                "--fork",
                "--kill-child",
                "sleep",
                str(lifetime_s),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        if not wait_for(self._ready, 10):
            self.close()
            raise RuntimeError("namespace did not come up")
        self.pid = self._child_pid()
        self.run(["ip", "link", "set", "lo", "up"], check=True)

    def _child_pid(self) -> int:
        children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children").read_text()
        return int(children.split()[0])

    def _ready(self) -> bool:
        try:
            pid = self._child_pid()
        except (OSError, IndexError, ValueError):
            return False
        return os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "--net", "--mount", "--", *cmd]

    def run(
        self,
        cmd: Sequence[str],
        *,
        check: bool = False,
        timeout: float = 30,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.wrap(cmd), capture_output=True, text=True, timeout=timeout, check=check, env=env
        )

    def popen(self, cmd: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.wrap(cmd), **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop_pid(proc)
        # `unshare --fork` waits for its child: end the child first, or the holder sits out
        # the whole SIGTERM grace period
        pid = getattr(self, "pid", None)
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        stop_pid(self.holder)
