"""A fresh, minimal Debian 12 booted under systemd-nspawn, for the README's commands.

The root is built once with `mmdebstrap --variant=important` (systemd, dbus and CA
certificates only: no Python, no dig, no polkitd) and cached as a tarball under
/var/tmp/portal-test-cache, keyed by the release and the package list; every use unpacks a
fresh copy, boots it (systemd as PID 1) and runs commands in it with nsenter. The container
shares the host's network, as a new laptop would have one: apt and pip reach their registries;
the daemon inside is kept off the network (its probes go to loopback, set in
/etc/portal/portal.toml before any install).

It must not leave anything behind: the container is stopped by the PID it was started with and
its copy of the root is removed. It changes nothing on the host but the cache.

By hand (as root), a shell in a fresh container with this checkout in /root/portal:
``python3 -m tests.platform.fresh_debian shell``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RELEASE = "bookworm"
INCLUDE = "systemd,systemd-sysv,dbus,ca-certificates"
CACHE = Path("/var/tmp/portal-test-cache")
ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = "/root/portal"
BOOT_TIMEOUT_S = 90.0
# What a person's shell has; nothing of the host's (its pip configuration points at paths the
# container does not have).
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
# Registries the container fetches from fail with these when there is no network.
NO_NETWORK = (
    "Temporary failure resolving",
    "Could not resolve",
    "Failed to fetch",
    "Could not connect",
    "Connection failed",
    "Network is unreachable",
)


def unavailable_reason() -> str | None:
    """Why a fresh container cannot run here, or None. Probes; changes nothing."""
    if os.geteuid() != 0:
        return "needs root (mmdebstrap, systemd-nspawn, nsenter)"
    for tool in ("systemd-nspawn", "nsenter", "tar"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt: systemd-container util-linux tar)"
    if not cached_root().exists() and shutil.which("mmdebstrap") is None:
        return "needs mmdebstrap to build a Debian root (apt: mmdebstrap)"
    try:
        if os.statvfs("/proc/sys").f_flag & os.ST_RDONLY:
            return "/proc/sys is read-only: this is a container, and nspawn cannot nest here"
    except OSError as exc:
        return f"cannot read /proc/sys ({exc.strerror})"
    holder = port_53_holder()
    if holder:
        return f"127.0.0.153:53 is taken on this machine ({holder}); the container shares it"
    return None


def port_53_holder() -> str | None:
    """Something on this machine's network already holds 127.0.0.153:53 (which the container,
    sharing that network, needs for portal.socket)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.153", 53))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return "see ss -lunp"
                return None
    return None


def cached_root() -> Path:
    key = hashlib.sha256(f"{RELEASE} important {INCLUDE}".encode()).hexdigest()[:12]
    return CACHE / f"debian-{RELEASE}-important-{key}.tar"


class NoNetwork(Exception):
    """Debian's mirror cannot be reached."""


def build_root() -> Path:
    """The cached tarball of the minimal root, built when missing (about 30 s)."""
    tarball = cached_root()
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(f".{os.getpid()}.partial.tar")
    result = subprocess.run(
        ["mmdebstrap", "--quiet", "--variant=important", f"--include={INCLUDE}", RELEASE,
         str(partial)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        output = result.stdout + result.stderr
        if any(word in output for word in NO_NETWORK):
            raise NoNetwork(output.strip().splitlines()[-1])
        raise RuntimeError(f"mmdebstrap failed:\n{output[-3000:]}")
    partial.rename(tarball)
    return tarball


@dataclass
class Container:
    nspawn: subprocess.Popen[bytes]
    leader: int  # the container's systemd, as the host sees it
    directory: Path

    def run(
        self,
        command: str,
        *,
        timeout_s: float = 300.0,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """A shell command inside the container (all its namespaces), as root or `user`."""
        argv = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-C", "--"]
        if user is not None:
            argv += ["runuser", "-u", user, "--"]
        argv += ["/bin/sh", "-c", f"cd / && {command}"]
        return subprocess.run(
            argv,
            env={**ENV, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def show(self, unit: str, prop: str) -> str:
        return self.run(f"systemctl show -P {prop} {unit}").stdout.strip()


def _prepare(directory: Path) -> None:
    """What this machine needs and a fresh laptop would not: the harness's part only."""
    # This machine's outbound TLS is re-signed by a local CA: apt and pip inside need it.
    local_cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if local_cas:
        target = directory / "usr/local/share/ca-certificates"
        target.mkdir(parents=True, exist_ok=True)
        for ca in local_cas:
            shutil.copy(ca, target)
        subprocess.run(
            ["chroot", str(directory), "update-ca-certificates"],
            capture_output=True, timeout=120, check=True, env=ENV,
        )  # fmt: skip
    # The daemon's probes stay on loopback: tests never probe the real network.
    config = directory / "etc/portal/portal.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('probe_urls = ["http://127.0.0.1:9/"]\n')
    # The checkout, as a person would have it after `git clone` (without build leftovers and
    # the test suite's environment).
    dest = directory / CHECKOUT.lstrip("/")
    dest.mkdir(parents=True)
    subprocess.run(
        f"tar -C {ROOT} --exclude=./.git --exclude=./.venv --exclude='*.egg-info' "
        f"--exclude=__pycache__ -cf - . | tar -C {dest} -xf -",
        shell=True, check=True, timeout=120,
    )  # fmt: skip


def _find_leader(nspawn: subprocess.Popen[bytes], deadline: float) -> int:
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited with {nspawn.returncode}")
        try:
            children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children").read_text().split()
            for child in children:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the container's systemd did not start")


@contextlib.contextmanager
def booted(*, work: Path | None = None) -> Iterator[Container]:
    """A fresh copy of the cached root, booted; stopped and removed afterwards."""
    tarball = build_root()
    base = work or Path(tempfile.mkdtemp(prefix="portal-fresh-", dir="/var/tmp"))
    directory = base / "root"
    directory.mkdir(parents=True)
    nspawn: subprocess.Popen[bytes] | None = None
    leader = 0
    try:
        subprocess.run(["tar", "-C", str(directory), "-xf", str(tarball)], check=True, timeout=300)
        _prepare(directory)
        with (base / "console.log").open("wb") as log:
            nspawn = subprocess.Popen(
                ["systemd-nspawn", "--quiet", f"--directory={directory}",
                 f"--machine=portal-fresh-{secrets.token_hex(4)}",
                 # No systemd or machined on the host to register with: keep the container in
                 # the caller's cgroup.
                 "--register=no", "--keep-unit", "--console=passive",
                 "--boot", "--", "systemd.firstboot=off"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        leader = _find_leader(nspawn, deadline)
        container = Container(nspawn, leader, directory)
        while True:
            state = container.run("systemctl is-system-running --wait", timeout_s=BOOT_TIMEOUT_S)
            if state.stdout.strip() in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the container did not boot: {state.stdout}{state.stderr}")
            time.sleep(0.2)
        yield container
    finally:
        if nspawn is not None:
            # SIGRTMIN+4 asks systemd to power off; if that hangs, SIGKILL on its PID 1 ends
            # every process in its PID namespace.
            if leader and nspawn.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leader, signal.SIGRTMIN + 4)
            try:
                nspawn.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leader, signal.SIGKILL)
                try:
                    nspawn.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    nspawn.kill()
                    nspawn.wait(timeout=30)
        if work is None:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str]) -> int:
    if argv != ["shell"]:
        print("usage: python3 -m tests.platform.fresh_debian shell", file=sys.stderr)
        return 2
    reason = unavailable_reason()
    if reason:
        print(f"fresh_debian: {reason}", file=sys.stderr)
        return 1
    with booted() as c:
        print(f"container PID 1 is {c.leader}; the checkout is in {CHECKOUT}", file=sys.stderr)
        argv_shell = ["nsenter", "-t", str(c.leader), "-m", "-u", "-i", "-n", "-p", "-C", "--",
                      "/bin/bash", "-l"]  # fmt: skip
        return subprocess.run(argv_shell, env=ENV, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
