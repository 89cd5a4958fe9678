"""Not an open resolver: the stub answers loopback clients only, even when it is bound to a
wider address by mistake.

Two network namespaces joined by a veth pair. The real daemon listens on 0.0.0.0 (or on the
veth address) in one; a client in the other queries it over UDP and TCP and must get REFUSED
(UDP, no bigger than its query) or a closed connection (TCP) — never an answer, never a
forwarded query. Loopback clients next to the daemon are still served. Needs root.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import run_cli
from tests.support.dbus import PrivateBus, private_bus
from tests.support.procs import PORTAL, REPO, need, stop_pid, wait_for
from tests.support.system import Netns

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: network namespaces and a veth pair"
)

PORT = 5353  # namespace-private: no clash with anything on the host
SERVER, CLIENT = "10.213.0.1", "10.213.0.2"

# Run inside the client namespace: UDP and TCP queries, results as JSON on stdout.
PROBE = r"""
import json, socket, struct, sys
import dns.message, dns.rcode
host, port = sys.argv[1], int(sys.argv[2])
out = {}
for name, rdtype in (("login.hotel.example", "A"), ("upstream.test", "A"), ("big.test", "ANY")):
    q = dns.message.make_query(name, rdtype, use_edns=0, payload=4096)
    wire = q.to_wire()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(wire, (host, port))
    try:
        reply = s.recv(65535)
        m = dns.message.from_wire(reply)
        udp = {"rcode": dns.rcode.to_text(m.rcode()), "answers": len(m.answer),
               "reply_len": len(reply), "query_len": len(wire)}
    except socket.timeout:
        udp = {"rcode": "timeout"}
    s.close()
    try:
        t = socket.create_connection((host, port), timeout=3)
        t.sendall(struct.pack("!H", len(wire)) + wire)
        data = t.recv(65535)
        tcp = {"bytes": len(data)}
        t.close()
    except OSError as exc:
        tcp = {"error": type(exc).__name__}
    out[name] = {"udp": udp, "tcp": tcp}
print(json.dumps(out))
"""


class Pair:
    def __init__(self) -> None:
        self.server = Netns()
        self.client = Netns()
        tag = secrets.token_hex(3)
        self.a, self.b = f"pra{tag}", f"prb{tag}"
        subprocess.run(
            ["ip", "link", "add", self.a, "netns", str(self.server.pid), "type", "veth",
             "peer", "name", self.b, "netns", str(self.client.pid)],
            check=True, capture_output=True,
        )  # fmt: skip
        self.server.run(["ip", "addr", "add", f"{SERVER}/24", "dev", self.a], check=True)
        self.server.run(["ip", "link", "set", self.a, "up"], check=True)
        self.client.run(["ip", "addr", "add", f"{CLIENT}/24", "dev", self.b], check=True)
        self.client.run(["ip", "link", "set", self.b, "up"], check=True)

    def close(self) -> None:
        for ns in (self.client, self.server):
            for proc in reversed(ns.procs):
                stop_pid(proc)
            # the holder (unshare --fork) outlives SIGTERM for its whole 5 s grace period; its
            # child going away ends it at once (--kill-child), so end the child by its PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(ns.pid, signal.SIGKILL)
            ns.close()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Pair, PrivateBus, Path]]:
    need("ip", "unshare", "nsenter", "dnsmasq", "dig", "dbus-daemon")
    p = Pair()
    try:
        log = tmp_path / "upstream.log"
        p.server.popen(
            ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
             "--listen-address=127.0.0.77", "--bind-interfaces", "--user=root", "--pid-file=",
             f"--log-facility={log}", "--log-queries", "--address=/upstream.test/192.0.2.10",
             "--address=/big.test/192.0.2.11"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        with private_bus() as bus:
            yield p, bus, tmp_path
    finally:
        p.close()


def start_daemon(p: Pair, bus: PrivateBus, tmp: Path, listen: str) -> None:
    log = open(tmp / "daemon.log", "ab")  # noqa: SIM115 - handed to the process
    p.server.popen(
        ["env", f"PYTHONPATH={REPO}", *PORTAL, "daemon", "--bus", bus.address,
         "--listen", listen, "--upstream", "127.0.0.77", "--state-dir", str(tmp / "state"),
         "--config", "/dev/null", "--log-level", "debug",
         # loopback and veth only: no probing, no resolver changes
         "--network-source", "none", "--wiring", "none"],
        stdout=log, stderr=log,
    )  # fmt: skip
    log.close()
    assert wait_for(lambda: run_cli("list", bus=bus.address).returncode == 0, 20, 0.2), (
        tmp / "daemon.log"
    ).read_text()


def probe(ns: Netns, host: str) -> dict[str, dict[str, dict[str, object]]]:
    out = ns.run(
        ["env", f"PYTHONPATH={REPO}", sys.executable, "-c", PROBE, host, str(PORT)], timeout=60
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, dict[str, dict[str, object]]] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("listen", ["0.0.0.0", SERVER])
def test_non_loopback_clients_are_refused(pair: tuple[Pair, PrivateBus, Path], listen: str) -> None:
    p, bus, tmp = pair
    start_daemon(p, bus, tmp, f"{listen}:{PORT}")
    assert run_cli("add", "login.hotel.example", "10.0.0.1", bus=bus.address).returncode == 0
    # the client across the veth: REFUSED, never an answer, never amplified; TCP closed
    remote = probe(p.client, SERVER)
    for name, r in remote.items():
        udp, tcp = r["udp"], r["tcp"]
        assert udp["rcode"] == "REFUSED" and udp["answers"] == 0, (name, udp)
        assert isinstance(udp["reply_len"], int) and isinstance(udp["query_len"], int)
        assert udp["reply_len"] <= udp["query_len"], (name, udp)
        assert tcp in ({"bytes": 0}, {"error": "ConnectionResetError"}), (name, tcp)
    # a process next to the daemon using the non-loopback address is refused as well
    assert probe(p.server, SERVER)["login.hotel.example"]["udp"]["rcode"] == "REFUSED"
    # nothing was forwarded for them
    log = (tmp / "upstream.log").read_text() if (tmp / "upstream.log").exists() else ""
    assert "upstream.test" not in log and "big.test" not in log
    # loopback clients are served (when the stub listens there at all)
    if listen == "0.0.0.0":
        local = probe(p.server, "127.0.0.1")
        assert local["login.hotel.example"]["udp"] == {
            "rcode": "NOERROR",
            "answers": 1,
            "reply_len": local["login.hotel.example"]["udp"]["reply_len"],
            "query_len": local["login.hotel.example"]["udp"]["query_len"],
        }
        assert local["upstream.test"]["udp"]["rcode"] == "NOERROR"
        assert "upstream.test" in (tmp / "upstream.log").read_text()
        assert int(str(local["login.hotel.example"]["tcp"]["bytes"])) > 0
    daemon_log = (tmp / "daemon.log").read_text()
    assert "from non-loopback 10.213.0.2, refusing" in daemon_log
    assert "internal error" not in daemon_log
