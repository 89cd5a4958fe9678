"""The README's install command and check on a fresh, minimal Debian 12 with systemd as PID 1.

A new root from `mmdebstrap --variant=important` (no Python, no dig, no polkitd), booted with
systemd-nspawn (tests/platform/fresh_debian.py); this checkout is copied in and
`./scripts/install` runs as the README says, with the network a new machine has. Then the
README's check (`portal add ...`, `getent hosts ...`, `portal status`), D-Bus activation, re-runs
without network (plain and --offline), a taken port and an install without network.

The tests share one container and run in file order: each builds on what the one before left.
`getent` sees the override through the resolver wiring (portal-wire.path puts the stub first in
a resolv.conf written by hand).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.platform.fresh_debian import CHECKOUT, Container, NoNetwork, booted, unavailable_reason

NAME = "test.portal.invalid"
ADDRESS = "192.0.2.1"
# What pip and apt see when there is no network: nothing listens on the proxy's port.
NO_NETWORK = {
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
}

_REASON = unavailable_reason()
pytestmark = [
    pytest.mark.root,
    # Building the root (once), booting and installing take longer than a unit test.
    pytest.mark.timeout(900),
    pytest.mark.skipif(_REASON is not None, reason=f"fresh Debian under nspawn: {_REASON}"),
]


@pytest.fixture(scope="module")
def fresh() -> Iterator[Container]:
    try:
        with booted() as container:
            yield container
    except NoNetwork as exc:
        pytest.skip(f"no network to Debian's mirror: {exc}")


def install(c: Container, *flags: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = c.run(f"{CHECKOUT}/scripts/install {' '.join(flags)}", timeout_s=600, env=env)
    return result.returncode, result.stdout + result.stderr


def last_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_the_root_is_minimal(fresh: Container) -> None:
    # What the README may not count on.
    for tool in ("python3", "dig", "pip", "pip3"):
        assert fresh.run(f"command -v {tool}").returncode != 0, tool
    assert not fresh.run("test -x /usr/lib/polkit-1/polkitd").returncode == 0
    assert fresh.run("getent group netdev").returncode == 0


def test_the_readme_install_command(fresh: Container) -> None:
    rc, out = install(fresh)
    if rc != 0 and any(w in out for w in ("Temporary failure resolving", "Failed to fetch")):
        pytest.skip(f"no network to Debian's mirror or PyPI: {last_error(out)}")
    assert rc == 0, out
    assert "install: done: portal.service runs" in out
    for unit in ("portal.socket", "portal.service"):
        assert fresh.show(unit, "ActiveState") == "active", unit
        assert fresh.run(f"systemctl is-enabled {unit}").stdout.strip() == "enabled"
    # The environment's interpreter is the distribution's, which every user can run.
    venv = fresh.run("cat /opt/portal/pyvenv.cfg").stdout
    assert re.search(r"^home = /usr/bin$", venv, re.M), venv
    listed = fresh.run("portal list", user="nobody")
    assert listed.returncode == 0 and "no overrides" in listed.stdout, listed.stderr
    # No C compiler here: the optional recvmmsg extension was skipped, not an error, and the
    # stub reads and sends in pure Python (test_the_readme_check then gets its answer).
    assert fresh.run("command -v cc || command -v gcc").returncode != 0
    batching = fresh.run(
        "/opt/portal/bin/python -c 'from portal.edges import udp_batch; print(udp_batch.NATIVE)'"
    )
    assert batching.stdout.strip() == "False", batching.stdout + batching.stderr
    # polkitd came with it: the README's password path exists.
    assert fresh.run("test -x /usr/lib/polkit-1/polkitd").returncode == 0
    assert "polkit is not installed" not in out
    # The manual page and completions are where man and bash-completion look.
    for path in ("man/man1/portal.1", "bash-completion/completions/portal"):
        assert fresh.run(f"test -f /usr/local/share/{path}").returncode == 0, path


def test_the_readme_check(fresh: Container) -> None:
    added = fresh.run(f"portal add {NAME} {ADDRESS} --ttl 1m")
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith(f"{NAME} -> {ADDRESS} (expires in ")
    status = fresh.run("portal status")
    assert status.returncode == 0, status.stderr
    assert "DNS stub:   127.0.0.153:53" in status.stdout
    assert NAME in status.stdout
    # The stub answers it (dig is not on the machine; Python's resolver stands in).
    answer = fresh.run(
        "python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        's.settimeout(5); s.sendto(bytes.fromhex("1234010000010000000000000474657374"'
        '"06706f7274616c07696e76616c69640000010001"), ("127.0.0.153", 53)); '
        "print(s.recv(512)[-4:].hex())'"
    )
    assert answer.stdout.strip() == "c0000201", answer.stdout + answer.stderr  # 192.0.2.1


def test_getent_sees_the_override(fresh: Container) -> None:
    # Upstream DNS is a loopback address where nothing listens: before and after the stub,
    # nothing of this lookup leaves the machine.
    fresh.run("cp /etc/resolv.conf /etc/resolv.conf.network")
    try:
        fresh.run("printf 'nameserver 127.0.0.9\\n' > /etc/resolv.conf")
        added = fresh.run(f"portal add {NAME} {ADDRESS} --ttl 1m")
        assert added.returncode == 0, added.stderr
        found = fresh.run(f"getent hosts {NAME}", timeout_s=30)
        assert found.stdout.split() == [ADDRESS, NAME], found.stdout + found.stderr
    finally:
        fresh.run("mv /etc/resolv.conf.network /etc/resolv.conf")


def test_any_cli_call_starts_the_daemon(fresh: Container) -> None:
    # The socket stops too: a DNS query (any lookup on this machine that shares the test's
    # network, while the stub was still in resolv.conf) would start the daemon through it, and
    # this is about D-Bus activation, which must work even then.
    fresh.run("systemctl stop portal.socket portal.service")
    for unit in ("portal.socket", "portal.service"):
        assert fresh.show(unit, "ActiveState") == "inactive", journal(fresh)
    listed = fresh.run("portal list --json", user="nobody", timeout_s=60)
    assert listed.returncode == 0, listed.stderr
    for unit in ("portal.socket", "portal.service"):
        assert fresh.show(unit, "ActiveState") == "active", journal(fresh)


def journal(c: Container) -> str:
    units = "-u portal.socket -u portal.service -u portal-wire.service -u dbus.service"
    return c.run(f"journalctl -b {units} -n 60 --no-pager -o short-precise").stdout


def test_rerun_without_network_plain_and_offline(fresh: Container) -> None:
    pid = fresh.show("portal.service", "MainPID")
    rc, out = install(fresh, env=NO_NETWORK)
    assert rc == 0, out
    rc, out = install(fresh, "--offline", env=NO_NETWORK)
    assert rc == 0, out
    assert "bdist_wheel" not in out
    assert fresh.show("portal.service", "MainPID") not in ("0", pid)
    assert fresh.run("portal status").returncode == 0


def test_a_taken_port_is_named_and_nothing_is_left_enabled(fresh: Container) -> None:
    uninstalled = fresh.run(f"{CHECKOUT}/scripts/uninstall")
    assert uninstalled.returncode == 0, uninstalled.stderr
    # Something else on the stub's address, as a second DNS server would be.
    (fresh.directory / "root/squat.py").write_text(
        "import socket, time\n"
        "sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "sock.bind(('127.0.0.153', 53))\n"
        "time.sleep(300)\n"
    )
    started = fresh.run("systemd-run --unit=squatter --quiet python3 /root/squat.py")
    assert started.returncode == 0, started.stderr
    try:
        bound = fresh.run(
            "for i in $(seq 100); do ss -Hlun | grep -q 127.0.0.153:53 && exit 0; sleep 0.1; done;"
            " exit 1"
        )
        assert bound.returncode == 0, "the squatter did not bind"
        rc, out = install(fresh)
        assert rc == 1, out
        error = last_error(out)
        assert error.startswith("install: error: 127.0.0.153:53 is taken by python3"), out
        assert "udp" in error
        for unit in ("portal.socket", "portal.service"):
            assert fresh.run(f"systemctl is-enabled {unit}").stdout.strip() != "enabled", unit
            assert fresh.show(unit, "ActiveState") != "failed", unit
    finally:
        fresh.run("systemctl stop squatter")


def test_an_install_without_network_ends_in_one_clear_line(fresh: Container) -> None:
    # The environment went with the uninstall: pip needs the network now and cannot have it.
    assert fresh.run("test -e /opt/portal").returncode != 0
    rc, out = install(fresh, env=NO_NETWORK)
    assert rc == 1, out
    error = last_error(out)
    assert error.startswith("install: error: pip could not"), out
    assert "no network?" in error and "Traceback" not in out
    assert fresh.run("systemctl is-enabled portal.socket").stdout.strip() != "enabled"
