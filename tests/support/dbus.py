"""Private dbus-daemons with one open configuration: anyone may connect, own and call."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbus_next.aio import MessageBus

from portal.edges.bus import call, close, connect
from tests.support.procs import bounded, stop_pid, wait_for

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>{kind}</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <!-- any user: the CLI and the agent under test may run as unprivileged users -->
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  {extra}
</busconfig>
"""


@dataclass
class PrivateBus:
    address: str
    proc: subprocess.Popen[str]
    directory: Path

    def stop(self) -> None:
        stop_pid(self.proc)


def start_bus(directory: Path, *, kind: str = "system", extra: str = "") -> PrivateBus:
    """A dbus-daemon on a socket in `directory` (reachable by every user); the caller stops
    it. Returns once it listens (it prints its address then)."""
    sock = directory / "bus"
    conf = directory / "bus.conf"
    conf.write_text(BUS_CONFIG.format(kind=kind, socket=sock, extra=extra))
    proc = subprocess.Popen(
        bounded(["dbus-daemon", f"--config-file={conf}", "--nofork", "--print-address=1"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    address = proc.stdout.readline().strip()
    if not address:
        stop_pid(proc)
        raise RuntimeError("dbus-daemon did not start")
    os.chmod(sock, 0o777)
    return PrivateBus(address, proc, directory)


@contextlib.contextmanager
def private_bus(extra_config: str = "", *, kind: str = "system") -> Iterator[PrivateBus]:
    """A private dbus-daemon in a directory of its own, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="portal-bus-"))
    os.chmod(directory, 0o755)
    try:
        bus = start_bus(directory, kind=kind, extra=extra_config)
        try:
            yield bus
        finally:
            bus.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class RestartableBus:
    """A private dbus-daemon whose process can be killed and started again on the same socket."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="portal-rbus-"))
        os.chmod(self.directory, 0o755)
        self.socket = self.directory / "bus"
        self.conf = self.directory / "bus.conf"
        self.conf.write_text(BUS_CONFIG.format(kind="system", socket=self.socket, extra=""))
        self.address = f"unix:path={self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={self.conf}", "--nofork", "--nopidfile"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_for(self.socket.exists, 10):
            raise RuntimeError("dbus-daemon did not start")
        os.chmod(self.socket, 0o777)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def close(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def connected(address: str) -> AsyncIterator[MessageBus]:
    """A connection to a private bus for the test itself, closed (socket too) afterwards."""
    bus = await connect(address)
    try:
        yield bus
    finally:
        await close(bus)


async def call_body(
    bus: MessageBus,
    destination: str,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
) -> list[Any]:
    """A method call's reply body; an error reply fails the test (CallFailed)."""
    reply = await call(bus, destination, path, interface, member, signature, body, timeout_s=10)
    return list(reply.body)
