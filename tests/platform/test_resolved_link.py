"""The systemd-resolved wiring shipped for systems other than NixOS, checked by the real programs.

- systemd/portal-link.service and the drop-in systemd/portal.service.d/link.conf:
  `systemd-analyze verify` (any stderr fails), and the unit's own ExecStart=/ExecStop= command
  lines run in a throw-away network namespace: the link portal0 appears with the address
  resolved needs, a second start is harmless, and stopping removes it.
- polkit/51-portal-resolved.rules: a private polkitd with systemd-resolved's own action file
  answers pkcheck: user portal may use exactly the six resolve1 actions the daemon calls,
  another user may not. Then the whole chain: portal's ResolverWiring, as user portal, sets
  and reverts the link through a real systemd-resolved (unpacked from Debian's package, as in
  tests/edges/test_resolver.py), which asks that polkitd; an outsider is refused.
- networkmanager/90-portal.conf: NetworkManager's own parser (`--print-config`) merges it into
  a configuration that already lists unmanaged devices.
- scripts/install and scripts/uninstall under a real systemd (a booted systemd-nspawn container,
  as in test_nspawn.py): the files are put in place and enabled, the link unit is skipped
  without resolved and makes portal0 (in the container's own network) once resolved's runtime
  directory exists, and uninstalling removes the link and every file.

It must not touch the host's links, units, buses or polkit: links live in a namespace it makes,
polkitd runs in a private mount namespace, every process is stopped by PID, and the users it
creates are removed afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.platform.test_nspawn import (
    Container,
    exists,
    install,
    install_binds,
    launch,
    uninstall,
)
from tests.platform.test_polkit import POLKITD, Stack, add_user, bus_config, holder_script
from tests.platform.test_units import analyze, needs_analyze, unit_copy, values
from tests.support.procs import stop_pid, wait_until

ROOT = Path(__file__).resolve().parents[2]
LINK_UNIT = ROOT / "systemd/portal-link.service"
DROPIN = ROOT / "systemd/portal.service.d/link.conf"
RULE = ROOT / "polkit/51-portal-resolved.rules"
NM_CONF = ROOT / "networkmanager/90-portal.conf"
LINK = "portal0"
LINK_ADDRESS = "169.254.53.53"
RESOLVE1_POLICY = "usr/share/polkit-1/actions/org.freedesktop.resolve1.policy"
# What portal/edges/resolver.py calls: SetLinkDNS/SetLinkDNSEx, SetLinkDomains,
# SetLinkDefaultRoute, SetLinkDNSOverTLS, SetLinkDNSSEC and RevertLink, checked by resolved
# against these actions.
DAEMON_ACTIONS = (
    "org.freedesktop.resolve1.set-dns-servers",
    "org.freedesktop.resolve1.set-domains",
    "org.freedesktop.resolve1.set-default-route",
    "org.freedesktop.resolve1.set-dns-over-tls",
    "org.freedesktop.resolve1.set-dnssec",
    "org.freedesktop.resolve1.revert",
)

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (network namespaces, users, mount namespaces)"
)
needs_ip = pytest.mark.skipif(shutil.which("ip") is None, reason="needs ip (apt: iproute2)")


# --- the units -------------------------------------------------------------------------------


@needs_analyze
def test_link_unit_verifies_silently(tmp_path: Path) -> None:
    # verify exits 0 on a misspelt key or an unparsable value, so any stderr is a failure.
    shutil.copy(LINK_UNIT, tmp_path)
    result = analyze("verify", "./portal-link.service", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_analyze
def test_service_with_the_dropin_verifies_silently(tmp_path: Path) -> None:
    # portal.service is loaded with its drop-in directory next to it, and the link unit the
    # drop-in names is there too.
    unit_copy(tmp_path)
    shutil.copy(LINK_UNIT, tmp_path)
    (tmp_path / "portal.service.d").mkdir()
    shutil.copy(DROPIN, tmp_path / "portal.service.d")
    result = analyze("verify", "./portal.service", "./portal-link.service", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_analyze
def test_verify_reads_the_dropin(tmp_path: Path) -> None:
    # The check above can fail: verify loads the drop-in, and a typo in it shows on stderr.
    unit_copy(tmp_path)
    shutil.copy(LINK_UNIT, tmp_path)
    (tmp_path / "portal.service.d").mkdir()
    text = DROPIN.read_text().replace("[Unit]\n", "[Unit]\nWnats=portal-link.service\n", 1)
    (tmp_path / "portal.service.d/link.conf").write_text(text)
    result = analyze("verify", "./portal.service", cwd=tmp_path)
    assert "Wnats" in result.stderr


@needs_analyze
def test_verify_catches_a_typo_in_the_link_unit(tmp_path: Path) -> None:
    text = LINK_UNIT.read_text().replace("[Service]\n", "[Service]\nRemainAfterExti=yes\n", 1)
    (tmp_path / "portal-link.service").write_text(text)
    result = analyze("verify", "./portal-link.service", cwd=tmp_path)
    assert "RemainAfterExti" in result.stderr


def test_link_unit_contract() -> None:
    assert values(LINK_UNIT, "Unit", "ConditionPathExists") == ["/run/systemd/resolve"]
    assert "portal.service" in values(LINK_UNIT, "Unit", "Before")
    assert "systemd-resolved.service" in values(LINK_UNIT, "Unit", "After")
    assert values(LINK_UNIT, "Service", "Type") == ["oneshot"]
    assert values(LINK_UNIT, "Service", "RemainAfterExit") == ["yes"]
    assert values(LINK_UNIT, "Service", "CapabilityBoundingSet") == ["CAP_NET_ADMIN"]
    assert values(LINK_UNIT, "Install", "WantedBy") == ["multi-user.target"]
    # The same link and address the NixOS module makes and the daemon looks for.
    text = LINK_UNIT.read_text()
    module = (ROOT / "nixos-module/default.nix").read_text()
    assert f'link = "{LINK}";' in module and f'linkAddress = "{LINK_ADDRESS}/32";' in module
    assert f"ip address replace {LINK_ADDRESS}/32 dev {LINK}" in text
    assert f'DEFAULT_LINK = "{LINK}"' in (ROOT / "portal/core/wiring.py").read_text()


def test_dropin_wants_the_link_and_leaves_the_service_alone() -> None:
    assert values(DROPIN, "Unit", "Wants") == ["portal-link.service"]
    assert values(DROPIN, "Unit", "After") == ["portal-link.service"]
    # Requires= would keep the daemon (DNS, detection) down whenever the link cannot be made.
    assert values(DROPIN, "Unit", "Requires") == []
    assert values(DROPIN, "Service", "ExecStopPost") == [f"-+resolvectl revert {LINK}"]
    assert "portal-link" not in (ROOT / "systemd/portal.service").read_text()


# --- the unit's commands in a network namespace ----------------------------------------------


@dataclass(frozen=True)
class Command:
    argv: list[str]
    may_fail: bool  # systemd's "-" prefix: a failure is recorded and ignored


def unit_commands(key: str) -> list[Command]:
    commands = []
    for line in values(LINK_UNIT, "Service", key):
        prefix = re.match(r"[-+!@:]*", line)
        assert prefix is not None
        # Only "-" is expected; another prefix would change how the line runs under systemd.
        assert set(prefix[0]) <= {"-"}, line
        argv = shlex.split(line[prefix.end() :])
        assert argv[0] == "ip", line  # found on systemd's fixed search path (/usr/sbin, /sbin...)
        commands.append(Command(argv, may_fail=bool(prefix[0])))
    return commands


@functools.cache
def dummy_refusal() -> str:
    """Empty when this kernel makes dummy links; else what `ip` said (the module is missing)."""
    ns = f"portal-probe-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        made = subprocess.run(
            ["ip", "-n", ns, "link", "add", "probe0", "type", "dummy"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return "" if made.returncode == 0 else (made.stderr.strip() or f"rc={made.returncode}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)


def stand_in(argv: list[str]) -> list[str]:
    """`ip link add portal0 type dummy` with a veth pair instead (the peer goes with it)."""
    if argv[-2:] == ["type", "dummy"]:
        return [*argv[:-1], "veth", "peer", "name", f"{LINK}p"]
    return argv


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"portal-link-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


def run_in(
    ns: str, commands: list[Command], *, veth: bool
) -> list[subprocess.CompletedProcess[str]]:
    """Run the unit's command lines as systemd would: stop at the first failure not allowed."""
    results = []
    for command in commands:
        argv = stand_in(command.argv) if veth else command.argv
        result = subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        results.append(result)
        if result.returncode != 0 and not command.may_fail:
            pytest.fail(f"{shlex.join(argv)}: rc={result.returncode} {result.stderr}")
    return results


def link_state(ns: str) -> dict[str, Any] | None:
    """`ip -j address show dev portal0` in the namespace, or None when there is no such link."""
    shown = subprocess.run(
        ["ip", "-n", ns, "-j", "address", "show", "dev", LINK],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if shown.returncode != 0:
        return None
    links: list[dict[str, Any]] = json.loads(shown.stdout)
    return links[0]


def link_kind(ns: str) -> str:
    """The kind of link portal0 is (`ip -d`: "dummy", "veth"...), "" when there is none."""
    shown = subprocess.run(
        ["ip", "-n", ns, "-d", "-j", "link", "show", "dev", LINK],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if shown.returncode != 0:
        return ""
    kind: str = json.loads(shown.stdout)[0].get("linkinfo", {}).get("info_kind", "")
    return kind


@needs_root
@needs_ip
def test_the_unit_makes_a_dummy_link(netns: str) -> None:
    # The unit needs the kernel's dummy driver; test_start_and_stop_make_and_remove_the_link
    # falls back to a veth without it, so this is the test that holds the unit to a dummy link
    # (no peer, no carrier to lose, nothing for NetworkManager to manage).
    refusal = dummy_refusal()
    if refusal:
        pytest.skip(
            f"this kernel cannot create dummy links (ip: {refusal!r}); "
            "test_start_and_stop_make_and_remove_the_link ran with a veth stand-in"
        )
    run_in(netns, unit_commands("ExecStart"), veth=False)
    assert link_kind(netns) == "dummy"


@needs_root
@needs_ip
def test_start_and_stop_make_and_remove_the_link(netns: str) -> None:
    veth = bool(dummy_refusal())
    if veth:
        # Said in the output (pytest -rA or -s): only `type dummy` differs from the unit.
        print(f"kernel lacks dummy links ({dummy_refusal()}): ran `type dummy` as a veth pair")
    start, stop = unit_commands("ExecStart"), unit_commands("ExecStop")
    assert start and stop
    assert link_state(netns) is None

    run_in(netns, start, veth=veth)
    state = link_state(netns)
    assert state is not None, "ExecStart made no link"
    assert "UP" in state["flags"]
    if not veth:
        assert state["link_type"] == "ether" and "LOWER_UP" in state["flags"]
    addresses = [(a["family"], a["local"], a["prefixlen"], a["scope"]) for a in state["addr_info"]]
    # Global scope: resolved counts a link only with an address of scope below "link".
    assert addresses == [("inet", LINK_ADDRESS, 32, "global")], addresses

    # A second start (a restart, the link left from before) changes nothing and fails nothing.
    again = run_in(netns, start, veth=veth)
    assert again[0].returncode != 0  # "File exists", ignored by the "-" prefix
    assert link_state(netns) == state  # the same link (same index), the same one address

    run_in(netns, stop, veth=veth)
    assert link_state(netns) is None, "ExecStop left the link"
    # Stopping again (someone already deleted the link) is not a failure either.
    gone = run_in(netns, stop, veth=veth)
    assert gone[0].returncode != 0 and stop[0].may_fail


# --- the polkit rule, under a real polkitd ---------------------------------------------------


def resolve1_policy() -> tuple[Path | None, str]:
    """systemd-resolved's polkit actions: installed, else from its package unpacked for tests."""
    installed = Path("/") / RESOLVE1_POLICY
    if installed.exists():
        return installed, ""
    from tests.edges.test_resolver import _resolved_binary

    binary, why = _resolved_binary()
    if binary is None:
        return None, why
    unpacked = binary.parents[2] / RESOLVE1_POLICY  # <root>/lib/systemd/systemd-resolved
    if not unpacked.exists():
        return None, f"{unpacked} missing from the unpacked systemd-resolved package"
    return unpacked, ""


def resolve1_actions(policy: Path) -> list[str]:
    return [a.get("id", "") for a in ET.parse(policy).getroot().iter("action")]


def skip_without_polkit() -> Path:
    """What a private polkitd needs; returns resolved's action file."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create users and mount namespaces")
    for tool in ("dbus-daemon", "pkcheck", "setpriv", "useradd", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (scripts/install-test-deps installs it)")
    if not POLKITD.exists():
        pytest.skip("polkitd not installed (apt: polkitd)")
    policy, why = resolve1_policy()
    if policy is None:
        pytest.skip(f"no systemd-resolved polkit actions: {why}")
    return policy


@contextlib.contextmanager
def users() -> Iterator[str]:
    """User portal (made as an installation makes it, if missing) and an outsider's name."""
    outsider = f"ptest-{secrets.token_hex(3)}-r"
    made: list[str] = []
    try:
        try:
            pwd.getpwnam("portal")
        except KeyError:
            subprocess.run(
                ["systemd-sysusers", str(ROOT / "systemd/sysusers-portal.conf")],
                check=True, timeout=30, capture_output=True,
            )  # fmt: skip
            made.append("portal")
        add_user(outsider)
        made.append(outsider)
        yield outsider
    finally:
        for user in made:
            subprocess.run(["userdel", user], check=False, capture_output=True, timeout=30)


@contextlib.contextmanager
def private_polkit(
    policy: Path,
    outsider: str,
    *,
    bus: str = "",
    shared: list[Path] | None = None,
    resolved_user: str = "",
) -> Iterator[Stack]:
    """polkitd with resolved's actions and the shipped rule, in a private mount namespace.

    On `bus` when given; else on a private bus with Debian's system-bus policy. `shared` are
    directories user portal must reach there (test_polkit.holder_script opens them).
    `resolved_user`: the user systemd-resolved runs as, when not systemd-resolve.
    """
    tmp = Path(tempfile.mkdtemp(prefix="portal-resolved-polkit-"))
    tmp.chmod(0o755)
    procs: list[subprocess.Popen[str]] = []
    holder: subprocess.Popen[str] | None = None
    try:
        for sub, source in (("actions", policy), ("rules", RULE)):
            (tmp / sub).mkdir(mode=0o755)
            shutil.copy(source, tmp / sub)
        if resolved_user:
            # polkitd answers resolved's CheckAuthorization for another user's call only when
            # resolved runs as the actions' owner (systemd-resolve on a real system).
            copy = tmp / "actions" / policy.name
            text = copy.read_text()
            assert "unix-user:systemd-resolve" in text
            copy.write_text(text.replace("unix-user:systemd-resolve", f"unix-user:{resolved_user}"))
        with (tmp / "holder.log").open("w") as out:
            holder = subprocess.Popen(
                ["unshare", "--mount", "--propagation=private", "sh", "-c",
                 holder_script(tmp, shared or [])],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        wait_until(
            "the mount namespace", lambda: (tmp / "ready").exists() or holder.poll() is not None
        )
        assert holder.poll() is None, (tmp / "holder.log").read_text()

        address = bus or f"unix:path={tmp}/system_bus_socket"
        s = Stack(tmp, address, holder.pid, 0, "portal", outsider, "", procs)
        if not bus:
            conf = bus_config(tmp)
            s.start(None, "dbus-daemon", "--nofork", f"--config-file={conf}", log="bus.log")
            s.wait_started("the bus socket", lambda: (tmp / "system_bus_socket").exists())
        s.start(None, str(POLKITD), "--no-debug", log="polkitd.log")
        s.wait_started("polkitd on the bus", lambda: s.has_owner("org.freedesktop.PolicyKit1"))
        yield s
    finally:
        for proc in reversed(procs):
            stop_pid(proc, timeout_s=10)
        if holder is not None:
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
        if not os.environ.get("PORTAL_TEST_KEEP_LOGS"):
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def polkit() -> Iterator[Stack]:
    policy = skip_without_polkit()
    with users() as outsider, private_polkit(policy, outsider) as stack:
        yield stack


def pkcheck(stack: Stack, user: str, action: str) -> subprocess.CompletedProcess[str]:
    # pkcheck asks about its own shell's process, as that user.
    return stack.run(user, "sh", "-c", f'pkcheck --action-id {action} --process "$$"')


def test_polkitd_knows_the_resolve1_actions(polkit: Stack) -> None:
    # An unknown action would make every check below an error (rc 1), not an answer.
    for action in DAEMON_ACTIONS:
        shown = polkit.run(None, "pkaction", "--verbose", "--action-id", action)
        assert shown.returncode == 0, shown.stderr
        assert "implicit any:      auth_admin" in shown.stdout, shown.stdout


def test_portal_may_use_the_six_actions(polkit: Stack) -> None:
    for action in DAEMON_ACTIONS:
        allowed = pkcheck(polkit, "portal", action)
        assert allowed.returncode == 0, (action, allowed.stdout + allowed.stderr)


def test_portal_may_use_no_other_resolve1_action(polkit: Stack) -> None:
    policy, _ = resolve1_policy()
    assert policy is not None
    others = sorted(set(resolve1_actions(policy)) - set(DAEMON_ACTIONS))
    # LLMNR, mDNS, negative trust anchors, service registration...
    assert len(others) >= 5, others
    for action in others:
        refused = pkcheck(polkit, "portal", action)
        # 2: not authorised (an administrator's password would be needed); 1 is an error.
        assert refused.returncode == 2, (action, refused.stdout + refused.stderr)


def test_other_users_may_not_use_the_six_actions(polkit: Stack) -> None:
    for action in DAEMON_ACTIONS:
        refused = pkcheck(polkit, polkit.outsider, action)
        assert refused.returncode == 2, (action, refused.stdout + refused.stderr)


WIRING = """
import asyncio, json, sys
from portal.edges.resolver import ResolverWiring, WiringError

async def main(args):
    wiring = ResolverWiring(mode="resolved", bus=args["bus"], port=args["port"],
                            resolv_conf="/dev/null", nsswitch_conf="/dev/null")
    out = {}
    try:
        if args["op"] == "apply":
            await wiring.apply(args["names"])
        else:
            await wiring.revert()
    except WiringError as exc:
        out["error"] = str(exc)
    out["describe"] = await wiring.describe()
    if args["op"] != "apply":
        # close() hands the link back to resolved (as the daemon does when it stops); after
        # "apply" this process ends like a daemon killed outright: the link keeps its settings.
        await wiring.close()
    print(json.dumps(out))

asyncio.run(main(json.loads(sys.argv[1])))
"""


@needs_root
@needs_ip
def test_resolved_lets_the_daemon_and_nobody_else_set_the_link(netns: str) -> None:
    # The real chain: portal's ResolverWiring, run as user portal, calls a real
    # systemd-resolved, which asks the private polkitd, which runs the shipped rule. Without
    # the rule resolved would refuse portal exactly as it refuses the outsider.
    from tests.edges.test_resolver import (
        Processes,
        _resolved_binary,
        start_bus,
        start_resolved,
    )
    from tests.platform.test_nspawn import python_paths

    policy = skip_without_polkit()
    binary, why = _resolved_binary()
    if binary is None:
        pytest.skip(why)
    # The link as the unit makes it (a veth pair where the kernel has no dummy driver).
    run_in(netns, unit_commands("ExecStart"), veth=bool(dummy_refusal()))
    # resolved's stub listener needs 127.0.0.53.
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, timeout=30)
    work = Path(tempfile.mkdtemp(prefix="portal-resolved-e2e-"))
    work.chmod(0o755)  # resolved runs as nobody and must reach the bus socket here
    procs = Processes()
    try:
        bus = start_bus(procs, work)
        with (
            users() as outsider,
            private_polkit(
                policy,
                outsider,
                bus=bus,
                shared=python_paths(),
                # test_resolver.start_resolved runs it as uid 65534.
                resolved_user=pwd.getpwuid(65534).pw_name,
            ) as stack,
        ):
            _, resolved = start_resolved(netns, procs, work, bus, binary)
            deadline = time.monotonic() + 30
            while not stack.has_owner("org.freedesktop.resolve1"):
                if resolved.poll() is not None or time.monotonic() > deadline:
                    log = (work / "resolved.log").read_text(errors="replace")
                    pytest.fail(f"systemd-resolved did not take its bus name:\n{log[-3000:]}")
                time.sleep(0.05)

            def wiring(user: str, op: str, *, port: int = 53) -> dict[str, str]:
                args = {"op": op, "bus": bus, "port": port, "names": ["login.hotel.example"]}
                # In polkitd's mount namespace (where user portal reaches this Python) and in
                # the link's network namespace.
                done = subprocess.run(
                    ["nsenter", "-t", str(stack.holder), "-m", f"--net=/run/netns/{netns}",
                     "setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--",
                     sys.executable, "-c", WIRING, json.dumps(args)],
                    env=stack.env(), capture_output=True, text=True, timeout=60, check=False,
                )  # fmt: skip
                assert done.returncode == 0, done.stderr
                result: dict[str, str] = json.loads(done.stdout)
                return result

            refused = wiring(outsider, "apply")
            assert "SetLinkDefaultRoute failed" in refused.get("error", ""), refused
            assert re.search(r"InteractiveAuthorizationRequired|AccessDenied", refused["error"])
            assert refused["describe"].startswith("not wired: resolved link portal0 does not use")

            # SetLinkDefaultRoute, SetLinkDNS, SetLinkDomains; then SetLinkDNSEx (a stub on
            # another port); then RevertLink.
            assert wiring("portal", "apply") == {"describe": "resolved link portal0: 1 domain"}
            on_port = wiring("portal", "apply", port=5353)
            assert on_port == {"describe": "resolved link portal0: 1 domain"}
            reverted = wiring("portal", "revert")
            assert reverted == {
                "describe": "resolved link portal0: standby (no override on this network, "
                "no portal)"
            }
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


# --- NetworkManager --------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("NetworkManager") is None, reason="apt: network-manager")
@pytest.mark.parametrize(
    ("admin", "expected"),
    [
        ("", "interface-name:portal0"),
        # The administrator's own list stays; "=" instead of "+=" would replace it.
        (
            "[keyfile]\nunmanaged-devices=interface-name:eth9\n",
            "interface-name:eth9,interface-name:portal0",
        ),
    ],
    ids=["alone", "added-to-the-admins-list"],
)  # fmt: skip
def test_networkmanager_leaves_the_link_unmanaged(
    tmp_path: Path, admin: str, expected: str
) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "system.d").mkdir()
    (tmp_path / "NetworkManager.conf").write_text(admin)
    shutil.copy(NM_CONF, tmp_path / "conf.d")
    printed = subprocess.run(
        ["NetworkManager", "--print-config", f"--config={tmp_path}/NetworkManager.conf",
         f"--config-dir={tmp_path}/conf.d", f"--system-config-dir={tmp_path}/system.d"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert "90-portal.conf" in printed.stdout  # it read our file
    merged = sections_of(printed.stdout)
    assert merged.get(("keyfile", "unmanaged-devices")) == expected, printed.stdout


def sections_of(text: str) -> dict[tuple[str, str], str]:
    """NetworkManager's printed configuration → {(section, key): value}, comments skipped."""
    result: dict[tuple[str, str], str] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            result[(section, key.strip())] = value.strip()
    return result


# --- installed, under a real systemd ---------------------------------------------------------

INSTALLED = (
    "/etc/systemd/system/portal-link.service",
    "/etc/systemd/system/portal.service.d/link.conf",
    "/etc/polkit-1/rules.d/51-portal-resolved.rules",
    "/etc/NetworkManager/conf.d/90-portal.conf",
)


def veth_dropin() -> str:
    """portal-link.service with `type dummy` as a veth pair, for a kernel without dummy links."""
    starts = [
        ("-" if c.may_fail else "") + shlex.join(stand_in(c.argv))
        for c in unit_commands("ExecStart")
    ]
    return "[Service]\nExecStart=\n" + "".join(f"ExecStart={line}\n" for line in starts)


def container_link(c: Container) -> dict[str, Any] | None:
    shown = c.net("ip", "-j", "address", "show", "dev", LINK)
    if shown.returncode != 0:
        return None
    links: list[dict[str, Any]] = json.loads(shown.stdout)
    return links[0]


@needs_root
@needs_ip
@pytest.mark.skipif(shutil.which("systemd-nspawn") is None, reason="apt: systemd-container")
@pytest.mark.skipif(not Path("/usr/lib/systemd/systemd").exists(), reason="no systemd to boot")
def test_installer_sets_up_the_link_under_systemd() -> None:
    work = Path(tempfile.mkdtemp(prefix="portal-resolved-install-"))
    work.chmod(0o755)
    try:
        binds = install_binds(work, boot=True)
        if dummy_refusal():
            print(f"kernel lacks dummy links ({dummy_refusal()}): the unit makes a veth pair")
            (work / "veth.conf").write_text(veth_dropin())
            target = "/etc/systemd/system/portal-link.service.d/veth.conf"
            binds.append(f"--bind-ro={work / 'veth.conf'}:{target}")
        with launch(work, binds, boot=True) as c:
            # NetworkManager's configuration directory, as a system with it has.
            c.run("mkdir", "-p", "/etc/NetworkManager/conf.d")
            install(c)
            assert [path for path in INSTALLED if not exists(c, path)] == []
            enabled = c.run("systemctl", "is-enabled", "portal-link.service", check=False)
            assert enabled.stdout.strip() == "enabled"
            assert "portal-link.service" in c.show("portal.service", "Wants").split()
            assert "portal-link.service" in c.show("portal.service", "After").split()
            # No systemd-resolved here: the link unit is skipped, the daemon runs regardless.
            assert c.show("portal-link.service", "ConditionResult") == "no"
            assert c.show("portal.service", "ActiveState") == "active"
            assert container_link(c) is None

            # As where resolved runs: its runtime directory exists. Restarting the daemon
            # starts the link first (the drop-in), under the unit's sandbox.
            c.run("mkdir", "-p", "/run/systemd/resolve")
            c.run("systemctl", "restart", "portal.service")
            assert c.show("portal-link.service", "ActiveState") == "active"
            assert c.show("portal.service", "ActiveState") == "active"
            state = container_link(c)
            assert state is not None, c.run("journalctl", "-u", "portal-link", "--no-pager").stdout
            assert "UP" in state["flags"]
            assert [(a["local"], a["prefixlen"]) for a in state["addr_info"]] == [
                (LINK_ADDRESS, 32)
            ]

            # An upgrade keeps the link; the daemon's restart left portal-link alone.
            install(c)
            assert container_link(c) == state

            uninstall(c)
            assert container_link(c) is None
            assert [path for path in INSTALLED if exists(c, path)] == []
            assert c.run("systemctl", "cat", "portal-link.service", check=False).returncode != 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
