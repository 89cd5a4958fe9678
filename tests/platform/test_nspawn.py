"""The shipped units under a real systemd (PID 1 in a systemd-nspawn container).

The container boots this machine's own /usr with a throw-away tmpfs root (--volatile=yes) and
its own network namespace, so nothing it does reaches the host's /etc, /var or network. The
shipped portal.socket, portal.service (ExecStart rewritten the way scripts/install does),
sysusers entry, bus policy and polkit files are bind-mounted where an installation puts them;
the real `portal daemon` runs from this source tree with the test's own Python.

It must not touch the host's systemd, users or files, and it stops the container by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import nspawn_missing

ROOT = Path(__file__).resolve().parents[2]
STUB = "127.0.0.153"
NAME = "web.portal.test"
ADDRESS = "10.1.2.3"
BOOT_TIMEOUT_S = 90.0

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run systemd-nspawn"),
    pytest.mark.skipif(
        shutil.which("systemd-nspawn") is None,
        reason="systemd-nspawn not installed (apt: systemd-container)",
    ),
    pytest.mark.skipif(
        not Path("/usr/lib/systemd/systemd").exists(), reason="no systemd in /usr to boot"
    ),
]


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll `check` until true; fail naming `what` when it never becomes true."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Container:
    nspawn: subprocess.Popen[bytes]
    leader: int  # PID (on the host) of the container's systemd
    workdir: Path

    def run(
        self,
        *cmd: str,
        check: bool = True,
        timeout_s: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (all its namespaces)."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *cmd],
            env=None if env is None else {**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(f"{' '.join(cmd)}: rc={result.returncode}\n{result.stdout}{result.stderr}")
        return result

    def net(self, *cmd: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a host program inside the container's network namespace only."""
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-n", *cmd],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "-P", prop, unit).stdout.strip()

    def main_pid(self) -> int:
        return int(self.show("portal.service", "MainPID") or 0)

    def dig(self, name: str, *opts: str) -> subprocess.CompletedProcess[str]:
        return self.net("dig", f"@{STUB}", "+tries=1", "+time=20", *opts, name)


def python_paths() -> list[Path]:
    """Directories the test's Python and this source tree live in, outside /usr.

    They are bind-mounted into the container at the same paths, so the daemon runs with exactly
    the interpreter and packages the tests use.
    """
    found: list[Path] = []
    candidates = [Path(sys.base_prefix), Path(sys.prefix), ROOT]
    candidates += [Path(p) for p in sys.path if p and Path(p).is_dir()]
    for path in candidates:
        path = path.resolve()
        if path.is_relative_to("/usr") or any(path.is_relative_to(f) for f in found):
            continue
        found = [f for f in found if not f.is_relative_to(path)] + [path]
    return found


def service_dropin(shared: list[Path]) -> str:
    """A drop-in for portal.service with what only the test needs."""
    # A watchdog SIGABRT must not write a core through the host's core_pattern.
    dropin = "[Service]\nLimitCORE=0\n"
    homes = ("/root", "/home", "/run/user")
    if any(p.is_relative_to(h) for p in shared for h in homes):
        # This Python lives in a home directory, which ProtectHome=yes hides. The tmpfs variant
        # hides homes just the same and lets the interpreter's paths through.
        dropin += "ProtectHome=tmpfs\n"
    # Bound again into the service's own namespace: this also shows paths below /tmp, which
    # PrivateTmp=yes replaces (a checkout in /tmp).
    return dropin + "".join(f"BindReadOnlyPaths={p}\n" for p in shared)


def write_tree(work: Path, shared: list[Path]) -> list[str]:
    """Files the container sees; returns the nspawn bind options that place them."""
    binds: list[str] = []

    def place(name: str, text: str, target: str, mode: int = 0o644) -> None:
        path = work / name
        path.write_text(text)
        path.chmod(mode)
        binds.append(f"--bind-ro={path}:{target}")

    # The wrapper stands where the installer puts the console script.
    place(
        "portal",
        textwrap.dedent(f"""\
            #!/bin/sh
            export PYTHONPATH={ROOT}
            export PYTHONDONTWRITEBYTECODE=1
            exec {sys.executable} -m portal "$@"
            """),
        "/opt/portal/bin/portal",
        0o755,
    )
    service = (ROOT / "systemd/portal.service").read_text()
    # The same substitution scripts/install makes.
    assert "ExecStart=/usr/bin/portal daemon" in service
    service = service.replace("ExecStart=/usr/bin/portal ", "ExecStart=/opt/portal/bin/portal ")
    place("portal.service", service, "/etc/systemd/system/portal.service")
    place(
        "portal.socket",
        (ROOT / "systemd/portal.socket").read_text(),
        "/etc/systemd/system/portal.socket",
    )
    place("test.conf", service_dropin(shared), "/etc/systemd/system/portal.service.d/test.conf")
    place(
        "sysusers.conf",
        (ROOT / "systemd/sysusers-portal.conf").read_text(),
        "/etc/sysusers.d/portal.conf",
    )
    place(
        "bus.conf",
        (ROOT / "dbus/org.portalhelper.Portal1.conf").read_text(),
        "/etc/dbus-1/system.d/org.portalhelper.Portal1.conf",
    )
    actions = work / "actions"
    actions.mkdir()
    shutil.copy(ROOT / "polkit/org.portalhelper.portal.policy", actions)
    binds.append(f"--bind-ro={actions}:/usr/share/polkit-1/actions")
    rules = work / "rules"
    rules.mkdir()
    shutil.copy(ROOT / "polkit/50-portal.rules", rules)
    binds.append(f"--bind-ro={rules}:/etc/polkit-1/rules.d")
    # First boot applies presets: enable only the socket (as `systemctl enable` would), and
    # nothing else the host has installed (a second DNS server, NetworkManager...).
    place(
        "preset",
        "enable portal.socket\ndisable *\n",
        "/etc/systemd/system-preset/00-portal-test.preset",
    )
    binds += [f"--bind-ro={p}" for p in shared]
    return binds


def find_leader(nspawn: subprocess.Popen[bytes], comm: str) -> int:
    """The container's PID 1 as the host sees it: nspawn's child once it runs `comm`."""
    found: list[int] = []

    def check() -> bool:
        if nspawn.poll() is not None:
            pytest.fail(f"systemd-nspawn exited with {nspawn.returncode}")
        try:
            children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children").read_text().split()
            for child in children:
                if Path(f"/proc/{child}/comm").read_text().strip() == comm:
                    found.append(int(child))
                    return True
        except OSError:
            pass
        return False

    wait_for(f"the container's {comm}", check)
    return found[0]


@contextlib.contextmanager
def launch(
    work: Path, binds: list[str], *, boot: bool, network: tuple[str, ...] = ("--private-network",)
) -> Iterator[Container]:
    """A container of this machine's /usr: booted (systemd as PID 1) or not (`sleep` as PID 1,
    like a container without an init system). `network`: its nspawn network options (its
    own empty namespace by default; `--network-namespace-path=` joins one a test made). Skips
    where nspawn cannot run (nested in a container)."""
    reason = nspawn_missing()
    if reason is not None:
        pytest.skip(reason)
    machine = f"portal-test-{secrets.token_hex(4)}"
    # A fresh /etc would make systemd-firstboot prompt on a console nobody reads.
    init = ["--boot", "--", "systemd.firstboot=off"] if boot else ["--", "sleep", "600"]
    with (work / "console.log").open("wb") as log:
        nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "--quiet",
                "--directory=/",
                "--volatile=yes",
                *network,
                f"--machine={machine}",
                # No machined or host systemd to register with on a machine whose PID 1 is
                # not systemd; keep the container in the caller's cgroup.
                "--register=no",
                "--keep-unit",
                "--console=passive",
                *binds,
                *init,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    c = None
    try:
        c = Container(nspawn, find_leader(nspawn, "systemd" if boot else "sleep"), work)
        if boot:
            container = c  # for the lambda below; mypy cannot narrow c inside it
            # --wait returns once boot is over; before systemd's private socket exists it fails
            # at once ("Failed to connect to bus"), so ask again.
            wait_for(
                "the container to boot",
                lambda: container.run(
                    "systemctl", "is-system-running", "--wait", check=False,
                    timeout_s=BOOT_TIMEOUT_S,
                ).stdout.strip() in ("running", "degraded"),
                timeout_s=BOOT_TIMEOUT_S,
            )  # fmt: skip
        yield c
    finally:
        if boot and c is not None and os.environ.get("PORTAL_TEST_KEEP_JOURNAL"):
            journal = c.run("journalctl", "-b", "--no-pager", check=False).stdout
            (work / "journal.txt").write_text(journal)
        # SIGTERM asks nspawn to power a booted container off; if that hangs (or nothing
        # listens, without systemd), killing the container's PID 1 ends its PID namespace.
        if boot:
            nspawn.terminate()
        try:
            nspawn.wait(timeout=30 if boot else 0.1)
        except subprocess.TimeoutExpired:
            if c is not None:
                os.kill(c.leader, signal.SIGKILL)
            try:
                nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                nspawn.kill()
                nspawn.wait(timeout=30)


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    work = Path(tempfile.mkdtemp(prefix="portal-nspawn-"))
    work.chmod(0o755)
    try:
        with launch(work, write_tree(work, python_paths()), boot=True) as c:
            yield c
    finally:
        if not os.environ.get("PORTAL_TEST_KEEP_JOURNAL"):
            shutil.rmtree(work, ignore_errors=True)


def fresh_start(c: Container) -> None:
    """Forget earlier tests' failures and start limits, and have the daemon serve NAME."""
    c.run("systemctl", "reset-failed", "portal.service", "portal.socket", check=False)
    c.run("systemctl", "start", "portal.socket")
    # A query, not systemctl, starts the daemon: that is the path resolvers take.
    assert "status:" in c.dig("activate.portal.test").stdout
    wait_for("portal.service active", lambda: c.show("portal.service", "ActiveState") == "active")
    c.run("/opt/portal/bin/portal", "add", NAME, ADDRESS, "--any-network")


def test_socket_activation_serves_an_override_without_privileges(c: Container) -> None:
    assert c.run("systemctl", "is-enabled", "portal.socket", check=False).stdout.strip() == (
        "enabled"
    )
    assert c.show("portal.socket", "ActiveState") == "active"
    # Nothing has asked yet: the daemon is not running, the socket waits for the first query.
    assert c.show("portal.service", "ActiveState") == "inactive"

    fresh_start(c)

    answer = c.dig(NAME, "+short")
    assert answer.stdout.split() == [ADDRESS], answer.stdout + answer.stderr
    answer = c.dig(NAME, "+short", "+tcp")
    assert answer.stdout.split() == [ADDRESS], answer.stdout + answer.stderr

    pid = c.main_pid()
    status = dict(
        line.split(":", 1)
        for line in c.run("cat", f"/proc/{pid}/status").stdout.splitlines()
        if ":" in line
    )
    portal_uid = c.run("id", "-u", "portal").stdout.strip()
    assert status["Uid"].split() == [portal_uid] * 4
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, (cap, status[cap])
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    # The loaded unit, as systemd itself rates it (the offline gate is in test_units.py).
    security = c.run("systemd-analyze", "security", "--no-pager", "portal.service").stdout
    exposure = re.search(r"Overall exposure level for portal\.service: (\d+\.\d)", security)
    assert exposure and float(exposure[1]) <= 1.5, security[-300:]
    # It owns the bus name under the shipped policy and reports over sd_notify.
    assert c.show("portal.service", "StatusText") != ""
    listed = c.run("/opt/portal/bin/portal", "list", "--json").stdout
    assert NAME in listed


QUERY_STREAM = textwrap.dedent("""\
    import json, select, sys
    import dns.message, dns.query
    sent = answered = wrong = lost = retried = 0
    errors = []
    while True:
        if select.select([sys.stdin], [], [], 0.01)[0] and not sys.stdin.read(1):
            break
        query = dns.message.make_query(sys.argv[2], "A")
        send = dns.query.tcp if sent % 4 == 3 else dns.query.udp
        sent += 1
        # As a resolver does (glibc: attempts:2): a query the stub had read when it was killed
        # gets no answer, and is asked again.
        for attempt in range(3):
            try:
                reply = send(query, sys.argv[1], timeout=5)
                break
            except Exception as exc:
                failure = exc
                retried += 1
                errors.append("asked again after " + repr(exc))
        else:
            lost += 1
            errors.append(repr(failure))
            continue
        addresses = [rd.address for rrset in reply.answer for rd in rrset]
        if addresses == [sys.argv[3]]:
            answered += 1
        else:
            wrong += 1
            errors.append(reply.to_text())
    print(json.dumps(dict(sent=sent, answered=answered, wrong=wrong, lost=lost, retried=retried,
                          errors=errors)))
    """)


@contextlib.contextmanager
def query_stream(c: Container, name: str, address: str) -> Iterator[dict[str, Any]]:
    """A client in the container's network namespace asking the stub for `name` without a
    pause (every fourth query over TCP) until the block ends; then the dict holds its tally
    (sent, answered with exactly `address`, wrong, lost after three tries, retried, errors)."""
    client = subprocess.Popen(
        ["nsenter", "-t", str(c.leader), "-n", sys.executable, "-c", QUERY_STREAM,
         STUB, name, address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    result: dict[str, Any] = {}
    try:
        yield result
    finally:
        # Closing stdin (communicate does) ends the stream.
        out, err = client.communicate(input="", timeout=60)
    assert client.returncode == 0, err
    result.update(json.loads(out))
    print("query stream:", {k: v for k, v in result.items() if k != "errors"})
    assert result["lost"] == 0, result["errors"][:5]
    assert result["wrong"] == 0, result["errors"][:5]
    assert result["answered"] == result["sent"] > 0


def test_restart_and_stop_under_a_query_stream_lose_nothing(c: Container) -> None:
    fresh_start(c)
    pids = {c.main_pid()}
    with query_stream(c, NAME, ADDRESS) as stream:
        time.sleep(1)
        c.run("systemctl", "restart", "portal.service")
        pids.add(c.main_pid())
        time.sleep(1)
        c.run("systemctl", "stop", "portal.service")
        # The stream's next query starts it again through the socket.
        wait_for(
            "reactivation by a query",
            lambda: c.show("portal.service", "ActiveState") == "active",
        )
        pids.add(c.main_pid())
        time.sleep(1)
        c.run("systemctl", "restart", "portal.service")
        pids.add(c.main_pid())
        time.sleep(1)
    assert len(pids) == 4, pids  # every step really replaced the daemon
    assert stream["retried"] == 0, stream["errors"][:5]  # a clean stop drains: nothing asked twice


def test_watchdog_restarts_a_hung_daemon(c: Container) -> None:
    fresh_start(c)
    pid = c.main_pid()
    restarts = int(c.show("portal.service", "NRestarts"))
    c.run("kill", "-STOP", str(pid))
    # WatchdogSec=10s, then RestartSec=100ms.
    wait_for(
        "the watchdog to replace the stopped daemon",
        lambda: (
            c.main_pid() not in (0, pid) and c.show("portal.service", "ActiveState") == "active"
        ),
        timeout_s=60,
    )
    assert int(c.show("portal.service", "NRestarts")) == restarts + 1
    journal = c.run("journalctl", "-u", "portal.service", "--no-pager", "-o", "cat").stdout
    assert "Watchdog timeout" in journal
    # The override survived the restart (it is kept in StateDirectory).
    assert c.dig(NAME, "+short").stdout.split() == [ADDRESS]


def test_a_probe_round_runs_in_its_child_under_the_units_sandbox(c: Container) -> None:
    """Probes run in a child process (python3 -m portal.edges.probe_child) started by the
    sandboxed daemon: no capabilities, a system-call filter, NoNewPrivileges. A network appears
    in the container (a veth pair and a default route, nothing behind it); the daemon sees it
    over netlink and probes it. The probe fails for want of an internet, but through the child:
    a child that could not start or answer would be logged as "the probe process ..."."""
    fresh_start(c)
    add_network(c)
    try:

        def probed() -> bool:
            out = c.run("/opt/portal/bin/portal", "status", "--json", check=False).stdout
            try:
                status = json.loads(out)
            except ValueError:
                return False
            state = status.get("state")
            return status.get("interface") == "pv0" and state not in ("", "unknown", "probing")

        wait_for("a probe round on pv0", probed, timeout_s=60)
        journal = c.run("journalctl", "-u", "portal.service", "--no-pager", "-o", "cat").stdout
        assert "watching the kernel's links (netlink)" in journal
        assert "network: pv0 on pv0" in journal
        assert "probe process" not in journal, journal[-2000:]
        assert "Traceback" not in journal, journal[-2000:]
        # netlink needs nothing from /proc beyond ProcSubset=pid (pyroute2 logged psched there)
        assert "psched" not in journal and "tc subsystem" not in journal, journal[-2000:]
    finally:
        c.net("ip", "link", "del", "pv0")


def add_network(c: Container) -> None:
    """A network in the container (a veth pair and a default route, nothing behind it), which
    the daemon sees over netlink."""
    for cmd in (
        ["ip", "link", "add", "pv0", "type", "veth", "peer", "name", "pv1"],
        ["ip", "addr", "add", "10.99.0.2/24", "dev", "pv0"],
        ["ip", "addr", "add", "10.99.0.1/24", "dev", "pv1"],
        ["ip", "link", "set", "pv0", "up"],
        ["ip", "link", "set", "pv1", "up"],
        ["ip", "route", "add", "default", "via", "10.99.0.1", "dev", "pv0"],
    ):
        done = c.net(*cmd)
        assert done.returncode == 0, (cmd, done.stderr)


def test_a_sigkill_and_a_restart_never_change_a_scoped_overrides_answer(c: Container) -> None:
    """An override scoped to the network the daemon is on answers every query, also those
    that queued in the socket while a SIGKILLed daemon was replaced: the restarted daemon
    assumes its last network until the watcher reports (before, the first queries after a
    restart got the upstream's answer)."""
    fresh_start(c)
    add_network(c)
    try:

        def on_pv0() -> bool:
            out = c.run("/opt/portal/bin/portal", "status", "--json", check=False).stdout
            return '"network_id": "link:pv0:10.99.0.1"' in out

        wait_for("the daemon on pv0's network", on_pv0, timeout_s=30)
        added = c.run("/opt/portal/bin/portal", "add", "scoped.portal.test", "10.7.7.7")
        assert "on pv0" in added.stdout, added.stdout
        pids = {c.main_pid()}
        with query_stream(c, "scoped.portal.test", "10.7.7.7") as stream:
            time.sleep(1)
            for _ in range(3):
                pid = c.main_pid()
                c.run("kill", "-KILL", str(pid))
                wait_for("a new daemon", lambda: c.main_pid() not in (0, pid))  # noqa: B023
                pids.add(c.main_pid())
                time.sleep(1)
            c.run("systemctl", "restart", "portal.service")
            pids.add(c.main_pid())
            time.sleep(1)
        assert len(pids) == 5, pids
        # At most the one query each killed daemon had read was asked again.
        assert stream["retried"] <= 3, stream["errors"][:5]
    finally:
        c.net("ip", "link", "del", "pv0")


REFUSED = textwrap.dedent("""\
    import socket, sys
    results = []
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(10)
    udp.connect((sys.argv[1], 53))
    try:
        udp.send(b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x01\\x00\\x01")
        udp.recv(512)
        results.append("udp answered")
    except ConnectionRefusedError:
        results.append("udp refused")
    except TimeoutError:
        results.append("udp timeout")
    try:
        socket.create_connection((sys.argv[1], 53), timeout=10).close()
        results.append("tcp connected")
    except ConnectionRefusedError:
        results.append("tcp refused")
    except TimeoutError:
        results.append("tcp timeout")
    print(" ".join(results))
    """)


def test_crash_loop_fails_the_socket_and_releases_the_port(c: Container) -> None:
    fresh_start(c)
    # Kill the daemon each time it comes back, as a crash would; the start limit (5 in 60 s)
    # must end the loop with the socket failed rather than bound with nobody reading.
    killed: set[int] = set()

    def back_or_failed() -> bool:
        if c.show("portal.socket", "ActiveState") == "failed":
            return True
        pid = c.main_pid()
        return (
            pid not in killed and pid != 0 and c.show("portal.service", "ActiveState") == "active"
        )

    for _ in range(10):
        wait_for("the daemon to come back or the socket to fail", back_or_failed)
        if c.show("portal.socket", "ActiveState") == "failed":
            break
        pid = c.main_pid()
        killed.add(pid)
        c.run("kill", "-KILL", str(pid))
    assert 3 <= len(killed) <= 6, killed
    assert c.show("portal.socket", "ActiveState") == "failed"
    assert c.show("portal.socket", "Result") == "service-start-limit-hit"
    assert c.show("portal.service", "ActiveState") == "failed"
    # The service keeps the result of its last run (killed by a signal); the socket tells why.
    assert c.show("portal.service", "Result") in ("signal", "start-limit-hit")
    probe = c.net(sys.executable, "-c", REFUSED, STUB)
    assert probe.stdout.split() == ["udp", "refused", "tcp", "refused"], probe.stderr


@pytest.fixture
def c(container: Container) -> Container:
    return container


# --- scripts/install and scripts/uninstall ---------------------------------------------------

INSTALLED = (
    "/usr/share/dbus-1/system-services/org.portalhelper.Portal1.service",
    "/usr/local/share/bash-completion/completions/portal",
    "/usr/local/share/zsh/site-functions/_portal",
    "/usr/local/share/fish/vendor_completions.d/portal.fish",
    "/usr/local/share/man/man1/portal.1",
    "/etc/systemd/system/portal.socket",
    "/etc/systemd/system/portal.service",
    "/etc/sysusers.d/portal.conf",
    "/etc/dbus-1/system.d/org.portalhelper.Portal1.conf",
    "/usr/share/polkit-1/actions/org.portalhelper.portal.policy",
    "/etc/polkit-1/rules.d/50-portal.rules",
    "/opt/portal/bin/portal",
    "/usr/local/bin/portal",
)


@pytest.fixture
def install_work() -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="portal-install-"))
    work.chmod(0o755)
    yield work
    shutil.rmtree(work, ignore_errors=True)


def base_python() -> tuple[str, list[str]]:
    """The interpreter to give the installer, and binds that let it see the test's packages.

    In a virtual environment (scripts/test makes one), the installer gets the environment's base
    interpreter, and the environment's packages are bound over that interpreter's first
    site-packages directory inside the container: `--offline` makes a venv with
    --system-site-packages, which then finds them there, as it would find the distribution's.
    """
    if sys.prefix == sys.base_prefix:
        return sys.executable, []
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    site_dir = subprocess.run(
        [base, "-I", "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    import sysconfig

    packages = sysconfig.get_paths()["purelib"]
    return base, [f"--bind-ro={packages}:{site_dir}"]


def install_binds(work: Path, *, boot: bool) -> list[str]:
    """Only the checkout and the Python: the installer puts everything else in place."""
    shared = python_paths()
    binds = [f"--bind-ro={p}" for p in shared] + base_python()[1]
    binds.append(f"--bind-ro={work}")  # the wheel shim, if any
    # /usr is the host's, read-only; give the installer the two places it writes there.
    for target in (
        "/usr/local/bin",
        "/usr/local/share",
        "/usr/share/polkit-1/actions",
        "/usr/share/dbus-1/system-services",
    ):
        writable = work / target.strip("/").replace("/", "-")
        writable.mkdir()
        if target == "/usr/share/dbus-1/system-services":
            # The bus still activates the system's own services (polkitd among them).
            for service in Path(target).glob("*.service"):
                shutil.copy(service, writable)
        binds.append(f"--bind={writable}:{target}")
    if boot:
        for name, text, target in (
            ("test.conf", service_dropin(shared), "/etc/systemd/system/portal.service.d/test.conf"),
            # Enable nothing at first boot: enabling portal.socket is the installer's job.
            ("preset", "disable *\n", "/etc/systemd/system-preset/00-portal-test.preset"),
        ):
            (work / name).write_text(text)
            binds.append(f"--bind-ro={work / name}:{target}")
    return binds


def wheel_shim(work: Path) -> dict[str, str]:
    """Environment that lets the test's Python build a wheel without network.

    `--offline` builds with the setuptools the Python has; before setuptools 70.1 that also
    needs the `wheel` package. When the test's Python lacks it, Debian's python3-wheel (pure
    Python) is put on PYTHONPATH for the installer's pip.
    """
    import importlib.util

    if importlib.util.find_spec("wheel") or importlib.util.find_spec(
        "setuptools.command.bdist_wheel"
    ):
        return {}
    dist = Path("/usr/lib/python3/dist-packages")
    # The package and its metadata: setuptools finds bdist_wheel through the entry points.
    parts = [dist / "wheel", *dist.glob("wheel-*-info")]
    if len(parts) < 2:
        pytest.skip("an offline build needs the wheel package (apt: python3-wheel)")
    shim = work / "shim"
    shim.mkdir(exist_ok=True)
    for part in parts:
        if not (shim / part.name).exists():
            (shim / part.name).symlink_to(part)
    return {"PYTHONPATH": str(shim)}


def install(c: Container, *args: str) -> str:
    """Run scripts/install with the test's Python, offline (the container has no network)."""
    result = c.run(
        str(ROOT / "scripts/install"), "--offline", f"--python={base_python()[0]}", *args,
        check=False, timeout_s=300, env=wheel_shim(c.workdir),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def uninstall(c: Container, *args: str) -> str:
    result = c.run(str(ROOT / "scripts/uninstall"), *args, check=False, timeout_s=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def exists(c: Container, path: str) -> bool:
    return c.run("test", "-e", path, check=False).returncode == 0


def gone(c: Container, pid: int) -> bool:
    """No such process, or a zombie (`sleep` as PID 1 reaps nothing)."""
    status = c.run("cat", f"/proc/{pid}/status", check=False).stdout
    return "State:\tZ" in status or not status


def refused(c: Container) -> bool:
    probe = c.net(sys.executable, "-c", REFUSED, STUB)
    return probe.stdout.split() == ["udp", "refused", "tcp", "refused"]


def test_install_upgrade_uninstall_with_systemd(install_work: Path) -> None:
    with launch(install_work, install_binds(install_work, boot=True), boot=True) as c:
        install(c)
        assert all(exists(c, path) for path in INSTALLED)
        for unit in ("portal.socket", "portal.service"):
            assert c.run("systemctl", "is-enabled", unit).stdout.strip() == "enabled"
            assert c.show(unit, "ActiveState") == "active"
        assert "path=/opt/portal/bin/portal " in c.show("portal.service", "ExecStart")
        c.run("id", "portal")
        # The installed CLI reaches the daemon on the system bus.
        c.run("/usr/local/bin/portal", "add", NAME, ADDRESS, "--any-network")
        assert c.dig(NAME, "+short").stdout.split() == [ADDRESS]

        # D-Bus activation: with the daemon and its socket stopped (so that no DNS query starts
        # it: with an override the stub is first in resolv.conf, and anything in the container
        # that looks up a name would), any CLI call starts it, and the socket with it.
        c.run("systemctl", "stop", "portal.service", "portal.socket")
        assert c.show("portal.service", "ActiveState") == "inactive"
        listed = c.run("/usr/local/bin/portal", "list", "--json", timeout_s=60)
        assert NAME in listed.stdout, listed.stdout + listed.stderr
        assert c.show("portal.service", "ActiveState") == "active"
        assert c.show("portal.socket", "ActiveState") == "active"
        pid = c.main_pid()

        # Again, as an upgrade: the running daemon is replaced, the override stays.
        install(c)
        assert c.main_pid() not in (0, pid)
        assert c.dig(NAME, "+short").stdout.split() == [ADDRESS]

        uninstall(c)
        assert not any(exists(c, path) for path in INSTALLED)
        assert not exists(c, "/opt/portal")
        assert c.run("systemctl", "is-enabled", "portal.socket", check=False).returncode != 0
        assert refused(c)
        # Without --purge the user and the overrides stay for a reinstall.
        c.run("id", "portal")
        assert exists(c, "/var/lib/portal")

        uninstall(c, "--purge")
        assert c.run("id", "portal", check=False).returncode != 0
        assert not exists(c, "/var/lib/portal")
        uninstall(c, "--purge")  # nothing left to do is not an error


def test_install_without_systemd_runs_the_daemon_on_a_private_bus(install_work: Path) -> None:
    # A container without an init system and without a system bus, like many CI machines.
    with launch(install_work, install_binds(install_work, boot=False), boot=False) as c:
        # Make the container's fresh /etc what an installed system has: the base users.
        c.run("systemd-sysusers")
        # The test's Python may sit below /root, which user portal cannot enter. These are the
        # container's own directories (its root is a tmpfs), above the read-only binds.
        for path in python_paths():
            for parent in path.parents:
                if parent != Path("/"):
                    c.run("chmod", "o+x", str(parent))
        out = install(c)
        assert "private bus" in out and "PORTAL_BUS=unix:path=/run/portal/bus" in out
        pid = int(c.run("cat", "/run/portal/daemon.pid").stdout)
        status = dict(
            line.split(":", 1)
            for line in c.run("cat", f"/proc/{pid}/status").stdout.splitlines()
            if ":" in line
        )
        assert status["Uid"].split() == [c.run("id", "-u", "portal").stdout.strip()] * 4
        # Only what binding port 53 needs.
        for cap in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            assert int(status[cap], 16) == 1 << 10, cap  # CAP_NET_BIND_SERVICE
        assert status["NoNewPrivs"].strip() == "1"
        bus = {"PORTAL_BUS": "unix:path=/run/portal/bus"}
        c.run("/usr/local/bin/portal", "add", NAME, ADDRESS, "--any-network", env=bus)
        assert c.dig(NAME, "+short").stdout.split() == [ADDRESS]

        install(c)
        new_pid = int(c.run("cat", "/run/portal/daemon.pid").stdout)
        assert new_pid != pid and gone(c, pid)
        assert c.dig(NAME, "+short").stdout.split() == [ADDRESS]
        bus_pid = int(c.run("cat", "/run/portal/bus.pid").stdout)

        uninstall(c, "--purge")
        assert gone(c, new_pid) and gone(c, bus_pid)
        assert not exists(c, "/run/portal")
        assert refused(c)
        assert not any(exists(c, path) for path in INSTALLED)
        assert c.run("id", "portal", check=False).returncode != 0
