"""Fault injection against the real daemon: upstreams that are dead, slow, or answer garbage or
the wrong query; the bus going away and coming back; a full state directory; SIGKILL at random
moments while the CLI adds overrides.

What must hold: a client always gets an answer (SERVFAIL when nothing better), within a bound;
overrides keep answering at once whatever the upstream or the bus does; nothing the CLI
acknowledged is ever lost, and the state file always parses.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from portal.core.overrides import parse_state
from tests.support.daemon import Daemon, run_cli, start_daemon
from tests.support.dbus import PrivateBus, RestartableBus, private_bus
from tests.support.dns import Behaviour, Dnsmasq, answer_a, dig, fake_upstream
from tests.support.procs import need, wait_for
from tests.support.system import fill, tmpfs

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")
OVERRIDE = "login.hotel.example"


def _garbage(q: bytes) -> list[tuple[float, bytes]]:
    rng = random.Random(q)
    return [
        (0.0, bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))) for _ in range(5)
    ]


def _wrong_id(q: bytes) -> list[tuple[float, bytes]]:
    good = answer_a(q, "6.6.6.6")
    return [(0.0, struct.pack("!H", (struct.unpack("!H", good[:2])[0] + 1) & 0xFFFF) + good[2:])]


def _wrong_question(q: bytes) -> list[tuple[float, bytes]]:
    other = dns.message.make_query("evil.example", "A")
    other.id = dns.message.from_wire(q).id
    return [(0.0, answer_a(other.to_wire(), "6.6.6.6"))]


def _query_echo(q: bytes) -> list[tuple[float, bytes]]:
    return [(0.0, q)]  # the query itself, QR=0: not an answer


def _slow(q: bytes) -> list[tuple[float, bytes]]:
    return [(2.5, answer_a(q, "6.6.6.6"))]  # after the stub's 1.5 s per-upstream wait


def _truncated(q: bytes) -> list[tuple[float, bytes]]:
    msg = dns.message.from_wire(q)
    if msg.flags & dns.flags.QR:
        return []
    tc = dns.message.make_response(msg)
    tc.flags |= dns.flags.TC
    return [(0.0, tc.to_wire())]


BAD: dict[str, Behaviour] = {
    "garbage": _garbage,
    "mismatched ID": _wrong_id,
    "another question": _wrong_question,
    "query echoed back": _query_echo,
    "slow": _slow,
    "truncated, over UDP and TCP": _truncated,
    "silent": lambda q: [],
}


def race(
    d: Daemon, forwarded: str, *, late: bool = False
) -> tuple[list[str], dns.message.Message, float]:
    """Ask `forwarded` (goes upstream), then at once the override from another socket. Return
    the order the replies came in, the forwarded reply and how long it took."""
    fq = dns.message.make_query(forwarded, "A")
    oq = dns.message.make_query(OVERRIDE, "A")
    sel = selectors.DefaultSelector()
    order: list[str] = []
    replies: dict[str, bytes] = {}
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fs,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as os_,
    ):
        sel.register(fs, selectors.EVENT_READ, "forwarded")
        sel.register(os_, selectors.EVENT_READ, "override")
        start = time.monotonic()
        fs.sendto(fq.to_wire(), d.listen)
        os_.sendto(oq.to_wire(), d.listen)
        took = 0.0
        while len(replies) < 2 and time.monotonic() - start < 8:
            for key, _ in sel.select(0.5):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                replies[key.data] = sock.recv(65535)
                order.append(key.data)
                if key.data == "forwarded":
                    took = time.monotonic() - start
                sel.unregister(sock)
        if late:  # no second reply to the forwarded query when the late answer comes in
            fs.settimeout(2.0)
            with pytest.raises(TimeoutError):
                fs.recv(65535)
        sel.close()
    assert "forwarded" in replies, "no reply at all: the forward is not bounded"
    msg = dns.message.from_wire(replies["forwarded"])
    assert fq.is_response(msg)
    assert [
        r.to_text() for rrset in dns.message.from_wire(replies["override"]).answer for r in rrset
    ] == ["10.0.0.1"]
    return order, msg, took


@pytest.mark.parametrize("fault", list(BAD))
def test_bad_upstream_gives_servfail_and_overrides_stay_instant(
    bus: PrivateBus, make_daemon: Callable[..., Daemon], upstream: Dnsmasq, fault: str
) -> None:
    # two daemons side by side, one bus each (a bus name has one owner)
    with fake_upstream(BAD[fault]) as bad, private_bus() as bus2:
        alone = make_daemon(bus.address, upstreams=[bad.upstream])
        both = make_daemon(bus2.address, upstreams=[bad.upstream, upstream.upstream])
        for d in (alone, both):
            assert d.cli("add", OVERRIDE, "10.0.0.1").returncode == 0
        results: dict[str, tuple[list[str], dns.message.Message, float]] = {}
        late = BAD[fault] is _slow
        threads = [
            threading.Thread(
                target=lambda: results.setdefault("alone", race(alone, "victim.example", late=late))
            ),
            threading.Thread(
                target=lambda: results.setdefault("both", race(both, "victim.upstream.test"))
            ),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        order, msg, took = results["alone"]
        assert not msg.answer and "6.6.6.6" not in msg.to_text()
        if BAD[fault] is _truncated:
            # an upstream that only ever truncates: its TC answer is passed on, so the client
            # retries over TCP itself (RFC 7766) and gets whatever the upstream says there
            assert msg.flags & dns.flags.TC and msg.rcode() == dns.rcode.NOERROR
            q = dns.message.make_query("victim.example", "A")
            tcp = dns.query.tcp(q, alone.host, port=alone.port, timeout=8)
            assert q.is_response(tcp) and not tcp.answer
        else:
            assert msg.rcode() == dns.rcode.SERVFAIL
        if BAD[fault] is not _truncated:
            # answered while the forward was still waiting (a TC answer comes back at once, so
            # there the two replies race and either may come first)
            assert order[0] == "override"
        print(f"{fault}: {dns.rcode.to_text(msg.rcode())} after {took:.2f} s")
        assert bad.received, "the bad upstream was never asked"
        if BAD[fault] is not _truncated:  # a TC answer is an answer: no next upstream then
            # with a good upstream behind the bad one, the client gets the real answer
            _, msg, took = results["both"]
            assert msg.rcode() == dns.rcode.NOERROR
            assert [r.to_text() for rrset in msg.answer for r in rrset] == ["192.0.2.10"]
        for d in (alone, both):
            assert "internal error" not in d.log()


def test_bus_restart(make_daemon: Callable[..., Daemon], upstream: Dnsmasq) -> None:
    """Kill the dbus-daemon, start a new one on the same address: DNS never stops, the daemon
    reconnects by itself, and the CLI works again (with the overrides made before)."""
    need("dbus-daemon")
    rbus = RestartableBus()
    try:
        rbus.start()
        d = make_daemon(rbus.address, upstreams=[upstream.upstream])
        assert d.cli("add", OVERRIDE, "10.0.0.1").returncode == 0
        failures: list[str] = []
        answered = 0
        stop = threading.Event()

        def keep_asking() -> None:
            nonlocal answered
            q = dns.message.make_query(OVERRIDE, "A")
            while not stop.is_set():
                try:
                    r = dns.query.udp(q, d.host, port=d.port, timeout=2)
                    if [x.to_text() for rrset in r.answer for x in rrset] != ["10.0.0.1"]:
                        failures.append(r.to_text())
                    answered += 1
                except Exception as exc:  # noqa: BLE001 - every failure is a finding
                    failures.append(repr(exc))
                time.sleep(0.01)

        t = threading.Thread(target=keep_asking, daemon=True)
        t.start()
        rbus.kill()
        assert wait_for(lambda: "reconnecting" in d.log(), 10)
        out = d.cli("list")
        assert out.returncode == 1 and "cannot connect to the bus" in out.stderr
        time.sleep(1.5)  # the daemon retries with backoff while the bus is away
        rbus.start()
        assert wait_for(lambda: d.cli("list", "--json").returncode == 0, 30, 0.5), d.log()
        assert [i["name"] for i in json.loads(d.cli("list", "--json").stdout)] == [OVERRIDE]
        assert d.cli("add", "after.example", "10.0.0.2").returncode == 0
        assert dig("+short", "after.example", port=d.port).split() == ["10.0.0.2"]
        stop.set()
        t.join(10)
        assert failures == [] and answered > 50
        assert d.proc is not None and d.proc.poll() is None
    finally:
        rbus.close()


@root_only
def test_full_state_dir(
    bus: PrivateBus, make_daemon: Callable[..., Daemon], upstream: Dnsmasq, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "tiny-state", "64k") as state:
        d = make_daemon(bus.address, upstreams=[upstream.upstream], state_dir=state)
        assert d.cli("add", "kept.example", "10.0.0.1").returncode == 0
        saved = (state / "overrides.json").read_text()
        filler = fill(state)
        out = d.cli("add", "new.example", "10.0.0.2")
        assert out.returncode == 1
        assert out.stderr.startswith("portal: error: cannot save overrides to ")
        assert "No space left on device" in out.stderr and len(out.stderr.splitlines()) == 1
        out = d.cli("remove", "kept.example")  # a removal must be durable too
        assert out.returncode == 1 and "No space left" in out.stderr
        assert dig("+short", "kept.example", port=d.port).split() == ["10.0.0.1"]
        assert dig("+short", "new.example", port=d.port).split() != ["10.0.0.2"]
        assert [i["name"] for i in json.loads(d.cli("list", "--json").stdout)] == ["kept.example"]
        assert (state / "overrides.json").read_text() == saved  # untouched, still whole
        assert sorted(p.name for p in state.iterdir()) == ["filler", "overrides.json"]  # no temp
        filler.unlink()
        assert d.cli("add", "new.example", "10.0.0.2").returncode == 0
        assert dig("+short", "new.example", port=d.port).split() == ["10.0.0.2"]
        d.stop()


def test_sigkill_during_a_stream_of_adds(
    bus: PrivateBus, upstream: Dnsmasq, tmp_path: Path
) -> None:
    """Two CLI processes and two D-Bus clients add overrides as fast as they can while the
    daemon is SIGKILLed at random moments (during start-up, between and inside saves) and
    restarted. After every kill the state file parses and holds every add acknowledged so far
    (CLI exit 0, or a D-Bus method return); at the end the daemon serves all of them."""
    budget_s = 18.0  # about 25 kills
    rng = random.Random(int(os.environ.get("PORTAL_TEST_SEED", "20261126")))
    state = tmp_path / "state"
    d = start_daemon(bus.address, tmp_path, upstreams=[upstream.upstream], state_dir=state)
    acked: set[str] = set()
    tried = {"cli": 0, "dbus": 0}
    lock = threading.Lock()
    stop = threading.Event()

    def cli_adder(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            name = f"cli{worker}-{i}.crash.example"
            out = run_cli("add", name, "10.1.0.1", "--until-removed", bus=bus.address)
            with lock:
                tried["cli"] += 1
                if out.returncode == 0:
                    acked.add(name)

    def dbus_adder(worker: int) -> None:
        import asyncio

        from portal.edges.client import Client

        async def run() -> None:
            client = await Client.open(bus.address)
            i = 0
            try:
                while not stop.is_set():
                    i += 1
                    name = f"bus{worker}-{i}.crash.example"
                    try:
                        await client.call(
                            "AddOverride", "sastb", [name, ["10.2.0.1"], 2**64 - 1, True]
                        )
                        ok = True
                    except Exception:  # noqa: BLE001 - daemon down or killed mid-call
                        ok = False
                        await asyncio.sleep(0.02)
                    with lock:
                        tried["dbus"] += 1
                        if ok:
                            acked.add(name)
            finally:
                await client.aclose()

        asyncio.run(run())

    threads = [threading.Thread(target=cli_adder, args=(w,), daemon=True) for w in range(2)]
    threads += [threading.Thread(target=dbus_adder, args=(w,), daemon=True) for w in range(2)]
    kills = 0
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.0, 0.6))
            d.kill()
            kills += 1
            with lock:
                acked_now = set(acked)
            path = state / "overrides.json"
            if acked_now:
                table = parse_state(path.read_text())  # raises on a torn or partial file
                missing = acked_now - {o.name for o in table.entries()}
                assert not missing, f"acknowledged adds lost at kill {kills}: {sorted(missing)}"
            d.start(wait=rng.random() < 0.7)  # now and then killed before it is even ready
    finally:
        stop.set()
        for t in threads:
            t.join(40)
        d.kill()
    d.start()
    try:
        names = {i["name"] for i in json.loads(d.cli("list", "--json").stdout)}
        assert acked <= names
        for name in sorted(acked)[:: max(1, len(acked) // 5)]:
            assert dig("+short", name, port=d.port).split(), name
        leftovers = sorted(p.name for p in state.iterdir() if p.name != "overrides.json")
        print(
            f"{kills} kills; adds tried: {tried}; acknowledged: {len(acked)}; "
            f"left in the state dir: {len(leftovers)} temp file(s)"
        )
        assert kills >= 15 and len(acked) >= 100, (kills, len(acked))
        assert not any(".corrupt-" in n for n in leftovers)
    finally:
        d.stop()


def test_temp_files_of_a_killed_save_are_swept(
    bus: PrivateBus, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    state = tmp_path / "swept"
    state.mkdir()
    stale = state / ".overrides.json.4242.tmp"
    stale.write_text('{"version": 1, "overr')  # what a crash inside a save leaves
    d = make_daemon(bus.address, state_dir=state)
    assert d.cli("add", "after.example", "10.0.0.1").returncode == 0
    assert sorted(p.name for p in state.iterdir()) == ["overrides.json"]
