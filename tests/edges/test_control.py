"""The control API and the CLI as a user types it, against the real daemon on a private bus."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query
import pytest

from tests.support.daemon import Daemon, run_cli
from tests.support.dbus import PrivateBus
from tests.support.dns import dig
from tests.support.procs import wait_for
from tests.support.system import Users

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="creates users and mounts: needs root")


def answers(d: Daemon, name: str) -> list[str]:
    return dig("+short", name, port=d.port).split()


def test_add_list_remove_roundtrip(daemon: Daemon) -> None:
    out = daemon.cli("add", "Login.Hotel.Example.", "10.0.0.1", "fd00::1", "--ttl", "30m")
    assert out.returncode == 0, out.stderr
    assert "login.hotel.example -> 10.0.0.1, fd00::1" in out.stdout and "expires in" in out.stdout
    listing = daemon.cli("list")
    assert listing.returncode == 0
    assert "login.hotel.example" in listing.stdout and "10.0.0.1,fd00::1" in listing.stdout
    items = json.loads(daemon.cli("list", "--json").stdout)
    assert [i["name"] for i in items] == ["login.hotel.example"]
    item = items[0]
    assert item["addresses"] == ["10.0.0.1", "fd00::1"] and item["scope"] is None
    assert item["active"] is True and item["source"] == "user"
    assert 29 * 60 < item["expires_at"] - time.time() <= 30 * 60
    assert item["created_by"].startswith("uid ")
    assert answers(daemon, "login.hotel.example") == ["10.0.0.1"]
    out = daemon.cli("remove", "login.hotel.example")
    assert out.returncode == 0 and "removed" in out.stdout
    assert json.loads(daemon.cli("list", "--json").stdout) == []
    assert daemon.cli("list").stdout.strip() == "no overrides"
    assert answers(daemon, "login.hotel.example") != ["10.0.0.1"]


def test_until_removed_and_default_ttl(daemon: Daemon) -> None:
    assert daemon.cli("add", "forever.example", "10.0.0.2", "--until-removed").returncode == 0
    assert daemon.cli("add", "default.example", "10.0.0.3").returncode == 0
    items = {i["name"]: i for i in json.loads(daemon.cli("list", "--json").stdout)}
    assert items["forever.example"]["expires_at"] is None
    assert 11.9 * 3600 < items["default.example"]["expires_at"] - time.time() <= 12 * 3600
    assert "until removed" in daemon.cli("add", "x.example", "10.0.0.4", "--ttl", "never").stdout


def test_status_json(daemon: Daemon) -> None:
    daemon.cli("add", "a.example", "10.0.0.1")
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert status["listen"] == [f"{daemon.host}:{daemon.port}"]
    assert status["state"] == "unknown" and status["network"] == ""
    assert status["auth"] == "credentials"
    assert [o["name"] for o in status["overrides"]] == ["a.example"]
    human = daemon.cli("status").stdout
    assert "state:      unknown" in human and "a.example" in human


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "bad..example", "10.0.0.1"], "invalid domain 'bad..example': empty label"),
        (["add", "ok.example", "10.0.0.256"], "invalid address '10.0.0.256'"),
        (["add", "ok.example", "10.0.0.1", "--ttl", "soon"], "invalid ttl 'soon'"),
        (["add", "10.0.0.1", "10.0.0.1"], "looks like an address"),
        (["remove", "x-.example"], "invalid domain"),
    ],
)
def test_bad_input_exits_2_and_changes_nothing(
    daemon: Daemon, args: list[str], message: str
) -> None:
    daemon.cli("add", "keep.example", "10.0.0.9")
    before = daemon.cli("list", "--json").stdout
    out = daemon.cli(*args)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("portal: error: ") and message in line
    assert daemon.cli("list", "--json").stdout == before


def test_remove_unknown_is_a_runtime_error(daemon: Daemon) -> None:
    out = daemon.cli("remove", "never-added.example")
    assert (
        out.returncode == 1 and out.stderr == "portal: error: no override for never-added.example\n"
    )


def test_usage_errors_exit_2(daemon: Daemon) -> None:
    assert daemon.cli("add").returncode == 2
    assert daemon.cli("frobnicate").returncode == 2


def test_daemon_not_running_is_explained(bus: PrivateBus) -> None:
    out = run_cli("list", bus=bus.address)
    assert out.returncode == 1
    assert "portal daemon is not running on the bus at " + bus.address in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_missing_bus_is_explained(tmp_path: Path) -> None:
    out = run_cli("list", bus=f"unix:path={tmp_path}/nothing")
    assert out.returncode == 1 and "cannot connect to the bus at" in out.stderr
    out = run_cli(
        "add",
        "a.example",
        "10.0.0.1",
        env={"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/none"},
        bus="system",
    )
    assert out.returncode == 1 and "cannot connect to the system bus" in out.stderr


def test_import_is_all_or_nothing(daemon: Daemon, tmp_path: Path) -> None:
    good = (
        "# from the front desk\n10.0.0.1 login.hotel.example portal.hotel.example\n"
        "10.0.0.2 api.hotel.example\n"
    )
    out = daemon.cli("import", "-", input=good)
    assert out.returncode == 0 and "imported 3" in out.stdout
    bad = tmp_path / "hosts"
    bad.write_text("10.0.0.5 new.example\n10.0.0.6 bad..example\n")
    out = daemon.cli("import", str(bad))
    assert out.returncode == 2 and "line 2" in out.stderr
    names = [i["name"] for i in json.loads(daemon.cli("list", "--json").stdout)]
    assert names == ["api.hotel.example", "login.hotel.example", "portal.hotel.example"]
    assert answers(daemon, "portal.hotel.example") == ["10.0.0.1"]


def test_watch_follows_signals(daemon: Daemon) -> None:
    env = dict(os.environ, PORTAL_BUS=daemon.bus, PYTHONPATH=str(Path(__file__).parents[2]))
    watcher = subprocess.Popen(
        ["python3", "-m", "portal", "status", "--watch", "--json"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert watcher.stdout is not None
        first = json.loads(watcher.stdout.readline())
        assert first["overrides"] == []
        time.sleep(0.3)  # let the watcher subscribe before the change
        daemon.cli("add", "watched.example", "10.0.0.1")
        second = json.loads(watcher.stdout.readline())
        assert [o["name"] for o in second["overrides"]] == ["watched.example"]
    finally:
        watcher.terminate()
        watcher.wait(5)
        if watcher.stdout:
            watcher.stdout.close()


def test_dbus_arguments_are_validated(daemon: Daemon) -> None:
    import asyncio

    from portal.edges.client import Client

    async def calls() -> list[str]:
        c = await Client.open(daemon.bus)
        errors = []
        for member, sig, body in [
            ("AddOverride", "sastb", ["a" * 5000, ["10.0.0.1"], 0, False]),
            ("AddOverride", "sastb", ["ok.example", ["10.0.0.1"] * 100, 0, False]),
            ("AddOverride", "sastb", ["ok.example", ["10.0.0.1"], 10**12, False]),
            ("AddOverride", "sastb", ["ok.example", ["not-an-ip"], 0, False]),
            ("AddOverride", "s", ["ok.example"]),
            ("RemoveOverride", "s", ["absent.example"]),
            ("ImportOverrides", "a(sas)tb", [[["x.example", ["10.0.0.1"]]] * 2000, 0, False]),
        ]:
            try:
                await c.call(member, sig, body)
                errors.append("no error")
            except Exception as exc:  # the client maps D-Bus errors to PortalError
                errors.append(type(exc).__name__)
        await c.aclose()
        return errors

    assert asyncio.run(calls()) == [
        "InvalidDomain",
        "InvalidAddress",
        "InvalidTTL",
        "InvalidAddress",
        "PortalError",
        "NoSuchOverride",
        "TooManyOverrides",
    ]
    assert json.loads(daemon.cli("list", "--json").stdout) == []


def test_override_survives_sigkill(
    bus: PrivateBus, make_daemon: Callable[..., Daemon], upstream: object
) -> None:
    d = make_daemon(bus.address)
    assert d.cli("add", "persist.example", "10.0.0.1", "fd00::5").returncode == 0
    d.kill()
    d.start()
    assert answers(d, "persist.example") == ["10.0.0.1"]
    assert json.loads(d.cli("list", "--json").stdout)[0]["addresses"] == ["10.0.0.1", "fd00::5"]


def test_corrupt_state_is_moved_aside(
    bus: PrivateBus, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    state = tmp_path / "corrupt-state"
    state.mkdir()
    (state / "overrides.json").write_text('{"version": 1, "overrides": [{"name": ')
    d = make_daemon(bus.address, state_dir=state)
    aside = list(state.glob("overrides.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text().startswith('{"version": 1')
    assert "is corrupt" in d.log() and str(aside[0]) in d.log()
    assert d.cli("add", "fresh.example", "10.0.0.1").returncode == 0
    assert answers(d, "fresh.example") == ["10.0.0.1"]


def test_expired_overrides_are_purged_by_a_timer(daemon: Daemon) -> None:
    assert daemon.cli("add", "brief.example", "10.0.0.1", "--ttl", "1s").returncode == 0
    assert answers(daemon, "brief.example") == ["10.0.0.1"]
    assert wait_for(lambda: json.loads(daemon.cli("list", "--json").stdout) == [], 10, 0.3)
    assert "override brief.example expired" in daemon.log()
    saved = json.loads((daemon.state_dir / "overrides.json").read_text())
    assert saved["overrides"] == []


@root_only
def test_read_only_state_dir_fails_clearly_and_keeps_answers(
    bus: PrivateBus, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    state = tmp_path / "ro-state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)], check=True)
    try:
        d = make_daemon(bus.address, state_dir=state)
        assert d.cli("add", "kept.example", "10.0.0.1").returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        out = d.cli("add", "new.example", "10.0.0.2")
        assert out.returncode == 1
        assert out.stderr.startswith("portal: error: cannot save overrides to ")
        assert "Read-only file system" in out.stderr
        assert answers(d, "kept.example") == ["10.0.0.1"]
        assert [i["name"] for i in json.loads(d.cli("list", "--json").stdout)] == ["kept.example"]
        assert answers(d, "new.example") != ["10.0.0.2"]
        d.stop()
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


@root_only
def test_unprivileged_user_can_list_but_not_change(
    bus: PrivateBus, make_daemon: Callable[..., Daemon], users: Users, tmp_path: Path
) -> None:
    group = users.group()
    conf = tmp_path / "admin.toml"
    conf.write_text(f'admin_group = "{group}"\n')
    d = make_daemon(bus.address, extra_args=["--config", str(conf)])
    assert d.cli("add", "root-made.example", "10.0.0.1").returncode == 0
    stranger = users.user()
    member = users.user(group)
    listing = d.cli("list", "--json", user=stranger)
    assert listing.returncode == 0, listing.stderr
    assert [i["name"] for i in json.loads(listing.stdout)] == ["root-made.example"]
    out = d.cli("add", "evil.example", "6.6.6.6", user=stranger)
    assert out.returncode == 1 and "not authorised" in out.stderr, out
    out = d.cli("remove", "root-made.example", user=stranger)
    assert out.returncode == 1 and "not authorised" in out.stderr
    out = d.cli("add", "member.example", "10.0.0.7", user=member)
    assert out.returncode == 0, out.stderr
    names = [i["name"] for i in json.loads(d.cli("list", "--json").stdout)]
    assert names == ["member.example", "root-made.example"]
    assert "refused org.portalhelper.portal.manage-overrides" in d.log()


def test_tcp_and_udp_same_answers_with_dnspython(daemon: Daemon) -> None:
    daemon.cli("add", "both.example", "10.0.0.1")
    q = dns.message.make_query("both.example", "A")
    u = dns.query.udp(q, daemon.host, port=daemon.port, timeout=5)
    t = dns.query.tcp(q, daemon.host, port=daemon.port, timeout=5)
    assert u.answer == t.answer and u.answer
