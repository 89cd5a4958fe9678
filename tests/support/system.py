"""The system around a test: network namespaces, tiny file systems, throwaway users (root)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.procs import stop_pid, wait_for


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


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tiny tmpfs mounted on `path` (root only), unmounted lazily at the end."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system holding `directory` up to the last byte; return the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (65536, 4096, 1):  # big writes first, then the last crumbs
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


class Users:
    """Throwaway system users (and groups), deleted at the end; names are unique per run."""

    def __init__(self) -> None:
        self.users: list[str] = []
        self.groups: list[str] = []

    def group(self) -> str:
        name = f"prg{secrets.token_hex(3)}"
        subprocess.run(["groupadd", name], check=True)
        self.groups.append(name)
        return name

    def user(self, *groups: str) -> str:
        name = f"pru{secrets.token_hex(3)}"
        cmd = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        if groups:
            cmd += ["--groups", ",".join(groups)]
        subprocess.run([*cmd, name], check=True)
        self.users.append(name)
        return name

    def close(self) -> None:
        for name in self.users:
            subprocess.run(["userdel", name], check=False, capture_output=True)
        for g in self.groups:
            subprocess.run(["groupdel", g], check=False, capture_output=True)
