"""glibc as the client: a namespace whose resolv.conf lists the stub first and the network's
server after, as portal's resolver wiring does. Needs root (namespaces, port 53, mounts)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dbus import PrivateBus, private_bus
from tests.support.procs import PORTAL, REPO, need, wait_for
from tests.support.system import Netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces and port 53")


@pytest.fixture
def ns(tmp_path: Path) -> Iterator[tuple[Netns, PrivateBus, Path]]:
    need("dnsmasq", "dig", "getent", "unshare", "nsenter", "dbus-daemon")
    n = Netns()
    try:
        # getaddrinfo with AI_ADDRCONFIG wants a non-loopback address: a veth pair, all inside
        n.run(["ip", "link", "add", "pv0", "type", "veth", "peer", "name", "pv1"], check=True)
        n.run(["ip", "addr", "add", "10.231.0.1/24", "dev", "pv0"], check=True)
        n.run(["ip", "link", "set", "pv0", "up"], check=True)
        n.run(["ip", "link", "set", "pv1", "up"], check=True)
        resolv = tmp_path / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.153\nnameserver 127.0.0.77\n")
        n.run(["mount", "--bind", str(resolv), "/etc/resolv.conf"], check=True)
        n.popen(
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--listen-address=127.0.0.77",
                "--bind-interfaces",
                "--user=root",
                "--pid-file=",
                "--address=/upstream.test/192.0.2.10",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with private_bus() as bus:
            yield n, bus, tmp_path
    finally:
        n.close()


def start_daemon(n: Netns, bus: PrivateBus, tmp: Path) -> subprocess.Popen[bytes]:
    log = open(tmp / "daemon.log", "ab")  # noqa: SIM115
    proc = n.popen(
        [
            "env",
            f"PYTHONPATH={REPO}",
            *PORTAL,
            "daemon",
            "--bus",
            bus.address,
            "--listen",
            "127.0.0.153:53",
            "--upstream",
            "127.0.0.77",
            "--state-dir",
            str(tmp / "state"),
            "--config",
            "/dev/null",
        ],
        stdout=log,
        stderr=log,
    )
    log.close()
    ok = wait_for(
        lambda: (
            n.run(
                ["dig", "@127.0.0.153", "+short", "+tries=1", "+time=1", "upstream.test"]
            ).stdout.strip()
            == "192.0.2.10"
        ),
        15,
        0.1,
    )
    assert ok, (tmp / "daemon.log").read_text()
    # The stub answers before the rest of the daemon has started (portal/early.py): wait for
    # its control API too, which the CLI calls next.
    claimed = wait_for(lambda: "control API on" in (tmp / "daemon.log").read_text(), 15, 0.05)
    assert claimed, (tmp / "daemon.log").read_text()
    return proc


def portal(n: Netns, bus: PrivateBus, *args: str) -> subprocess.CompletedProcess[str]:
    return n.run(["env", f"PYTHONPATH={REPO}", f"PORTAL_BUS={bus.address}", *PORTAL, *args])


def test_getent_sees_the_override_and_survives_a_stopped_stub(
    ns: tuple[Netns, PrivateBus, Path],
) -> None:
    n, bus, tmp = ns
    daemon = start_daemon(n, bus, tmp)
    # this namespace has no network the daemon could scope the override to
    added = portal(n, bus, "add", "login.hotel.example", "10.0.0.1")
    assert added.returncode == 1 and "--any-network" in added.stderr
    assert portal(n, bus, "add", "login.hotel.example", "10.0.0.1", "--any-network").returncode == 0
    assert n.run(["getent", "hosts", "login.hotel.example"]).stdout.split()[0] == "10.0.0.1"
    # AF_UNSPEC: A from the override and an immediate NODATA for AAAA, no upstream wait
    ahosts = n.run(["getent", "ahosts", "login.hotel.example"]).stdout.split()
    assert ahosts[0] == "10.0.0.1" and all(":" not in a for a in ahosts)
    assert n.run(["getent", "hosts", "upstream.test"]).stdout.split()[0] == "192.0.2.10"

    daemon.terminate()
    daemon.wait(10)
    start = time.monotonic()
    after = n.run(["getent", "hosts", "upstream.test"])
    took = time.monotonic() - start
    assert after.stdout.split()[0] == "192.0.2.10"  # the second nameserver takes over
    assert took < 2.0, f"fallback took {took:.2f} s"  # refused port: no resolver timeout
    assert n.run(["getent", "hosts", "login.hotel.example"]).returncode == 2  # override gone
