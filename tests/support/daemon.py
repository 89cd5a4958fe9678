"""The real `portal daemon` and `portal` CLI as subprocesses, as a user runs them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.procs import PORTAL, REPO, free_port, stop_pid

if TYPE_CHECKING:
    from tests.lab.lab import Lab, LabProcess


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


def start_daemon(
    bus: str,
    directory: Path,
    *,
    upstreams: list[str] | None = None,
    extra_args: list[str] | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    state_dir: Path | None = None,
    env: dict[str, str] | None = None,
    name: str = "",
    start: bool = True,
) -> Daemon:
    """The real daemon on `bus`, listening on host:port, with its state and log in `directory`.

    No detection and no resolver wiring unless `extra_args` asks for them (they come last and
    win): the test machine's own network must never be probed, nor its resolver touched.
    """
    port = port or free_port(host)
    name = name or str(port)
    state = state_dir or directory / f"state-{name}"
    none = directory / "none.toml"
    none.touch()
    args = ["daemon", "--bus", bus, "--listen", f"{host}:{port}", "--state-dir", str(state)]
    args += ["--log-level", "debug", "--config", str(none)]
    args += ["--network-source", "none", "--wiring", "none"]
    for u in upstreams or []:
        args += ["--upstream", u]
    args += extra_args or []
    full_env = dict(os.environ, PYTHONPATH=str(REPO))
    full_env.pop("PORTAL_BUS", None)
    full_env.update(env or {})
    d = Daemon(
        bus=bus,
        host=host,
        port=port,
        state_dir=state,
        args=args,
        log_path=directory / f"daemon-{name}.log",
        env=full_env,
    )
    if start:
        d.start()
    return d


def spawn_in_lab(lab: Lab) -> LabProcess:
    """The real daemon on the lab's laptop, as root: NetworkManager's network, the stub on
    127.0.0.153:53, its state in the lab's run directory, no resolver wiring."""
    return lab.spawn_laptop(
        [
            sys.executable, "-m", "portal", "daemon", "--log-level", "debug",
            "--listen", "127.0.0.153:53", "--state-dir", str(lab.run_dir / "portal-state"),
            "--config", "/dev/null", "--wiring", "none",
        ],
        env={"PYTHONPATH": str(REPO)},
        name="portal-daemon",
    )  # fmt: skip
