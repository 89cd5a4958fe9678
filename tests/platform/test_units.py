"""Checks of the shipped systemd units, sysusers entry, D-Bus policy and polkit action.

Uses the real tools (systemd-analyze, systemd-sysusers) on copies in temporary directories;
it never installs anything on the machine and needs no root. Running the units under a real
systemd is test_nspawn.py; the bus policy and polkit files in use are test_polkit.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
UNITS = ("portal.socket", "portal.service")

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (apt: systemd)"
)


def unit_copy(tmp_path: Path, *, extra: str = "") -> Path:
    """Copy the units to tmp_path with ExecStart pointing at a real executable.

    `systemd-analyze verify` reports a missing /usr/bin/portal; the installer rewrites that path
    the same way.
    """
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        if name == "portal.service":
            text = text.replace("ExecStart=/usr/bin/portal ", "ExecStart=/bin/true ", 1)
            text = text.replace("[Service]\n", f"[Service]\n{extra}", 1)
        (tmp_path / name).write_text(text)
    return tmp_path


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sections(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Unit file → {section: [(key, value), ...]} in file order (repeated keys kept)."""
    result: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            result.setdefault(current, [])
            continue
        key, _, value = line.partition("=")
        result[current].append((key, value))
    return result


def values(path: Path, section: str, key: str) -> list[str]:
    return [v for k, v in sections(path)[section] if k == key]


def seconds(span: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|min)?", span)
    assert match, span
    return int(match[1]) * {"ms": 0.001, "s": 1, "min": 60, None: 1}[match[2]]


@needs_analyze
def test_verify_is_silent(tmp_path: Path) -> None:
    # verify exits 0 on a misspelt key or an unparsable value, so any stderr is a failure.
    unit_copy(tmp_path)
    result = analyze("verify", *(f"./{u}" for u in UNITS), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_analyze
def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    # The check above can fail: a misspelt key shows up on stderr (with rc 0).
    unit_copy(tmp_path, extra="ProtectSytem=strict\n")
    result = analyze("verify", "./portal.service", cwd=tmp_path)
    assert "ProtectSytem" in result.stderr


@needs_analyze
def test_security_exposure_is_low(tmp_path: Path) -> None:
    unit_copy(tmp_path)
    result = analyze(
        "security", "--offline=yes", "--threshold=15", "./portal.service", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for portal\.service: (\d+\.\d)", result.stdout)
    assert match, result.stdout
    assert float(match[1]) <= 1.5


@needs_analyze
def test_security_gate_fails_an_unhardened_unit(tmp_path: Path) -> None:
    (tmp_path / "bare.service").write_text("[Service]\nExecStart=/bin/true\n")
    result = analyze("security", "--offline=yes", "--threshold=15", "./bare.service", cwd=tmp_path)
    assert result.returncode != 0


def test_socket_listens_on_the_stub_address() -> None:
    sock = SYSTEMD / "portal.socket"
    assert values(sock, "Socket", "ListenDatagram") == ["127.0.0.153:53"]
    assert values(sock, "Socket", "ListenStream") == ["127.0.0.153:53"]
    assert values(sock, "Socket", "FreeBind") == ["yes"]
    assert "nss-lookup.target" in values(sock, "Unit", "Before")
    assert values(sock, "Install", "WantedBy") == ["sockets.target"]


def test_service_contract() -> None:
    svc = SYSTEMD / "portal.service"
    assert values(svc, "Service", "ExecStart") == ["/usr/bin/portal daemon"]
    assert values(svc, "Service", "Type") == ["notify"]
    assert values(svc, "Service", "NotifyAccess") == ["main"]
    assert values(svc, "Service", "User") == ["portal"]
    assert values(svc, "Service", "StateDirectory") == ["portal"]
    assert values(svc, "Service", "ConfigurationDirectory") == ["portal"]
    assert values(svc, "Service", "CapabilityBoundingSet") == [""]
    assert values(svc, "Service", "AmbientCapabilities") == [""]
    assert values(svc, "Service", "Restart") == ["on-failure"]
    assert seconds(values(svc, "Service", "WatchdogSec")[0]) == 10
    # From boot: detection must not wait for a DNS query.
    assert values(svc, "Install", "WantedBy") == ["multi-user.target"]
    assert values(svc, "Install", "Also") == ["portal.socket"]


def test_start_limit_is_reachable() -> None:
    # A crash loop must hit the limit, or portal.socket keeps :53 bound with nobody reading it.
    svc = SYSTEMD / "portal.service"
    interval = seconds(values(svc, "Unit", "StartLimitIntervalSec")[0])
    burst = int(values(svc, "Unit", "StartLimitBurst")[0])
    restart = seconds(values(svc, "Service", "RestartSec")[0])
    assert burst >= 2
    # Starting takes time too; leave twice the restart delays as margin.
    assert 2 * burst * restart < interval


def settings_without_a_comment(path: Path) -> list[str]:
    """Settings whose group has no comment above it (a blank line or a section header starts a
    group); `Description=` says what it is by itself."""
    missing = []
    previous = ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        is_setting = bool(stripped) and stripped[0] not in "#;[" and "=" in stripped
        if is_setting and stripped.startswith("Description="):
            previous = "comment"
            continue
        if is_setting and previous in ("", "section"):
            missing.append(f"{path.name}:{number}: {stripped!r} has no comment above it")
        if not stripped:
            previous = ""
        elif stripped.startswith("["):
            previous = "section"
        else:
            previous = "comment" if stripped.startswith("#") else "setting"
    return missing


COMMENTED_UNITS = (
    "portal.service",
    "portal-link.service",
    "portal.service.d/link.conf",
    "portal-wire.path",
    "portal-wire.service",
)


@pytest.mark.parametrize("name", COMMENTED_UNITS)
def test_every_setting_says_why(name: str) -> None:
    assert settings_without_a_comment(SYSTEMD / name) == []


def test_a_setting_without_a_comment_is_found(tmp_path: Path) -> None:
    unit = tmp_path / "x.service"
    unit.write_text("[Unit]\nDescription=x\n\n[Service]\n# why\nType=simple\n\nUser=nobody\n")
    found = settings_without_a_comment(unit)
    assert found == ["x.service:8: 'User=nobody' has no comment above it"]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers_creates_the_portal_user(tmp_path: Path) -> None:
    # systemd-sysusers --root writes only below tmp_path; it needs no root privileges there.
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD / "sysusers-portal.conf")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc/passwd").read_text().splitlines()
    entry = next(line.split(":") for line in passwd if line.startswith("portal:"))
    assert entry[5] == "/var/lib/portal"
    assert entry[6].endswith("nologin")
    assert int(entry[2]) < 1000  # a system user
    assert any(line.startswith("portal:") for line in (tmp_path / "etc/group").read_text().split())


def test_bus_policy_lets_no_ordinary_user_but_portal_own_the_name() -> None:
    tree = ET.parse(ROOT / "dbus/org.portalhelper.Portal1.conf")
    owners = []
    senders = []
    for policy in tree.getroot().iter("policy"):
        who = policy.get("user") or policy.get("context") or policy.get("group") or "?"
        for allow in policy.iter("allow"):
            if allow.get("own") or allow.get("own_prefix"):
                owners.append(who)
            if allow.get("send_destination") == "org.portalhelper.Portal1":
                senders.append(who)
        assert all(deny.tag != "deny" for deny in policy)  # nothing to deny in an open API
    # root may own it too (a daemon started by hand); root can change the policy anyway.
    assert "portal" in owners and set(owners) <= {"portal", "root"}
    assert "default" in senders


def test_polkit_actions_have_defaults_and_owner() -> None:
    tree = ET.parse(ROOT / "polkit/org.portalhelper.portal.policy")
    actions = {a.get("id"): a for a in tree.getroot().iter("action")}
    assert set(actions) == {
        "org.portalhelper.portal.manage-overrides",
        "org.portalhelper.portal.check",
        "org.portalhelper.portal.network-choices",
    }
    for action in actions.values():
        defaults = action.find("defaults")
        assert defaults is not None
        assert [d.text for d in defaults] == ["auth_admin_keep"] * 3
        annotations = {a.get("key"): a.text for a in action.iter("annotate")}
        assert annotations["org.freedesktop.policykit.owner"] == "unix-user:portal"


def test_polkit_rule_names_both_groups_and_actions() -> None:
    rule = (ROOT / "polkit/50-portal.rules").read_text()
    for word in (
        '"netdev"',
        '"networkmanager"',
        '"org.portalhelper.portal.manage-overrides"',
        '"org.portalhelper.portal.check"',
        '"org.portalhelper.portal.network-choices"',
    ):
        assert word in rule


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_scripts_pass_shellcheck() -> None:
    names = ("install", "uninstall", "install-test-deps", "test", "test-venv", "check")
    scripts = [str(ROOT / "scripts" / name) for name in names]
    scripts += [str(ROOT / ".ci" / "run")]
    result = subprocess.run(
        ["shellcheck", *scripts], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout
    # The bash completion is sourced, not run: tell shellcheck which shell reads it.
    result = subprocess.run(
        ["shellcheck", "--shell=bash", str(ROOT / "completions" / "portal.bash")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout


def test_dbus_activation_names_the_service_unit() -> None:
    # A call to the bus name starts portal.service through systemd; the real thing runs in
    # test_nspawn.py and test_fresh_debian.py.
    path = ROOT / "dbus/org.portalhelper.Portal1.service"
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "[D-BUS Service]"
    keys = dict(line.split("=", 1) for line in lines[1:])
    assert keys == {
        "Name": "org.portalhelper.Portal1",
        "Exec": "/bin/false",
        "User": "portal",
        "SystemdService": "portal.service",
    }
    policy = (ROOT / "dbus/org.portalhelper.Portal1.conf").read_text()
    assert f'own="{keys["Name"]}"' in policy
    assert (SYSTEMD / keys["SystemdService"]).exists()
