"""The shipped D-Bus policy and polkit action and rule, enforced by the real programs.

A private dbus-daemon runs Debian's system-bus policy with only the shipped
org.portalhelper.Portal1.conf (and polkit's own) in its include directory; a private polkitd
runs on that bus in a private mount namespace where the shipped action and rule are mounted
over /usr/share/polkit-1/actions and /etc/polkit-1/rules.d. The real `portal daemon` runs there
as user portal, and the real CLI as users the test creates: one in netdev, one not.

It must not touch the host's buses or polkit configuration: everything it mounts lives in its
own mount namespace, every process it starts is stopped by PID, and the users it creates are
removed afterwards.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.platform.test_nspawn import python_paths
from tests.support.procs import free_port, stop_pid, wait_until

ROOT = Path(__file__).resolve().parents[2]
BUS_NAME = "org.portalhelper.Portal1"
POLKITD = Path("/usr/lib/polkit-1/polkitd")
SYSTEM_CONF = Path("/usr/share/dbus-1/system.conf")
POLKIT_BUS_CONF = Path("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")
ACTIONS = (
    "org.portalhelper.portal.manage-overrides",
    "org.portalhelper.portal.check",
    "org.portalhelper.portal.network-choices",
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create users and mount namespaces"),
    pytest.mark.skipif(
        not POLKITD.exists() or not POLKIT_BUS_CONF.exists(),
        reason="polkitd not installed (apt: polkitd)",
    ),
    pytest.mark.skipif(
        shutil.which("dbus-daemon") is None or not SYSTEM_CONF.exists(),
        reason="dbus-daemon not installed (apt: dbus-daemon)",
    ),
    pytest.mark.skipif(
        shutil.which("useradd") is None or shutil.which("setpriv") is None,
        reason="needs useradd (passwd) and setpriv (util-linux)",
    ),
]


def closed_ancestor(path: Path) -> Path | None:
    """The topmost directory above `path` that other users cannot enter, if any."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not parent.stat().st_mode & stat.S_IXOTH:
            return parent
    return None


def bus_config(tmp: Path) -> Path:
    """Debian's system-bus policy, listening in tmp, including only our policy and polkit's."""
    tree = ET.parse(SYSTEM_CONF)
    root = tree.getroot()
    # Keep the policy; drop what makes it *the* system bus (its socket, pid file, user,
    # activation of the host's services, the host's system.d).
    for tag in (
        "listen", "user", "fork", "pidfile", "syslog", "servicehelper",
        "standard_system_servicedirs", "includedir", "include",
    ):  # fmt: skip
        for element in root.findall(tag):
            root.remove(element)
    listen = ET.SubElement(root, "listen")
    listen.text = f"unix:path={tmp}/system_bus_socket"
    includes = tmp / "system.d"
    includes.mkdir()
    shutil.copy(ROOT / "dbus/org.portalhelper.Portal1.conf", includes)
    shutil.copy(POLKIT_BUS_CONF, includes)
    include = ET.SubElement(root, "includedir")
    include.text = str(includes)
    path = tmp / "bus.conf"
    path.write_text(
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
        + ET.tostring(root, encoding="unicode")
    )
    return path


@dataclass
class Stack:
    tmp: Path
    address: str
    holder: int  # PID of the process that keeps the private mount namespace
    stub_port: int
    member: str  # in netdev
    outsider: str  # in no group that matters
    nixos_member: str  # in networkmanager
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    logs: dict[int, str] = field(default_factory=dict)  # PID -> log file name in tmp

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/",
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(ROOT),
            "PYTHONDONTWRITEBYTECODE": "1",
            "DBUS_SYSTEM_BUS_ADDRESS": self.address,
            "PORTAL_BUS": self.address,
        }

    def argv(self, user: str | None, *cmd: str) -> list[str]:
        """cmd inside the private mount namespace, as `user` with its groups (None: root)."""
        argv = ["nsenter", "-t", str(self.holder), "-m"]
        if user is not None:
            argv += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
        return argv + list(cmd)

    def run(self, user: str | None, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(user, *cmd),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def portal(self, user: str | None, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(user, sys.executable, "-m", "portal", *args)

    def start(self, user: str | None, *cmd: str, log: str) -> subprocess.Popen[str]:
        # nsenter and setpriv exec the command, so the PID is the program's own.
        with (self.tmp / log).open("w") as out:
            proc = subprocess.Popen(
                self.argv(user, *cmd),
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def wait_started(self, what: str, check: Callable[[], bool]) -> None:
        """Wait for the last program started to be ready; fail at once, with its log, if it
        exits, and with its log if it never gets ready (a loaded machine gets a minute)."""
        proc = self.procs[-1]
        log = self.tmp / self.logs[proc.pid]
        deadline = time.monotonic() + 60
        while not check():
            if proc.poll() is not None:
                pytest.fail(f"{what}: exited with {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{log.read_text()}")
            time.sleep(0.1)

    def has_owner(self, name: str) -> bool:
        reply = self.run(
            None, "dbus-send", f"--bus={self.address}", "--print-reply",
            "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
            "org.freedesktop.DBus.NameHasOwner", f"string:{name}",
        )  # fmt: skip
        return "boolean true" in reply.stdout


def holder_script(tmp: Path, shared: list[Path]) -> str:
    """Shell run by `unshare -m`: mount our polkit files and make Python reachable, then wait."""
    lines = [
        "set -eu",
        f"mount --bind {tmp}/actions /usr/share/polkit-1/actions",
        "mkdir -p /etc/polkit-1/rules.d",
        f"mount --bind {tmp}/rules /etc/polkit-1/rules.d",
    ]
    # The test's Python may live in /root (mode 0700), where user portal cannot reach it: stage
    # it aside, cover the closed directory with an open tmpfs, and put the paths back.
    by_ancestor: dict[Path, list[Path]] = {}
    for path in shared:
        ancestor = closed_ancestor(path)
        if ancestor is not None:
            by_ancestor.setdefault(ancestor, []).append(path)
    for number, (ancestor, paths) in enumerate(by_ancestor.items()):
        for index, path in enumerate(paths):
            lines += [f"mkdir -p {tmp}/stage/{number}-{index}"]
            lines += [f"mount --bind {path} {tmp}/stage/{number}-{index}"]
        lines += [f"mount -t tmpfs -o mode=0755 portal-test {ancestor}"]
        for index, path in enumerate(paths):
            lines += [f"mkdir -p {path}", f"mount --bind {tmp}/stage/{number}-{index} {path}"]
    lines += [f"touch {tmp}/ready", "exec sleep 600"]
    return "\n".join(lines) + "\n"


def add_user(name: str, *groups: str) -> None:
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--home-dir", "/",
         *(["--groups", ",".join(groups)] if groups else []), name],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    tmp = Path(tempfile.mkdtemp(prefix="portal-polkit-"))
    tmp.chmod(0o755)
    tag = secrets.token_hex(3)
    member, outsider, nixos = f"ptest-{tag}-a", f"ptest-{tag}-b", f"ptest-{tag}-n"
    made_users: list[str] = []
    made_groups: list[str] = []
    procs: list[subprocess.Popen[str]] = []
    holder: subprocess.Popen[str] | None = None
    try:
        # netdev is Debian's NetworkManager group, networkmanager NixOS's; made for the test
        # (and removed after) where missing.
        for group in ("netdev", "networkmanager"):
            try:
                grp.getgrnam(group)
            except KeyError:
                subprocess.run(["groupadd", "--system", group], check=True, timeout=30)
                made_groups.append(group)
        try:
            pwd.getpwnam("portal")
        except KeyError:
            # The same entry an installation creates.
            subprocess.run(
                ["systemd-sysusers", str(ROOT / "systemd/sysusers-portal.conf")],
                check=True,
                timeout=30,
            )
            made_users.append("portal")
        add_user(member, "netdev")
        made_users.append(member)
        add_user(outsider)
        made_users.append(outsider)
        add_user(nixos, "networkmanager")
        made_users.append(nixos)

        for sub, source in (
            ("actions", ROOT / "polkit/org.portalhelper.portal.policy"),
            ("rules", ROOT / "polkit/50-portal.rules"),
        ):
            (tmp / sub).mkdir(mode=0o755)
            shutil.copy(source, tmp / sub)
        state = tmp / "state"
        state.mkdir()
        shutil.chown(state, "portal", "portal")

        with (tmp / "holder.log").open("w") as out:
            holder = subprocess.Popen(
                ["unshare", "--mount", "--propagation=private", "sh", "-c",
                 holder_script(tmp, python_paths())],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        wait_until(
            "the mount namespace", lambda: (tmp / "ready").exists() or holder.poll() is not None
        )
        assert holder.poll() is None, (tmp / "holder.log").read_text()

        address = f"unix:path={tmp}/system_bus_socket"
        s = Stack(tmp, address, holder.pid, free_port(), member, outsider, nixos, procs)
        s.start(None, "dbus-daemon", "--nofork", f"--config-file={bus_config(tmp)}", log="bus.log")
        s.wait_started("the bus socket", lambda: (tmp / "system_bus_socket").exists())
        s.start(None, str(POLKITD), "--no-debug", log="polkitd.log")
        s.wait_started("polkitd on the bus", lambda: s.has_owner("org.freedesktop.PolicyKit1"))
        s.start(
            "portal", sys.executable, "-m", "portal", "daemon", "--bus", address,
            "--listen", f"127.0.0.1:{s.stub_port}", "--state-dir", str(state),
            "--upstream", "127.0.0.1:9", "--network-source", "none", "--wiring", "none",
            log="daemon.log",
        )  # fmt: skip
        s.wait_started("the daemon on the bus", lambda: s.has_owner(BUS_NAME))
        yield s
    finally:
        # Stop in reverse order, each by its own PID.
        for proc in reversed(procs):
            stop_pid(proc, timeout_s=10)
        if holder is not None:
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
        for user in made_users:
            subprocess.run(["userdel", user], check=False, capture_output=True, timeout=30)
        for group in made_groups:
            subprocess.run(["groupdel", group], check=False, capture_output=True, timeout=30)
        if not os.environ.get("PORTAL_TEST_KEEP_LOGS"):
            shutil.rmtree(tmp, ignore_errors=True)


def test_daemon_runs_as_portal_and_uses_polkit(stack: Stack) -> None:
    status = stack.portal(stack.outsider, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["auth"] == "polkit"
    daemon = stack.procs[-1]
    uids = next(
        line.split()[1:]
        for line in Path(f"/proc/{daemon.pid}/status").read_text().splitlines()
        if line.startswith("Uid:")
    )
    assert uids == [str(pwd.getpwnam("portal").pw_uid)] * 4


def test_pkaction_sees_the_shipped_actions(stack: Stack) -> None:
    for action in ACTIONS:
        shown = stack.run(None, "pkaction", "--verbose", "--action-id", action)
        assert shown.returncode == 0, shown.stderr
        assert "auth_admin_keep" in shown.stdout
        assert "org.freedesktop.policykit.owner -> unix-user:portal" in shown.stdout


def test_rule_lets_netdev_and_networkmanager_in_for_every_action(stack: Stack) -> None:
    for action in ACTIONS:
        # pkcheck asks about its own shell's process, as that user.
        script = f'pkcheck --action-id {action} --process "$$"'
        for user in (stack.member, stack.nixos_member):
            member = stack.run(user, "sh", "-c", script)
            assert member.returncode == 0, member.stdout + member.stderr
        outsider = stack.run(stack.outsider, "sh", "-c", script)
        # 2: not authorised (a password would be needed), 1 would be an error.
        assert outsider.returncode == 2, outsider.stdout + outsider.stderr


def test_only_portal_may_own_the_name(stack: Stack) -> None:
    request = (
        "dbus-send", f"--bus={stack.address}", "--print-reply", "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus", "org.freedesktop.DBus.RequestName", f"string:{BUS_NAME}",
        "uint32:0",
    )  # fmt: skip
    for user in (stack.outsider, stack.member):
        result = stack.run(user, *request)
        assert result.returncode != 0
        assert "AccessDenied" in result.stderr, result.stderr


def test_netdev_member_may_add_and_remove(stack: Stack) -> None:
    added = stack.portal(stack.member, "add", "member.portal.test", "10.9.8.7", "--any-network")
    assert added.returncode == 0, added.stderr
    answer = subprocess.run(
        ["dig", "+short", "+tries=1", "+time=5", "-p", str(stack.stub_port), "@127.0.0.1",
         "member.portal.test"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert answer.stdout.split() == ["10.9.8.7"]
    removed = stack.portal(stack.member, "remove", "member.portal.test")
    assert removed.returncode == 0, removed.stderr


def test_other_user_may_not_add(stack: Stack) -> None:
    refused = stack.portal(stack.outsider, "add", "outsider.portal.test", "10.6.6.6")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stderr.startswith("portal: error:"), refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    listed = stack.portal(None, "list", "--json")
    assert "outsider.portal.test" not in listed.stdout
    # Removing is the same action.
    stack.portal(None, "add", "kept.portal.test", "10.5.5.5", "--any-network")
    refused = stack.portal(stack.outsider, "remove", "kept.portal.test")
    assert refused.returncode == 1, refused.stdout + refused.stderr


def test_anyone_may_list(stack: Stack) -> None:
    added = stack.portal(None, "add", "listed.portal.test", "10.4.4.4", "--any-network")
    assert added.returncode == 0, added.stderr
    for user in (stack.outsider, stack.member, None):
        listed = stack.portal(user, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert "listed.portal.test" in listed.stdout


def test_choices_about_networks_go_through_polkit(stack: Stack) -> None:
    refused = stack.portal(stack.outsider, "ask-again", "--all")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "not authorised to change portal's choices about networks" in refused.stderr
    # a member gets past polkit: the daemon itself answers (it asks on every network already)
    allowed = stack.portal(stack.member, "ask-again", "--all")
    assert allowed.returncode == 1, allowed.stdout + allowed.stderr
    assert "not authorised" not in allowed.stderr and "already" in allowed.stderr
