"""The benchmark's process harness against the real servers: each one answers the names it was
given, the wire helpers read real answers, and stop() leaves no process behind.
`python3 -m pytest bench/test_procs.py` (root: dnsmasq and unbound run as root here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import procs as p
import pytest

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="dnsmasq and unbound are started as root"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("dnsmasq", "unbound", "dbus-daemon", "taskset")),
        reason="needs dnsmasq, unbound, dbus-daemon and taskset",
    ),
]

RECORDS = {"one.example": "192.0.2.1", "two.example": "192.0.2.2"}


@pytest.fixture
def base() -> Iterator[Path]:
    d = p.workdir("test")
    yield d
    p.stop_all()
    p.rm_tree(d)


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_wire_helpers_round_trip_and_refuse_garbage() -> None:
    q = p.a_query("one.example", 0x1234)
    assert q[:2] == b"\x12\x34" and q.endswith(b"\x03one\x07example\x00\x00\x01\x00\x01")
    # an answer made by hand: the question, one compressed A record
    reply = bytearray(q)
    reply[2:4] = b"\x81\x80"
    reply[6:8] = b"\x00\x01"
    reply += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x07"
    assert p.first_a(bytes(reply)) == "192.0.2.7"
    reply[3] = 0x83  # NXDOMAIN
    assert p.first_a(bytes(reply)) is None


def test_dnsmasq_and_unbound_answer_and_stop_by_pid(base: Path) -> None:
    d = p.start_dnsmasq(base, "127.0.0.1", RECORDS, cpu=None, wait_name="one.example")
    u = p.start_unbound(base, "127.0.0.1", RECORDS, cpu=None, wait_name="two.example")
    assert p.ask_a(d.host, d.port, "two.example", 1.0) == "192.0.2.2"
    assert p.ask_a(u.host, u.port, "one.example", 1.0) == "192.0.2.1"
    assert p.ask_a(u.host, u.port, "elsewhere.invalid", 1.0) is None  # never recursed
    d.stop()
    u.stop()
    assert p.wait_until(lambda: gone(d.pid) and gone(u.pid), 5)


def test_portal_on_a_private_bus_imports_overrides_and_forwards(base: Path) -> None:
    up = p.start_unbound(base, "127.0.0.2", {"fwd.example": "192.0.2.9"}, cpu=None, label="up")
    bus, dbus = p.private_bus(base)
    portal = p.start_portal(base, bus, "127.0.0.1", cpu=1, upstreams=[f"{up.host}:{up.port}"])
    hosts = base / "hosts"
    hosts.write_text("192.0.2.1 one.example\n192.0.2.2 two.example\n")
    out = p.portal_cli(bus, "import", str(hosts), "--ttl", "never", "--any-network")
    assert out.returncode == 0, out.stderr
    assert p.ask_a(portal.host, portal.port, "two.example", 1.0) == "192.0.2.2"
    assert p.ask_a(portal.host, portal.port, "fwd.example", 2.0) == "192.0.2.9"
    assert os.sched_getaffinity(portal.pid) == {1}  # taskset exec'd: we hold the server's PID
    p.stop_all()
    assert p.wait_until(lambda: gone(portal.pid) and gone(dbus.pid) and gone(up.pid), 5)


def test_install_like_runs_portal_as_installed(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an installed portal: no editable finder or distutils shim at start, the checkout's code
    monkeypatch.setattr(p, "PYTHON", p.PYTHON)
    monkeypatch.setattr(p, "SCRIPT", p.SCRIPT)
    p.install_like(base)
    cmd = p.portal_cmd()
    assert cmd[0] == str(base / "installed/bin/python") and cmd[1].endswith("installed/bin/portal")
    version = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("portal "), version.stderr
    probe = (
        "import sys, portal; "
        "print(portal.__file__); "
        "print(sorted(m for m in sys.modules if 'editable' in m or 'distutils' in m))"
    )
    out = subprocess.run([cmd[0], "-c", probe], capture_output=True, text=True, timeout=30)
    where, loaded = out.stdout.splitlines()
    assert where == str(p.REPO / "portal" / "__init__.py")
    assert loaded == "[]"
