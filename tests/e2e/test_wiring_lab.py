"""Resolver wiring end to end on a laptop whose resolv.conf real programs write.

The namespace lab (tests/lab/lab.py): a hotel with a captive portal that blocks the user's own
resolver, and a laptop where real NetworkManager writes /etc/resolv.conf (rc-manager=file,
symlink, or through Debian's openresolv set up as NixOS sets it up, or through Debian's own
resolvconf), or where no NetworkManager runs and ISC dhclient, dhcpcd or a person writes it;
/etc/hosts read-only and nothing edited by hand. Packages the host must not have (resolvconf,
openresolv, dhcpcd) are unpacked into the laptop's own /usr, /etc and /var/lib only. The
daemon runs as user `portal` with only the capability to bind port 53 (as the installer
starts it without systemd), the CLI as root, and the root helper `portal wire` is run by
tests/lab/wire_helper.py on the same triggers as portal-wire.path (systemd's side of that is in
tests/platform/test_wire_units.py). Programs look names up the way users' programs do: glibc's
`getent` and headless Chromium.

Nothing here touches the host's resolv.conf, users' files or network: the laptop's /etc is an
overlay, its /root a tmpfs in its own mount namespace, and user portal is made (and removed)
only if missing.
"""

from __future__ import annotations

import json
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from portal.core.wiring import STUB_MARK
from tests.lab.lab import LAPTOP_IF, Lab, LabProcess, which
from tests.lab.marks import LabFactory, requires_lab, requires_static_lab
from tests.support.procs import wait_until

pytest_plugins = ["tests.lab.fixtures"]
pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.timeout(400)]

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "dbus" / "org.portalhelper.Portal1.conf"
WIRE_HELPER = REPO / "tests" / "lab" / "wire_helper.py"
STUB = "127.0.0.153"
REQUEST = "/run/portal/resolv-stub"
ENV = {"PYTHONPATH": str(REPO)}
SIGN_IN_PAGE = "Welcome to Hotel Lab"
IDLE = "resolv.conf: the system's own (no override on this network, no portal)"


@pytest.fixture(scope="module")
def portal_user() -> Iterator[str]:
    """User portal, made as an installation makes it when this machine has none."""
    made = False
    try:
        pwd.getpwnam("portal")
    except KeyError:
        if shutil.which("systemd-sysusers") is None:
            pytest.skip("needs systemd-sysusers to create user portal (apt: systemd)")
        subprocess.run(
            ["systemd-sysusers", str(REPO / "systemd/sysusers-portal.conf")],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        made = True
    try:
        yield "portal"
    finally:
        if made:
            subprocess.run(["userdel", "portal"], check=False, capture_output=True, timeout=30)


def reachable_python(lab: Lab) -> None:
    """Let user portal run this Python inside the laptop: it may live under /root (0700).

    In the laptop's own mount namespace only: the closed directory is covered by an open tmpfs
    and the interpreter's and the tree's directories are bound back into it.
    """
    from tests.platform.test_polkit import closed_ancestor, python_paths

    lines = ["set -eu"]
    by_ancestor: dict[Path, list[Path]] = {}
    for path in python_paths():
        ancestor = closed_ancestor(path)
        if ancestor is not None:
            by_ancestor.setdefault(ancestor, []).append(path)
    stage = lab.run_dir / "stage"
    for number, (ancestor, paths) in enumerate(by_ancestor.items()):
        for index, path in enumerate(paths):
            lines += [f"mkdir -p {stage}/{number}-{index}",
                      f"mount --bind {path} {stage}/{number}-{index}"]  # fmt: skip
        lines += [f"mount -t tmpfs -o mode=0755 portal-test {ancestor}"]
        for index, path in enumerate(paths):
            lines += [f"mkdir -p {path}", f"mount --bind {stage}/{number}-{index} {path}"]
    lab.run_laptop(["sh", "-c", "\n".join(lines)], check=True, cwd="/")


class Laptop:
    """The daemon (user portal), the helper (root) and the CLI (root) on a lab laptop."""

    def __init__(self, lab: Lab, *, state: str = "portal-state") -> None:
        self.lab = lab
        self.state_dir = lab.run_dir / state
        self.helper: LabProcess | None = None
        self.daemon: LabProcess | None = None
        self.owner: LabProcess | None = None  # a DHCP client writing resolv.conf, if one runs
        self.starts = 0

    def prepare(self) -> Laptop:
        reachable_python(self.lab)
        self.state_dir.mkdir(exist_ok=True)
        shutil.chown(self.state_dir, "portal", "portal")
        # What RuntimeDirectory=portal makes under systemd.
        self.lab.run_laptop(
            ["sh", "-c", "mkdir -p /run/portal && chown portal:portal /run/portal"], check=True
        )
        return self

    def start_helper(self) -> None:
        self.helper = self.lab.spawn_laptop(
            [sys.executable, str(WIRE_HELPER), REQUEST, "/etc/resolv.conf"],
            env=ENV,
            name="wire-helper",
        )
        self.wait(lambda: "rc=" in self.helper_log(), 20, "the helper's first run")

    def start_daemon(self, *extra: str) -> LabProcess:
        """`portal daemon` as user portal, allowed to bind port 53 and nothing else.

        It sees systemd's mark (/run/systemd/system), as under systemd, where portal-wire.path
        acts on its request and it waits for that (so `portal add` returns wired); here
        wire_helper.py plays that part. Only in a mount namespace of its own (the same PID):
        NetworkManager and the rest of the laptop must not take it for a systemd machine.
        """
        self.starts += 1
        as_under_systemd = (
            "mkdir -p /run/systemd && mount -t tmpfs -o mode=0755 portal-test /run/systemd"
            ' && mkdir /run/systemd/system && exec "$@"'
        )
        argv = [
            "unshare", "--mount", "--propagation", "private", "sh", "-c", as_under_systemd, "sh",
            "setpriv", "--reuid=portal", "--regid=portal", "--init-groups", "--no-new-privs",
            "--bounding-set=-all,+net_bind_service", "--inh-caps=-all,+net_bind_service",
            "--ambient-caps=-all,+net_bind_service", "--",
            sys.executable, "-m", "portal", "daemon", "--log-level", "debug",
            "--listen", f"{STUB}:53", "--state-dir", str(self.state_dir), "--config", "/dev/null",
            *extra,
        ]  # fmt: skip
        self.daemon = self.lab.spawn_laptop(argv, env=ENV, name=f"portal-daemon-{self.starts}")
        self.wait(lambda: self.status() is not None, 20, "the daemon's control API")
        return self.daemon

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.lab.run_laptop([sys.executable, "-m", "portal", *args], env=ENV)

    def status(self) -> dict[str, Any] | None:
        if self.daemon is not None and not self.daemon.alive():
            raise AssertionError(f"the daemon exited:\n{self.daemon.read_log()[-3000:]}")
        out = self.cli("status", "--json")
        return json.loads(out.stdout) if out.returncode == 0 else None

    def wait(self, ok: Callable[[], Any], timeout_s: float, what: str) -> Any:
        """Poll `ok` until it returns something true (the poll only bounds a hang)."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = ok()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.05)

    def wait_status(self, ok: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = 30):
        def check() -> dict[str, Any] | None:
            s = self.status()
            return s if s is not None and ok(s) else None

        return self.wait(check, timeout_s, what)

    def resolv(self) -> bytes:
        """The laptop's /etc/resolv.conf as programs read it (through a symlink if it is one)."""
        out = self.lab.run_laptop(["cat", "/etc/resolv.conf"], check=True)
        return out.stdout.encode()

    def stub_lines(self) -> int:
        lines = self.resolv().decode().splitlines()
        return sum(1 for line in lines if line.split()[:2] == ["nameserver", STUB])

    def wait_resolv(self, expected: bytes, what: str, timeout_s: float = 15) -> None:
        self.wait(lambda: self.resolv() == expected, timeout_s, what)

    def getent(self, name: str) -> tuple[int, list[str], float]:
        """`getent ahosts NAME` on the laptop: exit code, addresses, seconds (timed inside)."""
        script = (
            's=$(date +%s%N); out=$(getent ahosts "$1"); rc=$?; e=$(date +%s%N); '
            'echo "$rc $((e - s))"; echo "$out"'
        )
        out = self.lab.run_laptop(["sh", "-c", script, "sh", name], timeout_s=60)
        head, *rest = out.stdout.splitlines()
        rc, ns = head.split()
        addresses = sorted({line.split()[0] for line in rest if line.strip()})
        return int(rc), addresses, int(ns) / 1e9

    def helper_log(self) -> str:
        return self.helper.read_log() if self.helper else ""

    def stub_put_back(self) -> int:
        """How many times the helper has rewritten resolv.conf with the stub first."""
        return sum(
            1 for line in self.helper_log().splitlines() if line.endswith(": the stub first")
            and " rewrote " in line
        )  # fmt: skip

    def logs(self) -> str:
        parts = [f"--- resolv.conf:\n{self.resolv().decode()}", f"--- helper:\n{self.helper_log()}"]
        if self.daemon is not None:
            parts.append(f"--- daemon:\n{self.daemon.read_log()[-4000:]}")
        if self.owner is not None:
            parts.append(f"--- {self.owner.name}:\n{self.owner.read_log()[-2000:]}")
        return "\n".join(parts)


def wired_line(servers: str, owner: str = "") -> Callable[[dict[str, Any]], bool]:
    """The status's wiring line with the stub first; `owner`: who writes resolv.conf."""
    line = f"resolv.conf: stub first, then {servers}" + (f" ({owner})" if owner else "")
    return lambda s: s["wiring"] == line


def with_stub(own: bytes) -> bytes:
    """The owner's file with portal's block right before its first nameserver line."""
    lines = own.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith(b"nameserver"))
    block = f"{STUB_MARK}\nnameserver {STUB}\n".encode()
    return b"".join([*lines[:at], block, *lines[at:]])


def chromium_dump(lab: Lab, url: str) -> str:
    """Headless Chromium on the laptop, as root (so without its sandbox): the page's DOM."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("needs chromium (apt: chromium)")
    profile = Path(tempfile.mkdtemp(prefix="portal-chromium-", dir=lab.run_dir))
    argv = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--dump-dom", url,
    ]  # fmt: skip
    out = lab.run_laptop(argv, timeout_s=90)
    return out.stdout + out.stderr


def captive_lab(lab_factory: LabFactory, portal_user: str, **options: Any) -> Laptop:
    options.setdefault("bus_policy_files", [POLICY])
    lab = lab_factory(**options)
    return Laptop(lab).prepare()


# --- the seed case: NetworkManager writes resolv.conf, the user's resolver is blocked ----------


@requires_lab
@pytest.mark.parametrize("rc_manager", ["file", "symlink"])
def test_blocked_resolver_sign_in_by_name_then_networkmanagers_own_again(
    lab_factory: LabFactory, portal_user: str, rc_manager: str
) -> None:
    laptop = captive_lab(
        lab_factory, portal_user, dns_mode="blocked", nm_rc_manager=rc_manager,
        nm_check_interval_s=3,
    )  # fmt: skip
    lab = laptop.lab
    nm_own = laptop.resolv()
    assert nm_own == b"# Generated by NetworkManager\nnameserver 192.0.2.53\n"
    link = lab.run_laptop(["readlink", "/etc/resolv.conf"]).stdout.strip()
    assert link == ("/run/NetworkManager/resolv.conf" if rc_manager == "symlink" else "")
    # The user's resolver is blocked: nothing resolves the sign-in host before portal.
    assert laptop.getent("login.hotel.test")[0] != 0

    laptop.start_helper()
    laptop.start_daemon()
    s = laptop.wait_status(lambda s: s["state"] == "captive", "captive")
    s = laptop.wait_status(
        wired_line("192.0.2.53", "NetworkManager"), "the stub first in resolv.conf"
    )
    assert (
        laptop.resolv()
        == (
            f"# Generated by NetworkManager\n{STUB_MARK}\nnameserver {STUB}\n"
            "nameserver 192.0.2.53\n"
        ).encode()
    )
    assert lab.run_laptop(["readlink", "/etc/resolv.conf"]).stdout.strip() == link
    # The stub forwards other names to the system's own resolver, never to itself.
    assert s["upstreams"] == ["192.0.2.53:53"], s

    rc, addresses, took = laptop.getent("login.hotel.test")
    assert (rc, addresses) == (0, ["10.77.0.1"]), laptop.logs()
    print(f"\n{rc_manager}: getent login.hotel.test in {took * 1000:.0f} ms")
    page = chromium_dump(lab, "http://login.hotel.test/portal")
    assert SIGN_IN_PAGE in page, page[-3000:]

    # The seed case: a venue says "map wifi.hotel.test to 10.77.0.1".
    added = laptop.cli("add", "wifi.hotel.test", "10.77.0.1")
    assert added.returncode == 0, added.stderr
    rc, addresses, _ = laptop.getent("wifi.hotel.test")
    assert (rc, addresses) == (0, ["10.77.0.1"])
    assert laptop.cli("remove", "wifi.hotel.test").returncode == 0

    lab.login()
    assert laptop.cli("check").returncode == 0
    laptop.wait_status(lambda s: s["state"] == "online" and not s["overrides"], "online")
    # No override, no portal: resolv.conf is NetworkManager's own, byte for byte, link and all.
    laptop.wait_resolv(nm_own, "NetworkManager's own resolv.conf")
    assert lab.run_laptop(["readlink", "/etc/resolv.conf"]).stdout.strip() == link
    if rc_manager == "file":
        nm_file = lab.run_laptop(["cat", "/run/NetworkManager/resolv.conf"]).stdout.encode()
        assert laptop.resolv() == nm_file
    laptop.wait_status(lambda s: s["wiring"] == IDLE, "the idle wiring line")


@requires_lab
@pytest.mark.parametrize(
    "nm_options",
    [{}, {"nm_check": True, "nm_check_interval_s": 0}],
    ids=["no-check-uri", "check-interval-0"],
)
def test_detection_without_networkmanagers_check_wires_the_stub(
    lab_factory: LabFactory, portal_user: str, nm_options: dict[str, Any]
) -> None:
    # Debian's default (no check URI), or the check turned off: NetworkManager says FULL on any
    # network, and portal's own probe decides.
    laptop = captive_lab(lab_factory, portal_user, dns_mode="blocked", **nm_options)
    laptop.start_helper()
    laptop.start_daemon()
    laptop.wait_status(lambda s: s["state"] == "captive", "captive", timeout_s=20)
    laptop.wait_status(wired_line("192.0.2.53", "NetworkManager"), "the stub first in resolv.conf")
    assert laptop.getent("login.hotel.test")[:2] == (0, ["10.77.0.1"])


# --- who writes resolv.conf -------------------------------------------------------------------


def start_dhclient(laptop: Laptop) -> None:
    """ISC dhclient with Debian's dhclient-script, in the foreground (stopped by its PID), its
    lease and pid files in the lab's run directory."""
    run = laptop.lab.run_dir
    argv = ["dhclient", "-d", "-v", "-4", "-lf", f"{run}/dhclient.leases",
            "-pf", f"{run}/dhclient.pid", LAPTOP_IF]  # fmt: skip
    laptop.owner = laptop.lab.spawn_laptop(argv, name="dhclient", cwd="/")


def dhclient_again(laptop: Laptop) -> None:
    """dhclient run again (a reboot of its lease, as at the next boot or resume): the script
    writes resolv.conf once more."""
    assert laptop.owner is not None
    laptop.owner.stop()
    start_dhclient(laptop)


def start_dhcpcd(laptop: Laptop) -> None:
    """dhcpcd in the foreground (stopped by its PID), IPv4 only, with Debian's hooks and its
    stock /etc/dhcpcd.conf, its state in the laptop's own /var/lib and /run."""
    # dhcpcd-run-hooks runs /etc/dhcpcd.exit-hook after its hooks (resolv.conf's included):
    # the lab's records each run that is over, so a test knows when a rewrite is complete.
    laptop.lab.write_laptop_file("/etc/dhcpcd.exit-hook", f'echo "$reason" >> {DHCPCD_HOOKS_RUN}\n')
    argv = ["dhcpcd", "--nobackground", "--debug", "-4", LAPTOP_IF]
    laptop.owner = laptop.lab.spawn_laptop(argv, name="dhcpcd", cwd="/")


DHCPCD_HOOKS_RUN = "/run/lab-dhcpcd-hooks-run"


def dhcpcd_hooks_run(laptop: Laptop) -> list[str]:
    """The reasons (BOUND, RENEW...) of dhcpcd's hook runs that are over, oldest first."""
    return laptop.lab.run_laptop(["cat", DHCPCD_HOOKS_RUN]).stdout.split()


def dhcpcd_rebind(laptop: Laptop) -> None:
    """`dhcpcd -n`: the running dhcpcd rebinds its lease and runs its hooks again."""
    assert laptop.owner is not None
    ran = len(dhcpcd_hooks_run(laptop))
    out = laptop.lab.run_laptop(["dhcpcd", "-4", "-n", LAPTOP_IF], check=True)
    # It told the running dhcpcd (found by its pid file); a new one would say "starting".
    assert f"to pid {laptop.owner.pid}\n" in out.stderr, out
    # The running one writes resolv.conf twice: at once (its RECONFIGURE hook), and again once
    # the server has acknowledged the lease (RENEW, REBOOT...). The rewrite is over only then.
    laptop.wait(
        lambda: set(dhcpcd_hooks_run(laptop)[ran:]) - {"RECONFIGURE"}, 30,
        "dhcpcd's hooks for the rebound lease",
    )  # fmt: skip


def rewrite_by_hand(laptop: Laptop) -> None:
    laptop.lab.write_laptop_file("/etc/resolv.conf", BY_HAND.decode())


def resolvconf_u(laptop: Laptop) -> None:
    laptop.lab.run_laptop(["resolvconf", "-u"], check=True)


def reconnect(laptop: Laptop) -> None:
    laptop.lab.nmcli("connection", "up", "hotel-wifi")


def nothing(laptop: Laptop) -> None:
    """The owner wrote resolv.conf while the lab came up."""


BY_HAND = b"nameserver 10.77.0.1\nsearch hotel.test\n"


@dataclass(frozen=True)
class Owner:
    """Who writes the laptop's resolv.conf, and how it writes it again."""

    lab: dict[str, Any]  # the lab's options
    start: Callable[[Laptop], None]  # until it has written resolv.conf
    rewrite: Callable[[Laptop], None]  # a renewal: the owner writes resolv.conf again
    head: bytes  # how its file starts
    name: str = ""  # how `portal status` names it ("" where the file does not say)
    link: str = ""  # what /etc/resolv.conf links to ("" for a file)
    needs: list[str] = field(default_factory=list)  # programs on the host

    def unavailable(self) -> str | None:
        missing = [tool for tool in self.needs if which(tool) is None]
        if missing:
            return f"needs {', '.join(missing)} (apt: isc-dhcp-client)"
        if not self.lab.get("nm", True):
            try:
                import portal.edges.netlink  # noqa: F401
            except ImportError:
                return "netlink watcher not built"
        return None


NO_NM = {"nm": False, "bare": True}
OWNERS = {
    "networkmanager": Owner(
        {}, nothing, reconnect, b"# Generated by NetworkManager\n", "NetworkManager"
    ),
    "by-hand": Owner({"nm": False}, nothing, rewrite_by_hand, BY_HAND),
    # dhclient-script writes no header: the status line cannot name it.
    "dhclient": Owner(
        NO_NM, start_dhclient, dhclient_again, b"domain hotel.test\n", needs=["dhclient"]
    ),
    "dhcpcd": Owner(
        {**NO_NM, "packages": ["dhcpcd-base"]},
        start_dhcpcd,
        dhcpcd_rebind,
        b"# Generated by dhcpcd from lap0.dhcp\n",
        "dhcpcd",
    ),  # fmt: skip
    "debian-resolvconf": Owner(
        {"nm_rc_manager": "resolvconf", "packages": ["resolvconf"]},
        nothing,
        resolvconf_u,
        b"# Dynamic resolv.conf(5) file for glibc resolver(3) generated by resolvconf(8)\n",
        "resolvconf",
        "../run/resolvconf/resolv.conf",
    ),  # fmt: skip
}


def owners(*, but: str = "") -> list[Any]:
    """OWNERS as test parameters, named by their keys."""
    return [pytest.param(owner, id=key) for key, owner in OWNERS.items() if key != but]


def owner_lab(lab_factory: LabFactory, portal_user: str, owner: Owner) -> tuple[Laptop, bytes]:
    """A hijacking hotel and a laptop whose resolv.conf `owner` has written: (laptop, its file)."""
    why = owner.unavailable()
    if why is not None:
        pytest.skip(why)
    laptop = captive_lab(lab_factory, portal_user, dns_mode="hijack", **owner.lab)
    owner.start(laptop)
    laptop.wait(lambda: b"nameserver " in laptop.resolv(), 60, "the owner's resolv.conf")
    own = laptop.resolv()
    assert own.startswith(owner.head), own
    assert b"nameserver 10.77.0.1\n" in own and STUB.encode() not in own, own
    link = laptop.lab.run_laptop(["readlink", "/etc/resolv.conf"]).stdout.strip()
    assert link == owner.link
    return laptop, own


# --- exactly one wiring, and nothing stranded ------------------------------------------------


@requires_lab
def test_reconnects_and_restarts_leave_exactly_one_wiring(
    lab_factory: LabFactory, portal_user: str
) -> None:
    laptop = captive_lab(lab_factory, portal_user, dns_mode="hijack")
    lab = laptop.lab
    nm_own = laptop.resolv()
    laptop.start_helper()
    laptop.start_daemon()
    assert laptop.cli("add", "mine.example", "10.9.9.9", "--any-network").returncode == 0
    laptop.wait_status(wired_line("10.77.0.1", "NetworkManager"), "wired")

    def one_wiring(what: str) -> None:
        laptop.wait_status(wired_line("10.77.0.1", "NetworkManager"), f"wired after {what}")
        laptop.wait(lambda: laptop.stub_lines() == 1, 10, f"one stub line after {what}")
        assert laptop.resolv().decode().count(STUB_MARK) == 1
        assert laptop.getent("mine.example")[:2] == (0, ["10.9.9.9"])

    for _ in range(3):
        lab.nmcli("connection", "down", "hotel-wifi")
        lab.nmcli("connection", "up", "hotel-wifi")
        one_wiring("a reconnect")
    lab.restart_nm()
    one_wiring("a NetworkManager restart")
    for _ in range(2):
        assert laptop.daemon is not None
        laptop.daemon.stop()  # SIGTERM: the daemon withdraws its request as it stops
        laptop.wait_resolv(nm_own, "NetworkManager's own after the daemon stopped")
        laptop.start_daemon()
        one_wiring("a daemon restart")
    # The hotel's portal is up all along (an episode): signed in and the override removed,
    # the stub has no more work.
    lab.login()
    assert laptop.cli("check").returncode == 0
    laptop.wait_status(lambda s: s["state"] == "online", "online")
    assert laptop.cli("remove", "mine.example").returncode == 0
    laptop.wait_resolv(nm_own, "NetworkManager's own once nothing is overridden")


@requires_static_lab
@pytest.mark.parametrize("owner", owners())
def test_a_killed_daemon_costs_no_lookup_and_a_new_one_repairs_the_wiring(
    lab_factory: LabFactory, portal_user: str, owner: Owner
) -> None:
    laptop, own = owner_lab(lab_factory, portal_user, owner)
    laptop.start_helper()
    daemon = laptop.start_daemon()
    assert laptop.cli("add", "mine.example", "10.9.9.9", "--any-network").returncode == 0
    laptop.wait_status(wired_line("10.77.0.1", owner.name), "wired")

    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    # The stub is still listed first, but nothing holds its port: glibc is refused at once and
    # asks the network's server. (Under systemd the helper takes the line out as well.)
    assert laptop.stub_lines() == 1
    times = []
    for name in ("other.example", "www.example.test", "other.example"):
        rc, addresses, took = laptop.getent(name)
        assert (rc, addresses) == (0, ["10.77.0.1"]), laptop.logs()
        assert took < 1.0, f"{name}: {took:.2f} s"
        times.append(took)
    print(
        f"\nlookups of other names after SIGKILL: {', '.join(f'{t * 1000:.0f}' for t in times)} ms"
    )

    # A new daemon whose overrides are gone (a fresh state) and that does not look at the
    # network (so no portal gives it work): its first request repairs the stale line at once.
    Laptop.__init__(laptop, laptop.lab, state="fresh-state")
    laptop.prepare()
    laptop.start_daemon("--network-source", "none")
    laptop.wait_resolv(own, "the stale line repaired at start")
    laptop.wait_status(lambda s: s["wiring"] == IDLE, "idle")


@requires_lab
def test_why_not_networkmanagers_reapply(lab_factory: LabFactory) -> None:
    """The no-file-access candidate, tried on the real NetworkManager: Device.Reapply with the
    stub first in the applied connection's ipv4.dns (what `nmcli device modify` does). NM 1.42
    accepts it, but carries it to resolv.conf only through a new DHCP exchange: reapplying an
    ipv4 setting restarts DHCP, and the stub shows up, if at all, once the new lease is in, with
    the network's DNS in flux meanwhile (docs/wiring.md). Doing that whenever the stub gains or
    loses work is what portal rejects. Should a NetworkManager apply DNS without asking for the
    lease again, this fails, and the choice is worth making again."""
    lab = lab_factory(dns_mode="hijack")
    before = lab.run_laptop(["cat", "/etc/resolv.conf"]).stdout
    assert STUB not in before

    def dhcp_requests() -> int:
        log = lab.dnsmasq_log.read_text(errors="replace")
        return log.count("DHCPDISCOVER(") + log.count("DHCPREQUEST(")

    requests = dhcp_requests()
    started = time.monotonic()
    out = lab.nmcli("device", "modify", "lap0", "ipv4.dns", STUB)
    assert "successfully reapplied" in out
    # NetworkManager took it: the applied connection (GetAppliedConnection) has the stub.
    path = lab.nmcli("-g", "GENERAL.DBUS-PATH", "device", "show", "lap0")
    applied = subprocess.run(
        ["busctl", f"--address={lab.bus_address}", "--json=short", "call",
         "org.freedesktop.NetworkManager", path, "org.freedesktop.NetworkManager.Device",
         "GetAppliedConnection", "u", "0"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert '"dns-data":{"type":"as","data":["127.0.0.153"]}' in applied, applied
    # ...and asked the venue for its lease again: the price of every change of DNS this way.
    wait_until("a new DHCP exchange after the reapply", lambda: dhcp_requests() > requests)
    asked_s = time.monotonic() - started
    carried_s = None
    while time.monotonic() - started < 3.0:
        if STUB in lab.run_laptop(["cat", "/etc/resolv.conf"]).stdout:
            carried_s = time.monotonic() - started
            break
        time.sleep(0.1)
    carried = "not within 3 s" if carried_s is None else f"after {carried_s:.2f} s"
    print(f"\nDHCP asked again after {asked_s:.2f} s; stub in resolv.conf {carried}")


# --- NetworkManager's dnsmasq, openresolv as NixOS sets it up ------------------------------


@requires_lab
def test_networkmanagers_dnsmasq_overrides_answer_every_time(
    lab_factory: LabFactory, portal_user: str
) -> None:
    # dns=dnsmasq: resolv.conf names NM's dnsmasq (127.0.0.1). A server that merely joined
    # dnsmasq's upstreams would race the hijacking hotel DNS; first in resolv.conf, the stub
    # is asked first by glibc every time, and forwards the rest to that same dnsmasq.
    laptop = captive_lab(lab_factory, portal_user, dns_mode="hijack", nm_dns="dnsmasq")
    nm_own = laptop.resolv()
    assert "nameserver 127.0.0.1\n" in nm_own.decode()
    laptop.start_helper()
    laptop.start_daemon()
    assert laptop.cli("add", "mine.example", "10.9.9.9", "--any-network").returncode == 0
    s = laptop.wait_status(wired_line("127.0.0.1", "NetworkManager"), "wired before NM's dnsmasq")
    assert s["upstreams"] == ["127.0.0.1:53"]
    answers = [laptop.getent("mine.example")[:2] for _ in range(20)]
    assert answers == [(0, ["10.9.9.9"])] * 20
    assert laptop.getent("other.example")[:2] == (0, ["10.77.0.1"])  # through dnsmasq
    laptop.lab.login()
    assert laptop.cli("check").returncode == 0
    laptop.wait_status(lambda s: s["state"] == "online", "online")
    assert laptop.cli("remove", "mine.example").returncode == 0
    laptop.wait_resolv(nm_own, "NetworkManager's own")


NIXOS_RESOLVCONF_CONF = """\
# This is the default, but we must set it here to prevent
# a collision with an apparently unrelated environment
# variable with the same name exported by dhcpcd.
interface_order='lo lo[0-9]*'
# Options as described in resolv.conf(5)
resolv_conf_options='edns0'
"""


@requires_lab
def test_openresolv_as_on_nixos_keeps_the_pinned_server(
    lab_factory: LabFactory, portal_user: str
) -> None:
    # NixOS with NetworkManager: rc-manager=resolvconf, openresolv configured by the resolvconf
    # module, networking.nameservers (here the user's public resolver) added as NixOS's
    # network-setup adds them. The stub comes first only while it has work, the pinned server
    # stays, and openresolv's own configuration is never changed.
    laptop = captive_lab(
        lab_factory, portal_user, dns_mode="hijack", nm_rc_manager="resolvconf",
        packages=["openresolv"],
    )  # fmt: skip
    lab = laptop.lab
    lab.write_laptop_file("/etc/resolvconf.conf", NIXOS_RESOLVCONF_CONF)
    pinned = lab.run_laptop(
        ["sh", "-c", "printf 'nameserver 192.0.2.53\\n' | resolvconf -m 1 -a static"]
    )
    assert pinned.returncode == 0, pinned.stderr
    own = laptop.resolv()
    servers = [line.split()[1] for line in own.decode().splitlines() if line.startswith("name")]
    assert sorted(servers) == ["10.77.0.1", "192.0.2.53"], own
    assert own.startswith(b"# Generated by resolvconf\n")

    laptop.start_helper()
    laptop.start_daemon()
    s = laptop.wait_status(lambda s: s["state"] == "captive", "captive")
    s = laptop.wait_status(
        wired_line(", ".join(servers), "openresolv"),
        "the stub first, openresolv's servers after it",
    )
    wired = laptop.resolv().decode()
    assert [ln.split()[1] for ln in wired.splitlines() if ln.startswith("name")] == [STUB, *servers]
    # The stub forwards to the pinned server too (NetworkManager's own list does not know it).
    assert s["upstreams"] == [f"{ns}:53" for ns in servers]
    assert laptop.getent("login.hotel.test")[:2] == (0, ["10.77.0.1"])
    assert lab.run_laptop(["cat", "/etc/resolvconf.conf"]).stdout == NIXOS_RESOLVCONF_CONF

    # openresolv regenerating the file (another interface, a renewal) keeps the stub first.
    assert lab.run_laptop(["resolvconf", "-u"]).returncode == 0
    laptop.wait(lambda: laptop.stub_lines() == 1 and STUB_MARK in laptop.resolv().decode(), 10,
                "the stub back after resolvconf -u")  # fmt: skip

    lab.login()
    assert laptop.cli("check").returncode == 0
    laptop.wait_status(lambda s: s["state"] == "online", "online")
    laptop.wait_resolv(own, "openresolv's own resolv.conf")


# --- every owner: the stub first while it has work, the owner's own file otherwise -----------


@requires_static_lab
@pytest.mark.parametrize("owner", owners(but="networkmanager"))
def test_the_owner_rewrites_and_the_stub_is_back_first_then_its_own_file(
    lab_factory: LabFactory, portal_user: str, owner: Owner
) -> None:
    # NetworkManager's own rewrites are in test_reconnects_and_restarts_leave_exactly_one_wiring.
    laptop, own = owner_lab(lab_factory, portal_user, owner)
    lab = laptop.lab
    laptop.start_helper()
    laptop.start_daemon()
    laptop.wait_status(lambda s: s["state"] == "captive", "captive")
    # The portal episode: the stub first, named after the owner, the owner's servers after it.
    laptop.wait_status(wired_line("10.77.0.1", owner.name), "the stub first")
    assert laptop.resolv() == with_stub(own)
    lab.login()
    assert laptop.cli("check").returncode == 0
    laptop.wait_status(lambda s: s["state"] == "online", "online")
    laptop.wait_resolv(own, "the owner's own file once signed in")

    # The seed case. (This hotel's DNS answers every name with 10.77.0.1, so the override
    # uses another address: only the stub can give it.)
    added = laptop.cli("add", "wifi.hotel.test", "10.77.0.7")
    assert added.returncode == 0, added.stderr
    got = laptop.getent("wifi.hotel.test")[:2]
    assert got == (0, ["10.77.0.7"]), f"{got}\n{laptop.status()}\n{laptop.logs()}"
    assert laptop.resolv() == with_stub(own)

    # The owner writes resolv.conf again (a renewal): the helper puts the stub back first.
    put_back = laptop.stub_put_back()
    owner.rewrite(laptop)
    laptop.wait(
        lambda: laptop.stub_put_back() > put_back and laptop.resolv() == with_stub(own), 60,
        "the stub back first after the owner's rewrite",
    )  # fmt: skip
    assert laptop.stub_lines() == 1
    got = laptop.getent("wifi.hotel.test")[:2]
    assert got == (0, ["10.77.0.7"]), f"{got}\n{laptop.status()}\n{laptop.logs()}"
    laptop.wait_status(wired_line("10.77.0.1", owner.name), "the wiring line after the rewrite")
    assert lab.run_laptop(["readlink", "/etc/resolv.conf"]).stdout.strip() == owner.link

    assert laptop.cli("remove", "wifi.hotel.test").returncode == 0
    laptop.wait_resolv(own, "the owner's own file, byte for byte")
    laptop.wait_status(lambda s: s["wiring"] == IDLE, "the idle wiring line")
