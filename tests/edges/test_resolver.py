"""Resolver wiring against real resolvers: glibc with the generated resolv.conf, and a real
systemd-resolved driven over a private D-Bus by ResolverWiring.

Everything runs in a network namespace this test creates (unique name, removed afterwards):
one dnsmasq plays the network's DNS server (127.0.0.77), another plays the stub (127.0.0.153,
answering the override and forwarding the rest). glibc lookups run in a private mount namespace
with the resolv.conf under test bind-mounted over /etc/resolv.conf, so the host's file is never
touched. systemd-resolved comes from Debian's systemd-resolved package unpacked with `dpkg -x`
(installing it would take over this machine's resolv.conf); it runs as nobody with only the
capabilities it keeps in its own unit, on a private bus, with a tmpfs over /run/systemd.
Every process is started here and stopped by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from portal.core.wiring import render_resolv_conf
from portal.edges.resolver import ResolverWiring
from tests.support.dbus import BUS_CONFIG
from tests.support.procs import stop_pid

REPO = Path(__file__).resolve().parents[2]
STUB = "127.0.0.153"
NETWORK_DNS = "127.0.0.77"
OVERRIDE = "login.hotspot.example"
OVERRIDE_ADDR = "10.1.2.3"
VENUE_ADDR = "192.0.2.99"  # what the network itself answers for the overridden name
OTHER = "example.org"
OTHER_ADDR = "192.0.2.10"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: creates network and mount namespaces"
)
needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("ip", "unshare", "dnsmasq", "getent", "dig")),
    reason="needs ip (iproute2), unshare (util-linux), dnsmasq, getent and dig (bind9-dnsutils)",
)


def _run(cmd: list[str], *, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


class Processes:
    """Processes a test started; stopped by PID, never by name."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log else None  # noqa: SIM115 - handed to the process
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out or subprocess.DEVNULL,
                stderr=out or subprocess.DEVNULL,
                env=env,
            )
        finally:
            if out:
                out.close()
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        stop_pid(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


@pytest.fixture
def procs() -> Iterator[Processes]:
    p = Processes()
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with lo up and one veth pair carrying a link-local address.

    glibc's getaddrinfo(AI_ADDRCONFIG) returns nothing when only lo has addresses, and
    systemd-resolved ignores links without a non-loopback address: portal0 gets the address the
    NixOS module gives it (169.254.53.53/32).
    """
    name = f"ptres-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    assert _run(["ip", "netns", "add", name]).returncode == 0
    try:
        for cmd in (
            ["link", "set", "lo", "up"],
            ["link", "add", "portal0", "type", "veth", "peer", "name", "portal0p"],
            ["addr", "add", "169.254.53.53/32", "dev", "portal0"],
            ["link", "set", "portal0", "up"],
            ["link", "set", "portal0p", "up"],
        ):
            res = _run(["ip", "-n", name, *cmd])
            assert res.returncode == 0, res.stderr
        yield name
    finally:
        _run(["ip", "netns", "del", name])


def dnsmasq(
    ns: str, listen: str, records: dict[str, str], *, forward: str = "", port: int = 53
) -> list[str]:
    cmd = [
        "ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
        f"--listen-address={listen}", "--bind-interfaces", "--no-hosts", "--no-resolv",
        "--pid-file", "--user=root", "--cache-size=0", "--log-facility=/dev/null",
        f"--port={port}",
    ]  # fmt: skip
    cmd += [f"--host-record={name},{addr}" for name, addr in records.items()]
    if forward:
        cmd.append(f"--server={forward}")
    return cmd


def wait_answer(
    ns: str, server: str, name: str, expected: str, *, port: int = 53, logs: tuple[Path, ...] = ()
) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        res = _run(["ip", "netns", "exec", ns, "dig", "+short", "+time=1", "+tries=1",
                    "-p", str(port), f"@{server}", name])  # fmt: skip
        if expected in res.stdout.split():
            return
        time.sleep(0.05)
    told = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in logs)
    raise AssertionError(f"{server} never answered {name} with {expected}{told}")


def start_network(ns: str, procs: Processes) -> None:
    """The network's server: it answers the overridden name too, differently."""
    procs.start(dnsmasq(ns, NETWORK_DNS, {OVERRIDE: VENUE_ADDR, OTHER: OTHER_ADDR}))
    wait_answer(ns, NETWORK_DNS, OTHER, OTHER_ADDR)


def start_dnsmasq_stub(ns: str, procs: Processes, *, port: int = 53) -> subprocess.Popen[bytes]:
    """A dnsmasq standing in for the stub: the override, everything else forwarded."""
    records = {OVERRIDE: OVERRIDE_ADDR}
    stub = procs.start(dnsmasq(ns, STUB, records, forward=NETWORK_DNS, port=port))
    wait_answer(ns, STUB, OVERRIDE, OVERRIDE_ADDR, port=port)
    wait_answer(ns, STUB, OTHER, OTHER_ADDR, port=port)
    return stub


def start_bus(procs: Processes, directory: Path) -> str:
    """A private dbus-daemon (everyone may own and call); its socket is world-reachable."""
    sock = directory / "bus.sock"
    (directory / "bus.conf").write_text(BUS_CONFIG.format(kind="system", socket=sock, extra=""))
    procs.start(["dbus-daemon", f"--config-file={directory / 'bus.conf'}", "--nofork",
                 "--nopidfile"])  # fmt: skip
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert time.monotonic() < deadline, "dbus-daemon did not create its socket"
        time.sleep(0.02)
    os.chmod(sock, 0o666)  # resolved runs as nobody
    return f"unix:path={sock}"


def portal_cli(bus: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "portal", *args],
        env=dict(os.environ, PYTHONPATH=str(REPO), PORTAL_BUS=bus),
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def start_portal_daemon(
    ns: str, procs: Processes, work: Path, bus: str, *, config: str = "/dev/null"
) -> subprocess.Popen[bytes]:
    """The real `portal daemon` in the namespace, serving the stub address; waits for READY=1."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PORTAL_BUS=bus)
    notify_path = work / "notify"
    log = work / "daemon.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(15)
        daemon = procs.start(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "portal", "daemon",
             "--listen", f"{STUB}:53", "--upstream", NETWORK_DNS,
             "--state-dir", str(work / "state"), "--config", config],
            env=dict(env, NOTIFY_SOCKET=str(notify_path)),
            log=log,
        )  # fmt: skip
        try:
            while b"READY=1" not in notify.recv(4096):
                pass
        except TimeoutError:
            raise AssertionError("daemon never ready:\n" + log.read_text()) from None
    notify_path.unlink()
    return daemon


def start_portal_stub(ns: str, procs: Processes, work: Path) -> subprocess.Popen[bytes]:
    """The real daemon as the stub, with the override added by the real CLI."""
    bus_dir = work / "bus"
    bus_dir.mkdir()
    bus = start_bus(procs, bus_dir)
    daemon = start_portal_daemon(ns, procs, work, bus)
    res = portal_cli(bus, "add", OVERRIDE, OVERRIDE_ADDR, "--any-network")
    assert res.returncode == 0, res.stderr + (work / "daemon.log").read_text()
    wait_answer(ns, STUB, OVERRIDE, OVERRIDE_ADDR)
    wait_answer(ns, STUB, OTHER, OTHER_ADDR)
    return daemon


def lookups(
    ns: str, resolv_conf: Path, names: list[str], *, limit_s: int = 60
) -> list[tuple[int, str, float]]:
    """`getent hosts NAME` for each name with `resolv_conf` as /etc/resolv.conf, each given up
    after `limit_s` (exit code 124).

    Returns (exit code, first address, seconds) per lookup, timed inside the namespace so the
    cost of entering it is not counted.
    """
    script = (
        f"mount --bind {resolv_conf} /etc/resolv.conf || exit 99\n"
        'for n in "$@"; do\n'
        f'  s=$(date +%s%N); out=$(timeout {limit_s} getent hosts "$n"); rc=$?\n'
        "  e=$(date +%s%N)\n"
        '  echo "$rc $((e - s)) ${out%% *}"\n'
        "done\n"
    )
    res = _run(
        ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
         "sh", "-c", script, "sh", *names],
        timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = []
    for line in res.stdout.splitlines():
        rc, ns_elapsed, *addr = line.split(" ", 2)
        rows.append((int(rc), (addr[0] if addr else "").strip(), int(ns_elapsed) / 1e9))
    assert len(rows) == len(names), res.stdout
    return rows


# --- resolv.conf systems: glibc, stub first, network after ----------------------------------


@needs_root
@needs_tools
@pytest.mark.parametrize("stub_kind", ["portal", "dnsmasq"])
def test_glibc_falls_through_when_stub_stops(
    netns: str, procs: Processes, tmp_path: Path, stub_kind: str
) -> None:
    if stub_kind == "portal" and not shutil.which("dbus-daemon"):
        pytest.skip("needs dbus-daemon for the real daemon's control API")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(render_resolv_conf(STUB, [NETWORK_DNS]))
    start_network(netns, procs)
    if stub_kind == "portal":
        stub = start_portal_stub(netns, procs, tmp_path)
    else:
        stub = start_dnsmasq_stub(netns, procs)

    up = lookups(netns, resolv, [OVERRIDE, OTHER])
    assert [(rc, addr) for rc, addr, _ in up] == [(0, OVERRIDE_ADDR), (0, OTHER_ADDR)]

    Processes.stop(stub)
    down = lookups(netns, resolv, [OTHER, OVERRIDE, OTHER])
    # the override is lost, name resolution is not: the network's server answers
    assert [(rc, addr) for rc, addr, _ in down] == [
        (0, OTHER_ADDR),
        (0, VENUE_ADDR),
        (0, OTHER_ADDR),
    ], f"lookups after the stop (getent's exit code, address, seconds): {down}"
    slowest = max(t for _, _, t in down)
    print(f"stub stopped: slowest fallback lookup {slowest * 1000:.1f} ms")
    # Not a performance assertion: a refused datagram makes glibc move on at once, while a
    # resolver timeout (what a stub-only resolv.conf or a hung stub costs) is 5 s.
    assert slowest < 2.0


@needs_root
@needs_tools
def test_stub_alone_would_take_dns_down(netns: str, procs: Processes, tmp_path: Path) -> None:
    """Why render_resolv_conf refuses to list the stub alone: shown, not assumed."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {STUB}\noptions timeout:1 attempts:1\n")
    start_network(netns, procs)
    Processes.stop(start_dnsmasq_stub(netns, procs))
    [(rc, addr, _)] = lookups(netns, resolv, [OTHER])
    assert rc != 0 and addr == ""


async def test_describe_resolv_conf_modes(tmp_path: Path) -> None:
    """resolv.conf systems: the wiring only asks (the request file); the helper edits."""
    nobus = f"unix:path={tmp_path}/no-bus-here"
    plain = tmp_path / "plain.conf"
    plain.write_text(render_resolv_conf(STUB, ["192.0.2.1", "192.0.2.2"]))
    openresolv = tmp_path / "openresolv.conf"
    openresolv.write_text(f"# Generated by resolvconf\nnameserver {STUB}\nnameserver 192.0.2.1\n")
    dhcpcd = tmp_path / "dhcpcd.conf"
    dhcpcd.write_text(
        f"# Generated by dhcpcd from wlan0.dhcp\nnameserver {STUB}\nnameserver 192.0.2.1\n"
    )
    foreign = tmp_path / "foreign.conf"
    foreign.write_text("nameserver 192.0.2.1\n")
    cases = [
        (plain, "resolv.conf: stub first, then 192.0.2.1, 192.0.2.2"),
        (openresolv, "resolv.conf: stub first, then 192.0.2.1 (openresolv)"),
        (dhcpcd, "resolv.conf: stub first, then 192.0.2.1 (dhcpcd)"),
        (
            foreign,
            "not wired: resolv.conf does not list 127.0.0.153 yet "
            "(systemctl status portal-wire.path)",
        ),
        (
            tmp_path / "missing.conf",
            f"not wired: no {tmp_path / 'missing.conf'} to put the stub in, "
            "and systemd-resolved does not run",
        ),
    ]
    request = tmp_path / "resolv-stub"
    for path, expected in cases:
        wiring = ResolverWiring(
            bus=nobus,
            resolv_conf=str(path),
            nsswitch_conf=str(plain),
            request=str(request),
            helper=True,
        )
        await wiring.apply(["a.test"])
        assert await wiring.describe() == expected
        if path.exists():
            assert request.read_text() == f"{STUB}\n"
        await wiring.apply([], episode=False)
        if path.exists():
            assert request.read_text() == ""
        await wiring.close()
        assert not request.exists()  # withdrawn at close: the helper takes the stub out


async def test_a_request_the_helper_missed_is_asked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path unit drops a change made while its service runs: here the helper sleeps through
    the daemon's first request (as if busy with resolv.conf's own change), and only wakes for
    the next write. The daemon, finding resolv.conf still without the stub when its wait is
    up, writes the request again and waits once more, so that by the time apply() (and with it
    `portal add`) returns, the helper has put the stub first."""
    import asyncio

    from portal.edges import resolv_conf, resolver
    from portal.edges.inotify import FileWatch

    monkeypatch.setattr(resolver, "HELPER_WAIT_S", 0.3)
    conf = tmp_path / "resolv.conf"
    owners = "nameserver 192.0.2.1\n"
    conf.write_text(owners)
    request = tmp_path / "resolv-stub"
    request.write_text("")
    woke: list[int] = []

    def helper_woken() -> None:
        woke.append(1)
        if len(woke) > 1:  # the first request was written while it ran: lost
            resolv_conf.sync(str(conf), str(request))

    watch = FileWatch(str(request), helper_woken, settle_s=0.0)
    watch.start()
    wiring = ResolverWiring(
        bus=f"unix:path={tmp_path}/no-bus-here",
        resolv_conf=str(conf),
        nsswitch_conf=str(conf),
        request=str(request),
        helper=True,
    )
    try:
        await wiring.apply(["a.test"])
        # no polling: the lookup right after `portal add` finds the stub first
        assert conf.read_text().split("nameserver ")[1].startswith(STUB), conf.read_text()
        assert len(woke) >= 2
        # and a request the helper did act on is not written again: resolv.conf agrees now
        before = len(woke)
        await wiring.settle()
        await asyncio.sleep(0.1)
        assert len(woke) == before
    finally:
        await wiring.close()
        watch.close()


# --- systemd-resolved: a dedicated link with route-only domains ------------------------------

RESOLVED_CACHE = Path(os.environ.get("PORTAL_TEST_CACHE", "/var/tmp/portal-test-cache"))


def _resolved_binary() -> tuple[Path | None, str]:
    """systemd-resolved to run: installed, else Debian's package unpacked (never installed)."""
    for path in (Path("/lib/systemd/systemd-resolved"), Path("/usr/lib/systemd/systemd-resolved")):
        if path.exists():
            return path, ""
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        return None, "systemd-resolved is not installed and apt-get/dpkg are not available"
    ver = _run(["dpkg-query", "-W", "-f=${Version}", "systemd"]).stdout.strip()
    if not ver:
        return None, "the systemd package (libsystemd-shared) is not installed"
    root = RESOLVED_CACHE / f"systemd-resolved-{ver.replace(':', '_')}"
    binary = root / "lib/systemd/systemd-resolved"
    if binary.exists():
        return binary, ""
    dl = Path(tempfile.mkdtemp(prefix="portal-resolved-deb-"))
    try:
        os.chmod(dl, 0o777)  # apt fetches as its own user when it can write here
        res = subprocess.run(
            ["apt-get", "download", f"systemd-resolved={ver}"],
            cwd=dl, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        debs = list(dl.glob("*.deb"))
        if res.returncode != 0 or not debs:
            return None, f"cannot fetch systemd-resolved {ver} (apt-get download): {res.stderr}"
        unpacked = dl / "root"
        if _run(["dpkg", "-x", str(debs[0]), str(unpacked)]).returncode != 0:
            return None, f"dpkg -x failed on {debs[0].name}"
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.move(unpacked, root)
        return binary, ""
    finally:
        shutil.rmtree(dl, ignore_errors=True)


RESOLVED_CONF = f"""[Resolve]
# the network's server, as NM would push it for the Wi-Fi link
DNS={NETWORK_DNS}
LLMNR=no
MulticastDNS=no
DNSSEC=no
DNSOverTLS=no
# every lookup must reach a server: a cached answer would hide a wrong route
Cache=no
DNSStubListener=yes
"""

DRIVER = """
import asyncio, json, sys, time
from portal.edges.resolver import ResolverWiring

async def main(args):
    make = lambda: ResolverWiring(bus=args["bus"], resolv_conf=args["resolv"],
                                  nsswitch_conf="/dev/null", port=args["port"])
    deadline = time.monotonic() + 15
    while True:  # resolved takes its bus name a moment after it starts
        wiring = make()
        mode = await wiring.detect()
        if mode == "resolved" or time.monotonic() > deadline:
            break
        await wiring.close()
        await asyncio.sleep(0.05)
    out = {"mode": str(mode)}
    if args["op"] == "apply":
        await wiring.apply(args["names"])
    elif args["op"] == "revert":
        await wiring.revert()
    elif args["op"] == "follow":  # apply, then stay alive (60 s at most) as a daemon would
        await wiring.apply(args["names"])
        print("following", flush=True)
        await asyncio.sleep(60)
    out["describe"] = await wiring.describe()
    if args["op"] != "apply":
        # close() hands the link back to resolved (as the daemon does when it stops); after
        # "apply" this process ends like a daemon killed outright: the link keeps its settings.
        await wiring.close()
    print(json.dumps(out))

asyncio.run(main(json.loads(sys.argv[1])))
"""


def drive(ns: str, **args: object) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", DRIVER, json.dumps(args)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result: dict[str, str] = json.loads(res.stdout)
    return result


def start_resolved(
    ns: str, procs: Processes, work: Path, bus: str, binary: Path, *, privacy: str = ""
) -> tuple[Path, subprocess.Popen[bytes]]:
    """systemd-resolved in the namespace on `bus`; returns the resolv.conf that points at it.

    It gets a tmpfs over /run/systemd (its state and a drop-in with the network's server) and
    that resolv.conf over /etc/resolv.conf (so it imports no server of this machine), both in
    a private mount namespace.
    """
    conf = RESOLVED_CONF
    for line in privacy.split():  # e.g. "DNSOverTLS=yes": the user's global setting
        key = line.split("=", 1)[0]
        conf = "\n".join(line if x.startswith(key + "=") else x for x in conf.splitlines()) + "\n"
    (work / "resolved.conf").write_text(conf)
    # glibc and resolved itself read this: queries go to resolved's stub listener
    resolv = work / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\noptions edns0\n")
    # resolved keeps CAP_NET_BIND_SERVICE and CAP_NET_RAW in its unit; started as a non-root
    # user it skips its own privilege drop, so setpriv does it (plus SETPCAP, which it needs to
    # drop the rest of its bounding set).
    setup = (
        "mount -t tmpfs -o mode=755 tmpfs /run/systemd && "
        "mkdir -p /run/systemd/resolve /run/systemd/resolved.conf.d && "
        "chown 65534:65534 /run/systemd/resolve && "
        f"cp {work / 'resolved.conf'} /run/systemd/resolved.conf.d/test.conf && "
        f"mount --bind {resolv} /etc/resolv.conf && "
        "exec setpriv --reuid=65534 --regid=65534 --clear-groups "
        "--inh-caps=+net_bind_service,+net_raw,+setpcap "
        '--ambient-caps=+net_bind_service,+net_raw,+setpcap "$0"'
    )
    proc = procs.start(
        ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
         "sh", "-c", setup, str(binary)],
        env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus, SYSTEMD_LOG_TARGET="console"),
        log=work / "resolved.log",
    )  # fmt: skip
    return resolv, proc


@needs_root
@needs_tools
@pytest.mark.skipif(not shutil.which("dbus-daemon"), reason="needs dbus-daemon")
@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
@pytest.mark.parametrize(
    ("port", "privacy"),
    [(53, ""), (5353, ""), (53, "DNSOverTLS=yes"), (53, "DNSSEC=yes")],
    ids=["SetLinkDNS", "SetLinkDNSEx", "strict-DNS-over-TLS", "DNSSEC"],
)
def test_real_resolved_routes_only_overrides_to_the_stub(
    netns: str, procs: Processes, short_tmp: Path, port: int, privacy: str
) -> None:
    binary, why = _resolved_binary()
    if binary is None:
        pytest.skip(why)
    bus = start_bus(procs, short_tmp)
    start_network(netns, procs)
    stub = start_dnsmasq_stub(netns, procs, port=port)
    resolv, _ = start_resolved(netns, procs, short_tmp, bus, binary, privacy=privacy)

    names = [OVERRIDE, "a.portal.test", "b.portal.test"]
    applied = drive(netns, op="apply", bus=bus, resolv=str(resolv), names=names, port=port)
    assert applied == {"mode": "resolved", "describe": "resolved link portal0: 3 domains"}
    logs = (short_tmp / "resolved.log",)
    wait_answer(netns, "127.0.0.53", OVERRIDE, OVERRIDE_ADDR, logs=logs)

    # 20 of 20: the override comes from the stub, never raced by the network's server
    rows = lookups(netns, resolv, [OVERRIDE] * 20)
    assert [addr for _, addr, _ in rows] == [OVERRIDE_ADDR] * 20
    if privacy:
        # The user's strict setting still holds for every other name: the network's plain
        # server can give neither TLS nor signatures, so resolved refuses its answer (over
        # TLS only after its own timeouts: given up here after 3 s, an answer would be in ms).
        rows = lookups(netns, resolv, [OTHER], limit_s=3)
        assert rows[0][0] != 0, rows[0]
        return
    rows = lookups(netns, resolv, [OTHER])
    assert rows[0][:2] == (0, OTHER_ADDR)

    # stub stopped: only the overridden names fail; everything else still resolves
    Processes.stop(stub)
    rows = lookups(netns, resolv, [OTHER, OVERRIDE, OTHER])
    assert rows[0][:2] == (0, OTHER_ADDR)
    assert rows[1][0] != 0
    assert rows[2][:2] == (0, OTHER_ADDR)
    print(
        f"resolved, stub stopped: override fails in {rows[1][2] * 1000:.1f} ms, "
        f"other names {rows[2][2] * 1000:.1f} ms"
    )

    reverted = drive(netns, op="revert", bus=bus, resolv=str(resolv), port=port)
    assert reverted["mode"] == "resolved"
    # Nothing to route: the link is back to resolved's defaults, no server, no domain.
    assert reverted["describe"] == (
        "resolved link portal0: standby (no override on this network, no portal)"
    )
    # with the link reverted the network answers the name again
    rows = lookups(netns, resolv, [OVERRIDE])
    assert rows[0][:2] == (0, VENUE_ADDR)


@needs_root
@needs_tools
@pytest.mark.skipif(not shutil.which("dbus-daemon"), reason="needs dbus-daemon")
@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_follow_restores_the_link_after_resolved_restarts(
    netns: str, procs: Processes, short_tmp: Path
) -> None:
    binary, why = _resolved_binary()
    if binary is None:
        pytest.skip(why)
    bus = start_bus(procs, short_tmp)
    start_network(netns, procs)
    start_dnsmasq_stub(netns, procs)
    resolv, resolved = start_resolved(netns, procs, short_tmp, bus, binary)
    drive(netns, op="describe", bus=bus, resolv=str(resolv), port=53)  # waits for resolved

    follower_log = short_tmp / "follower.log"
    args = {"op": "follow", "bus": bus, "resolv": str(resolv), "port": 53, "names": [OVERRIDE]}
    procs.start(
        ["ip", "netns", "exec", netns, sys.executable, "-c", DRIVER, json.dumps(args)],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        log=follower_log,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while "following" not in follower_log.read_text():
        assert time.monotonic() < deadline, follower_log.read_text()
        time.sleep(0.05)
    wait_answer(netns, "127.0.0.53", OVERRIDE, OVERRIDE_ADDR)

    # a restart with fresh state (its /run is new): the link starts empty
    Processes.stop(resolved)
    resolv, _ = start_resolved(netns, procs, short_tmp, bus, binary)
    logs = (follower_log, short_tmp / "resolved.log")
    wait_answer(netns, "127.0.0.53", OVERRIDE, OVERRIDE_ADDR, logs=logs)
    described = drive(netns, op="describe", bus=bus, resolv=str(resolv), port=53)
    assert described["describe"] == "resolved link portal0: 1 domain"


@needs_root
@needs_tools
@pytest.mark.skipif(not shutil.which("dbus-daemon"), reason="needs dbus-daemon")
@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_daemon_routes_its_overrides_through_resolved(
    netns: str, procs: Processes, short_tmp: Path
) -> None:
    binary, why = _resolved_binary()
    if binary is None:
        pytest.skip(why)
    bus = start_bus(procs, short_tmp)
    start_network(netns, procs)
    resolv, _ = start_resolved(netns, procs, short_tmp, bus, binary)
    config = short_tmp / "portal.toml"
    config.write_text('wiring = "resolved"\n')
    daemon = start_portal_daemon(netns, procs, short_tmp, bus, config=str(config))
    log = short_tmp / "daemon.log"

    logs = (log, short_tmp / "resolved.log")
    res = portal_cli(bus, "add", OVERRIDE, OVERRIDE_ADDR, "--any-network")
    assert res.returncode == 0, res.stderr + log.read_text()
    wait_answer(netns, "127.0.0.53", OVERRIDE, OVERRIDE_ADDR, logs=logs)
    rows = lookups(netns, resolv, [OVERRIDE] * 20 + [OTHER])
    assert [addr for _, addr, _ in rows[:20]] == [OVERRIDE_ADDR] * 20
    assert rows[20][:2] == (0, OTHER_ADDR)
    status = json.loads(portal_cli(bus, "status", "--json").stdout)
    assert status["wiring"] == "resolved link portal0: 1 domain", log.read_text()

    # removing the override takes its domain off the link: the network answers again
    assert portal_cli(bus, "remove", OVERRIDE).returncode == 0
    wait_answer(netns, "127.0.0.53", OVERRIDE, VENUE_ADDR, logs=logs)

    assert portal_cli(bus, "add", OVERRIDE, OVERRIDE_ADDR, "--any-network").returncode == 0
    wait_answer(netns, "127.0.0.53", OVERRIDE, OVERRIDE_ADDR, logs=logs)
    Processes.stop(daemon)
    [(rc, addr, _)] = lookups(netns, resolv, [OTHER])
    assert (rc, addr) == (0, OTHER_ADDR)


async def test_resolved_mode_without_link(tmp_path: Path) -> None:
    wiring = ResolverWiring(mode="resolved", link="ptnolink0", bus=f"unix:path={tmp_path}/none")
    assert await wiring.describe() == "not wired: no link ptnolink0"
    await wiring.revert()  # nothing to revert: must not fail
    with pytest.raises(Exception, match="no link ptnolink0"):
        await wiring.apply(["a.test"])
    await wiring.close()
