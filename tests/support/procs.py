"""Processes, ports and waiting: the plumbing every kind of test uses."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PORTAL = [sys.executable, "-m", "portal"]
LIFETIME_S = 300  # hard bound on a helper process started under `timeout`


def need(*commands: str) -> None:
    """Skip, saying what to install, when a command the test runs is missing."""
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/install-test-deps installs it)")


def bounded(argv: Sequence[str]) -> list[str]:
    """`argv` under timeout(1): it ends even if the test run dies without stopping it."""
    return ["timeout", "--kill-after=5", str(LIFETIME_S), *argv]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` (the stub binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port: int = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def wait_for(
    predicate: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.02
) -> bool:
    """Poll until `predicate()` is true; False when `timeout_s` passed first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


def wait_until(what: str, check: Callable[[], object], timeout_s: float = 30.0) -> None:
    """Poll `check` until true; fail naming `what` when it never becomes true."""
    if not wait_for(check, timeout_s, 0.1):
        pytest.fail(f"timed out waiting for {what}")


async def eventually(predicate: Any, timeout_s: float = 10, what: str = "") -> None:
    """Wait on the loop for a condition brought about elsewhere (no timing asserted)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            # Polling: the state lives in other processes (dunst, the agent), not in an Event.
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            return
    raise AssertionError(f"timed out waiting for {what or predicate}")


def stop_pid(proc: subprocess.Popen[Any], timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`; close its pipes."""
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
