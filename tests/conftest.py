"""Fixtures shared by the whole suite. Helpers live in tests/support/."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, start_daemon
from tests.support.dbus import PrivateBus, private_bus
from tests.support.dns import UPSTREAM_RECORDS, Dnsmasq, dnsmasq
from tests.support.procs import REPO, need
from tests.support.system import Users


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short, world-traversable directory: socket paths have a 108-byte limit, and the
    programs under test (the agent, systemd-resolved, a helper in a container) run as other
    users that must reach the sockets in it."""
    path = Path(tempfile.mkdtemp(prefix="portal-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def bus() -> Iterator[PrivateBus]:
    need("dbus-daemon")
    with private_bus() as b:
        yield b


@pytest.fixture
def upstream() -> Iterator[Dnsmasq]:
    need("dnsmasq")
    with dnsmasq(UPSTREAM_RECORDS) as d:
        yield d


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """The real daemon as a user runs it (tests/support/daemon.py), stopped after the test."""
    made: list[Daemon] = []

    def make(bus: str, **options: object) -> Daemon:
        d = start_daemon(bus, tmp_path, name=str(len(made)), **options)  # type: ignore[arg-type]
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


@pytest.fixture
def users() -> Iterator[Users]:
    """Throwaway users and groups (root), deleted after the test."""
    u = Users()
    try:
        yield u
    finally:
        u.close()


@pytest.fixture
def daemon(bus: PrivateBus, upstream: Dnsmasq, make_daemon: Callable[..., Daemon]) -> Daemon:
    """The real daemon on a private bus, forwarding to a real dnsmasq."""
    return make_daemon(bus.address, upstreams=[upstream.upstream])


# --- capability probes ---------------------------------------------------------------------------
# Tests that need namespaces, a nested systemd or an X server skip with the probe's reason where
# the capability is missing (inside a container: read-only /proc/sys, no nested nspawn), instead
# of failing half-way. Each probe runs at most once per session, and only when such tests are
# collected.


@functools.cache
def namespaces_missing() -> str | None:
    """Why network and mount namespaces with their own settings cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces)"
    try:
        if os.statvfs("/proc/sys").f_flag & os.ST_RDONLY:
            return "/proc/sys is read-only here (a container): namespaces cannot be configured"
    except OSError as exc:
        return f"cannot read /proc/sys: {exc.strerror}"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    # The real thing: a network and a mount namespace, with a sysctl written in it.
    probe = subprocess.run(
        ["unshare", "--net", "--mount", "--fork", "--",
         "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        detail = (probe.stderr.strip().splitlines() or ["no reason given"])[-1]
        return f"cannot make a network namespace here: {detail}"
    return None


@functools.cache
def nspawn_missing() -> str | None:
    """Why a systemd-nspawn container cannot start here (nested in a container), or None."""
    reason = namespaces_missing()
    if reason is not None:
        return reason
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn not installed (apt: systemd-container)"
    probe = subprocess.run(
        ["systemd-nspawn", "--quiet", "--directory=/", "--volatile=yes", "--private-network",
         "--register=no", "--keep-unit", "--", "/bin/true"],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if probe.returncode != 0:
        detail = (probe.stderr.strip().splitlines() or ["no reason given"])[-1]
        return f"systemd-nspawn cannot start a container here: {detail}"
    return None


@functools.cache
def xvfb_missing() -> str | None:
    """Why Xvfb cannot start here, or None."""
    if shutil.which("Xvfb") is None:
        return "Xvfb is not installed (apt: xvfb)"
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile("w+") as errors:
        xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_fd), "-nolisten", "tcp", "-screen", "0", "64x64x24"],
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        os.close(write_fd)
        try:
            with os.fdopen(read_fd) as f:
                started = bool(f.readline().strip())  # EOF when Xvfb exits first
        finally:
            if xvfb.poll() is None:
                xvfb.terminate()
            xvfb.wait(10)
        if started:
            return None
        errors.seek(0)
        detail = (errors.read().strip().splitlines() or ["no reason given"])[-1]
        return f"Xvfb does not start here: {detail}"


NEEDS_NSPAWN = {"tests/platform/test_nspawn.py", "tests/platform/test_fresh_debian.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        where = item.path.relative_to(REPO).as_posix() if item.path.is_relative_to(REPO) else ""
        if where in NEEDS_NSPAWN:
            probe = nspawn_missing
        elif where.startswith(("tests/e2e/", "tests/lab/")) or item.get_closest_marker("lab"):
            probe = namespaces_missing
        elif where.startswith("tests/desktop/"):
            probe = xvfb_missing
        elif item.get_closest_marker("root") and os.geteuid() == 0:
            probe = namespaces_missing
        else:
            continue
        reason = probe()
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
