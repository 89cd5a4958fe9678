"""Who may change names, and what a change may be: the real daemon's control API.

- Without polkit on the bus the daemon falls back to the caller's credentials: anyone may read,
  only root or the configured group may add, remove, import or check (polkit-denied cases are in
  tests/platform/test_polkit.py).
- Every D-Bus argument is validated, and a refused call changes nothing: not the table, not
  the state file, not a DNS answer.
- Every change is logged with who made it.
- No override is ever answered after its expiry (watched through DNS, across a restart too).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portal.edges.client import Client
from tests.support.daemon import Daemon
from tests.support.dbus import PrivateBus
from tests.support.dns import Dnsmasq, dig
from tests.support.procs import wait_for
from tests.support.system import Users

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="creates users: needs root")
FOREVER = 2**64 - 1


def calls(bus: str, *requests: tuple[str, str, list[Any]]) -> list[str]:
    """Make raw control API calls; the error class name for each (or 'ok')."""

    async def run() -> list[str]:
        c = await Client.open(bus)
        out = []
        try:
            for member, sig, body in requests:
                try:
                    await c.call(member, sig, body)
                    out.append("ok")
                except Exception as exc:  # noqa: BLE001 - the client maps D-Bus errors
                    out.append(type(exc).__name__)
        finally:
            await c.aclose()
        return out

    return asyncio.run(run())


def call_one(bus: str, member: str, sig: str, body: list[Any]) -> tuple[str, list[Any]]:
    async def run() -> tuple[str, list[Any]]:
        c = await Client.open(bus)
        try:
            return "ok", await c.call(member, sig, body)
        except Exception as exc:  # noqa: BLE001 - the client maps D-Bus errors
            return type(exc).__name__, []
        finally:
            await c.aclose()

    return asyncio.run(run())


def state_file(d: Daemon) -> tuple[bytes, int]:
    path = d.state_dir / "overrides.json"
    if not path.exists():
        return b"", 0
    return path.read_bytes(), path.stat().st_mtime_ns


def snapshot(d: Daemon) -> tuple[str, bytes, int]:
    """What the daemon says it holds, and the state file's bytes and mtime."""
    return (d.cli("list", "--json").stdout, *state_file(d))


@root_only
def test_credentials_fallback_read_open_changes_closed(
    bus: PrivateBus,
    make_daemon: Callable[..., Daemon],
    upstream: Dnsmasq,
    users: Users,
    tmp_path: Path,
) -> None:
    group = users.group()
    conf = tmp_path / "admin.toml"
    conf.write_text(f'admin_group = "{group}"\n')
    d = make_daemon(bus.address, upstreams=[upstream.upstream], extra_args=["--config", str(conf)])
    assert d.cli("add", "kept.example", "10.0.0.1").returncode == 0
    stranger, member = users.user(), users.user(group)
    shared = Path(tempfile.mkdtemp(prefix="portal-auth-"))  # readable by the other users
    os.chmod(shared, 0o755)
    hosts = shared / "hosts"
    hosts.write_text("6.6.6.6 evil.example\n")
    hosts.chmod(0o644)
    before = snapshot(d)
    for args, stdin in (
        (("add", "evil.example", "6.6.6.6"), None),
        (("add", "kept.example", "6.6.6.6"), None),  # replacing is changing too
        (("remove", "kept.example"), None),
        (("import", str(hosts)), None),
        (("check",), None),
    ):
        out = d.cli(*args, user=stranger, input=stdin)
        assert out.returncode == 1, (args, out)
        assert out.stderr.startswith("portal: error: not authorised"), out.stderr
        assert len(out.stderr.splitlines()) == 1
    assert snapshot(d) == before  # nothing changed, not even the file's mtime
    assert dig("+short", "kept.example", port=d.port).split() == ["10.0.0.1"]
    assert dig("+short", "evil.example", port=d.port).split() != ["6.6.6.6"]
    for args in (("list", "--json"), ("status", "--json")):
        out = d.cli(*args, user=stranger)
        assert out.returncode == 0, out.stderr
    uid = pwd.getpwnam(stranger).pw_uid
    refusals = re.findall(rf"refused (\S+) for uid {uid} pid \d+ \(credentials\)", d.log())
    assert len(refusals) == 5 and "org.portalhelper.portal.check" in refusals
    # a member of the group may
    out = d.cli("add", "member.example", "10.0.0.7", user=member)
    assert out.returncode == 0, out.stderr
    member_uid = pwd.getpwnam(member).pw_uid
    assert re.search(
        rf"override member\.example -> 10\.0\.0\.7 added by uid {member_uid} pid \d+", d.log()
    )
    listed = json.loads(d.cli("list", "--json").stdout)
    assert {i["name"]: i["created_by"].split(" pid")[0] for i in listed} == {
        "kept.example": "uid 0",
        "member.example": f"uid {member_uid}",
    }
    shutil.rmtree(shared)


def test_every_argument_is_validated_and_refusals_change_nothing(
    bus: PrivateBus, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    conf = tmp_path / "small.toml"
    conf.write_text("max_overrides = 3\n")
    d = make_daemon(bus.address, extra_args=["--config", str(conf)])
    assert calls(
        d.bus,
        ("AddOverride", "sastb", ["one.example", ["10.0.0.1"], FOREVER, True]),
        ("AddOverride", "sastb", ["two.example", ["10.0.0.2"], FOREVER, True]),
    ) == ["ok", "ok"]
    before = snapshot(d)

    def add(name: str, addrs: list[str], ttl: int = 0) -> tuple[str, str, list[Any]]:
        return ("AddOverride", "sastb", [name, addrs, ttl, True])

    def imp(entries: list[list[Any]], ttl: int = 0) -> tuple[str, str, list[Any]]:
        return ("ImportOverrides", "a(sas)tb", [entries, ttl, True])

    ip = ["10.0.0.1"]
    long = "a" * 1025
    bad: list[tuple[tuple[str, str, list[Any]], str]] = [
        # oversized strings, wherever they are
        (add(long, ip), "InvalidDomain"),
        (add("x.example", ["1" * 5000]), "InvalidDomain"),
        (("RemoveOverride", "s", ["r" * 1_000_000]), "InvalidDomain"),
        (imp([[long, ip]]), "InvalidDomain"),
        (imp([["i.example", [long]]]), "InvalidDomain"),
        # names
        (add("", ip), "InvalidDomain"),
        (add(".", ip), "InvalidDomain"),
        (add("*.example", ip), "InvalidDomain"),
        (add("a b.example", ip), "InvalidDomain"),
        (add("new\nline.example", ip), "InvalidDomain"),
        (add("-lead.example", ip), "InvalidDomain"),
        (add("x" * 64 + ".example", ip), "InvalidDomain"),
        (add(".".join(["a" * 60] * 5), ip), "InvalidDomain"),
        (add("10.0.0.1", ip), "InvalidDomain"),
        # addresses
        (add("x.example", []), "InvalidAddress"),
        (add("x.example", ["fe80::1%eth0"]), "InvalidAddress"),
        (add("x.example", ["224.0.0.1"]), "InvalidAddress"),
        (add("x.example", ["0.0.0.0"]), "InvalidAddress"),
        (add("x.example", ["::"]), "InvalidAddress"),
        (add("x.example", ["10.0.0.1/24"]), "InvalidAddress"),
        (add("x.example", [f"10.0.1.{i}" for i in range(17)]), "InvalidAddress"),
        # lifetimes
        (add("x.example", ip, 366 * 86400 + 1), "InvalidTTL"),
        (add("x.example", ip, FOREVER - 1), "InvalidTTL"),
        (imp([["i.example", ip]], 2**63), "InvalidTTL"),
        # the table's limit (3, from the config): two more new names are one too many
        (imp([["i1.example", ip], ["i2.example", ip]]), "TooManyOverrides"),
        # an import is all or nothing: one bad entry and none is added
        (imp([["ok.example", ip], ["bad..example", ip]]), "InvalidDomain"),
        # wrong shapes
        (("AddOverride", "sasub", ["x.example", ip, 5, True]), "PortalError"),
        (("AddOverride", "", []), "PortalError"),
        (("RemoveOverride", "as", [["x.example"]]), "PortalError"),
        (("ListOverrides", "s", ["x"]), "PortalError"),
        (("NoSuchMethod", "", []), "PortalError"),
        (("RemoveOverride", "s", ["never-added.example"]), "NoSuchOverride"),
    ]
    got = calls(d.bus, *(req for req, _ in bad))
    assert got == [want for _, want in bad], [
        (req[0], req[2][0] if req[2] else "", g) for (req, _), g in zip(bad, got, strict=True)
    ]
    assert snapshot(d) == before  # not a byte, not an mtime
    # at the limit: replacing an existing name is fine, a third new one too, a fourth is not
    assert calls(
        d.bus,
        ("AddOverride", "sastb", ["one.example", ["10.0.0.11"], FOREVER, True]),
        ("AddOverride", "sastb", ["three.example", ["10.0.0.3"], FOREVER, True]),
        ("AddOverride", "sastb", ["four.example", ["10.0.0.4"], FOREVER, True]),
    ) == ["ok", "ok", "TooManyOverrides"]
    names = [i["name"] for i in json.loads(d.cli("list", "--json").stdout)]
    assert names == ["one.example", "three.example", "two.example"]
    assert dig("+short", "four.example", port=d.port).split() == []
    assert "internal error" not in d.log()


# What a hostile client may send as a name or an address: any text D-Bus can carry.
dbus_text = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=80)
name_like = st.one_of(
    dbus_text,
    st.from_regex(r"[A-Za-z0-9_\-.]{1,70}", fullmatch=True),
    st.lists(st.from_regex(r"[a-z0-9\-]{1,12}", fullmatch=True), min_size=1, max_size=4).map(
        ".".join
    ),
)
addr_like = st.one_of(dbus_text, st.ip_addresses().map(str))


def test_any_text_over_dbus_is_a_clean_answer_or_a_clean_refusal(
    bus: PrivateBus, make_daemon: Callable[..., Daemon]
) -> None:
    """Hypothesis drives AddOverride with arbitrary text: each call is either accepted — and
    then the normalised name answers in DNS with the given address — or refused with a typed
    error and the state file untouched. The daemon never fails internally."""
    d = make_daemon(bus.address)
    seen = {"ok": 0, "refused": 0}

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(name_like, addr_like)
    def one(name: str, addr: str) -> None:
        before = state_file(d)
        result, body = call_one(d.bus, "AddOverride", "sastb", [name, [addr], FOREVER, True])
        if result == "ok":
            seen["ok"] += 1
            made = body[0]
            norm, (stored,) = made["name"], made["addresses"]
            assert norm == norm.lower() and not norm.endswith(".") and len(norm) <= 253
            q = dns.message.make_query(norm, "AAAA" if ":" in stored else "A")
            reply = dns.query.udp(q, d.host, port=d.port, timeout=5)
            assert [r.to_text() for rrset in reply.answer for r in rrset] == [stored]
            assert calls(d.bus, ("RemoveOverride", "s", [norm])) == ["ok"]
        else:
            seen["refused"] += 1
            assert result in ("InvalidDomain", "InvalidAddress"), (name, addr, result)
            assert state_file(d) == before

    one()
    print(f"arbitrary AddOverride calls: {seen}")
    assert seen["ok"] and seen["refused"]
    assert "AddOverride failed" not in d.log() and "RemoveOverride failed" not in d.log()


def test_every_change_is_logged_with_who_made_it(daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    assert d.cli("add", "a.example", "10.0.0.1", "--ttl", "1s").returncode == 0
    assert d.cli("add", "b.example", "10.0.0.2").returncode == 0
    assert d.cli("remove", "b.example").returncode == 0
    assert d.cli("import", "-", input="10.0.0.3 c.example d.example\n").returncode == 0
    log = d.log()
    who = r"by uid 0 pid \d+"
    assert re.search(rf"override a\.example -> 10\.0\.0\.1 added {who}", log)
    assert re.search(rf"override b\.example -> 10\.0\.0\.2 added {who}", log)
    assert re.search(rf"override b\.example removed {who}", log)
    assert re.search(rf"2 override\(s\) imported {who}", log)
    # expiry is a change too: logged when the timer fires (no caller: the clock did it)
    assert wait_for(lambda: "override a.example expired" in d.log(), 10)


def test_no_override_outlives_its_expiry(daemon: Daemon) -> None:
    """Query a 2-second override in a tight loop. Every answer that still carries it must have
    been asked before its expiry, and its TTL may not reach past the expiry by more than the
    1-second minimum TTL (a TTL of 0 is not cached reliably by clients)."""
    d = daemon
    assert d.cli("add", "brief.example", "10.0.0.1", "--ttl", "2s").returncode == 0
    saved = json.loads((d.state_dir / "overrides.json").read_text())
    expires_at = saved["overrides"][0]["expires_at"]
    q = dns.message.make_query("brief.example", "A")
    hits = misses = 0
    while time.time() < expires_at + 1.5:
        asked = time.time()
        reply = dns.query.udp(q, d.host, port=d.port, timeout=5)
        got = [r.to_text() for rrset in reply.answer for r in rrset]
        if got == ["10.0.0.1"]:
            hits += 1
            assert asked < expires_at, "answered after its expiry"
            assert asked + reply.answer[0].ttl <= expires_at + 1
        else:
            misses += 1
            assert asked > expires_at - 0.5  # never missing while it is alive
        time.sleep(0.005)
    assert hits > 10 and misses > 10
    # and across a restart: an override that expired while the daemon was down is not served
    assert d.cli("add", "gone.example", "10.0.0.2", "--ttl", "1s").returncode == 0
    d.stop()
    time.sleep(1.2)
    d.start()
    assert dig("+short", "gone.example", port=d.port).split() != ["10.0.0.2"]
    assert "gone.example" not in d.cli("list").stdout
