"""The CLI's light client (portal.edges.sync_client) against a real dbus-daemon and the real
daemon, held against the dbus-next client it stands in for.

Every call is made through both clients: the values, and the errors (class and message), must be
the same. Then the addresses it reads (unix:path with escapes, unix:abstract, lists, system and
session from the environment, $PORTAL_BUS), the flag polkit needs on the wire (seen by a real
dbus-monitor), the fallback to dbus-next for other transports, and a hostile peer on the
socket: a one-line portal error every time, never a traceback or a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_next import Message as NextMessage
from dbus_next import MessageType

from portal.core import dbus_message as dm
from portal.edges import control_api
from portal.edges.client import Client
from portal.edges.sync_client import (
    DbusNextClient,
    SyncClient,
    unix_socket_addresses,
)
from portal.errors import DaemonUnreachable, PortalError
from tests.conftest import need
from tests.support.daemon import Daemon, run_cli
from tests.support.dbus import BUS_CONFIG, PrivateBus
from tests.support.procs import stop_pid, wait_for

WAIT_S = 10.0

# -- the two clients side by side ----------------------------------------------------------------


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except PortalError as exc:
        return type(exc).__name__, str(exc)


def via_dbus_next(choice: str, member: str, sig: str, body: list[Any]) -> tuple[str, Any]:
    async def run() -> Any:
        client = await Client.open(choice)
        try:
            return await client.call(member, sig, body)
        finally:
            await client.aclose()

    result = outcome(lambda: asyncio.run(run()))
    # dbus-next 0.2.3 opens its socket in MessageBus() and leaves it open when that constructor
    # fails to connect, before portal.edges.bus can close it: collect it here, quietly, so the
    # warning does not land on another test (the CLI is a process that exits anyway).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    return result


def via_sync(choice: str, member: str, sig: str, body: list[Any]) -> tuple[str, Any]:
    def run() -> Any:
        client = SyncClient.open(choice)
        assert client is not None
        try:
            return client.call(member, sig, body)
        finally:
            client.close()

    return outcome(run)


def comparable(result: tuple[str, Any]) -> tuple[str, Any]:
    """Who made an override (uid and pid of the connection) differs between two connections."""
    kind, value = result
    if kind == "ok" and value and isinstance(value[0], dict) and "created_by" in value[0]:
        value = [{k: v for k, v in value[0].items() if k != "created_by"}] + value[1:]
    return kind, value


CALLS: list[tuple[str, str, list[Any]]] = [
    ("ListOverrides", "", []),
    ("GetStatus", "", []),
    ("AddOverride", "sastb", ["same.example", ["10.0.0.1", "fd00::1"], 2**64 - 1, True]),
    ("ListOverrides", "", []),
    ("AddOverride", "sastb", ["bad..example", ["10.0.0.1"], 0, True]),
    ("AddOverride", "sastb", ["ok.example", ["999.0.0.1"], 0, True]),
    ("AddOverride", "sastb", ["ok.example", ["10.0.0.1"], 10**12, False]),
    ("AddOverride", "s", ["ok.example"]),  # the wrong signature: the daemon refuses it
    ("RemoveOverride", "s", ["absent.example"]),
    ("ImportOverrides", "a(sas)tb", [[["i.example", ["10.0.0.2"]], ["j.example", []]], 0, True]),
    ("ImportOverrides", "a(sas)tb", [[["x.example", ["10.0.0.1"]]] * 2000, 0, False]),
    ("NoSuchMethod", "", []),
]


def test_every_call_answers_as_through_dbus_next(daemon: Daemon) -> None:
    for member, sig, body in CALLS:
        theirs = comparable(via_dbus_next(daemon.bus, member, sig, body))
        ours = comparable(via_sync(daemon.bus, member, sig, body))
        assert ours == theirs, (member, body)
    # and the errors are the ones the CLI has always shown
    assert via_sync(daemon.bus, "RemoveOverride", "s", ["absent.example"])[0] == "NoSuchOverride"
    assert via_sync(daemon.bus, "NoSuchMethod", "", [])[1].startswith("NoSuchMethod failed: ")


def test_unreachable_daemon_and_bus_say_the_same(bus: PrivateBus, tmp_path: Path) -> None:
    cases = [
        bus.address,  # a bus without the daemon: ServiceUnknown
        f"unix:path={tmp_path}/nothing",  # no socket
    ]
    for choice in cases:
        theirs = via_dbus_next(choice, "ListOverrides", "", [])
        assert theirs[0] == "DaemonUnreachable"
        assert via_sync(choice, "ListOverrides", "", []) == theirs


def test_system_and_session_come_from_the_environment(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", daemon.bus)
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", daemon.bus)
    for choice in ("system", "session"):
        assert via_sync(choice, "ListOverrides", "", []) == ("ok", [[]])
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/none")
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS")
    for choice in ("system", "session"):
        theirs = via_dbus_next(choice, "ListOverrides", "", [])
        assert theirs[0] == "DaemonUnreachable"
        assert via_sync(choice, "ListOverrides", "", []) == theirs


ERROR_NAMES = [control_api.ERROR_PREFIX + n for n in [*control_api.ERRORS, "Failed", "New"]] + [
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.Spawn.ChildExited",
    "org.freedesktop.systemd1.NoSuchUnit",
    "org.freedesktop.DBus.Error.AccessDenied",
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
    "org.freedesktop.DBus.Error.UnknownMethod",
    "org.example.Other",
]


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_every_error_reply_is_translated_as_by_the_dbus_next_client(name: str) -> None:
    """Error replies the daemon or the bus might send, through both translations (the dbus-next
    client's is inline in Client.call: it gets the reply from a stand-in for its bus)."""

    class Bus:
        async def call(self, msg: Any) -> NextMessage:
            return NextMessage(
                message_type=MessageType.ERROR,
                error_name=name,
                reply_serial=1,
                signature="s",
                body=["what went wrong"],
            )

    async def theirs() -> Any:
        return await Client(Bus(), "system").call("AddOverride")  # type: ignore[arg-type]

    want = outcome(lambda: asyncio.run(theirs()))
    error = control_api.error_from_reply("AddOverride", name, "what went wrong", "system")
    assert (type(error).__name__, str(error)) == want


# -- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "targets"),
    [
        ("unix:path=/run/dbus/system_bus_socket", ["/run/dbus/system_bus_socket"]),
        ("unix:path=/tmp/a%20b/bus,guid=0123abcd", ["/tmp/a b/bus"]),
        ("unix:abstract=/tmp/dbus-XYZ", ["\0/tmp/dbus-XYZ"]),
        ("unix:path=/a;unix:abstract=b;", ["/a", "\0b"]),
        ("unix:path=/caf%c3%a9", ["/café"]),
        ("tcp:host=127.0.0.1,port=4000", None),  # dbus-next's to read
        ("unix:path=/a;tcp:host=x,port=1", None),
        ("unix:tmpdir=/tmp", None),  # a listening address
        ("unix:path=/a b", None),  # unescaped space: dbus-next explains
        ("unix:path=/a%2", None),
        ("unix:path=/a%zz", None),
        ("unix:path=/a%ff", None),  # not UTF-8
        ("unix:path", None),
        ("unix", None),
        ("", None),
        (";", None),
    ],
)
def test_unix_socket_addresses(address: str, targets: list[str] | None) -> None:
    assert unix_socket_addresses(address) == targets


@contextlib.contextmanager
def bus_listening(listen: list[str], directory: Path) -> Iterator[subprocess.Popen[bytes]]:
    conf = directory / "bus.conf"
    elements = "".join(f"<listen>{address}</listen>" for address in listen)
    conf.write_text(BUS_CONFIG.format(kind="system", socket="unused", extra="").replace(
        "<listen>unix:path=unused</listen>", elements
    ))  # fmt: skip
    proc = subprocess.Popen(
        ["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile", "--print-address"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip(), "dbus-daemon did not start"
        yield proc
    finally:
        stop_pid(proc)


def test_escaped_and_abstract_addresses_and_lists_reach_the_daemon(
    make_daemon: Callable[..., Daemon], upstream: object
) -> None:
    need("dbus-daemon")
    with tempfile.TemporaryDirectory(prefix="portal bus ") as tmp:
        directory = Path(tmp)
        name = f"portal-test-{os.getpid()}-{time.monotonic_ns()}"
        escaped_dir = str(directory).replace(" ", "%20")
        listen = [f"unix:abstract={name}", f"unix:path={escaped_dir}/bus"]
        with bus_listening(listen, directory):
            assert wait_for((directory / "bus").exists, WAIT_S)
            d = make_daemon(f"unix:abstract={name}")
            d.cli("add", "seen.example", "10.0.0.3", "--any-network")
            for address in (
                f"unix:abstract={name}",
                f"unix:path={escaped_dir}/bus",
                f"unix:path={escaped_dir}/absent;unix:path={escaped_dir}/bus",
            ):
                out = run_cli("list", "--json", bus=address)
                assert out.returncode == 0, (address, out.stderr)
                assert '"seen.example"' in out.stdout


def test_other_transports_go_through_dbus_next(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    address = f"tcp:host=127.0.0.1,port={port}"
    assert SyncClient.open(address) is None
    out = run_cli("list", bus=address)
    assert out.returncode == 1
    assert out.stderr == (
        f"portal: error: cannot connect to the bus at {address}: Connection refused\n"
    )
    assert len(out.stderr.splitlines()) == 1


def test_the_fallback_client_calls_the_daemon(daemon: Daemon) -> None:
    client = DbusNextClient(daemon.bus)
    try:
        assert client.call("ListOverrides") == [[]]
    finally:
        client.close()


# -- the real CLI on the wire --------------------------------------------------------------------


def test_the_cli_asks_for_interactive_authorization_on_the_wire(daemon: Daemon) -> None:
    """What a real dbus-monitor sees: the CLI's calls carry ALLOW_INTERACTIVE_AUTHORIZATION, so
    the daemon lets polkit ask for a password (docs/dbus-api.md, Authorisation)."""
    need("dbus-monitor")
    monitor = subprocess.Popen(
        ["dbus-monitor", "--address", daemon.bus, "--binary"]
        + [f"type='method_call',interface='{control_api.INTERFACE}'"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)  # dbus-monitor has no "ready" line; a missed call fails the test
        assert daemon.cli("add", "flag.example", "10.0.0.9").returncode == 0
        assert daemon.cli("list").returncode == 0
        time.sleep(0.3)
        monitor.terminate()
        data = monitor_output(monitor)
    finally:
        stop_pid(monitor)
    calls = {}
    while data:
        size = dm.message_length(data[:16])
        msg = dm.decode_message(data[:size])
        data = data[size:]
        if msg.type == dm.METHOD_CALL and msg.interface == control_api.INTERFACE:
            calls[msg.member] = msg.flags
    assert calls == {
        "AddOverride": dm.ALLOW_INTERACTIVE_AUTHORIZATION,
        "ListOverrides": dm.ALLOW_INTERACTIVE_AUTHORIZATION,
    }


def monitor_output(proc: subprocess.Popen[bytes]) -> bytes:
    """dbus-monitor --binary writes the messages it sees one after the other, as on the wire."""
    assert proc.stdout is not None
    return proc.stdout.read()


# -- a hostile peer ------------------------------------------------------------------------------


class Peer:
    """A Unix socket server that answers one connection with `script(conn, received)`."""

    def __init__(self, directory: Path, script: Callable[[socket.socket, bytearray], None]):
        self.path = directory / f"peer-{time.monotonic_ns()}"
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.path))
        self.server.listen(1)
        self.server.settimeout(WAIT_S)
        self.received = bytearray()
        self.thread = threading.Thread(target=self._serve, args=(script,), daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"unix:path={self.path}"

    def _serve(self, script: Callable[[socket.socket, bytearray], None]) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(WAIT_S)
            with contextlib.suppress(OSError):
                script(conn, self.received)

    def close(self) -> None:
        self.server.close()
        self.thread.join(WAIT_S)


def read_until(conn: socket.socket, received: bytearray, marker: bytes) -> None:
    while marker not in received:
        chunk = conn.recv(65536)
        if not chunk:
            return
        received += chunk


def hello_reply(serial: int = 1) -> bytes:
    return dm.encode_message(
        dm.Message(
            type=dm.METHOD_RETURN, serial=serial, reply_serial=1, signature="s", body=[":1.9"]
        )
    )


def reply_to_call(body_sig: str, body: list[Any], *, error: str = "") -> bytes:
    return dm.encode_message(
        dm.Message(
            type=dm.ERROR if error else dm.METHOD_RETURN,
            serial=3,
            reply_serial=2,
            error_name=error,
            signature=body_sig,
            body=body,
        )
    )


def script_ok(conn: socket.socket, received: bytearray) -> None:
    read_until(conn, received, b"BEGIN\r\n")
    signal = dm.encode_message(
        dm.Message(type=dm.SIGNAL, serial=2, path="/org/freedesktop/DBus",
                   interface="org.freedesktop.DBus", member="NameAcquired", signature="s",
                   body=[":1.9"])
    )  # fmt: skip
    # the answers in small pieces, a signal between them
    for chunk in (b"OK 0123456789abcdef0123456789abcdef\r\n", hello_reply(), signal):
        for i in range(0, len(chunk), 7):
            conn.sendall(chunk[i : i + 7])
    conn.sendall(reply_to_call("aa{sv}", [[{"name": dm.Variant("s", "x.example")}]]))
    time.sleep(0.5)


def test_a_slow_fragmented_peer_is_read_right(tmp_path: Path) -> None:
    peer = Peer(tmp_path, script_ok)
    try:
        client = SyncClient.open(peer.address)
        assert client is not None
        assert client.call("ListOverrides") == [[{"name": "x.example"}]]
        client.close()
    finally:
        peer.close()
    # what went out: the SASL exchange, Hello and the call, in one go
    sent = bytes(peer.received)
    assert sent.startswith(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
    rest = sent.split(b"BEGIN\r\n", 1)[1]
    hello = dm.decode_message(rest[: dm.message_length(rest[:16])])
    assert (hello.member, hello.serial, hello.flags) == ("Hello", 1, 0)


def refusing(conn: socket.socket, received: bytearray) -> None:
    read_until(conn, received, b"\r\n")
    conn.sendall(b"REJECTED EXTERNAL\r\n")


def closing(conn: socket.socket, received: bytearray) -> None:
    read_until(conn, received, b"\r\n")


def silent_after_hello(conn: socket.socket, received: bytearray) -> None:
    read_until(conn, received, b"BEGIN\r\n")
    conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n" + hello_reply())
    time.sleep(3)


def silent_before_hello(conn: socket.socket, received: bytearray) -> None:
    read_until(conn, received, b"BEGIN\r\n")
    conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
    time.sleep(3)


def closing_after_hello(conn: socket.socket, received: bytearray) -> None:
    read_until(conn, received, b"BEGIN\r\n")
    conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n" + hello_reply())


def garbage_after_auth(conn: socket.socket, received: bytearray) -> None:
    read_until(conn, received, b"BEGIN\r\n")
    conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n" + b"X" * 64)
    time.sleep(1)


def huge_message(conn: socket.socket, received: bytearray) -> None:
    read_until(conn, received, b"BEGIN\r\n")
    head = b"l\x02\x00\x01" + (2**27).to_bytes(4, "little") + b"\x01\x00\x00\x00" + bytes(4)
    conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n" + head)
    time.sleep(1)


def endless_auth_line(conn: socket.socket, received: bytearray) -> None:
    read_until(conn, received, b"\r\n")
    with contextlib.suppress(OSError):
        for _ in range(64):
            conn.sendall(b"A" * 1024)
    time.sleep(1)


def hello_refused(conn: socket.socket, received: bytearray) -> None:
    read_until(conn, received, b"BEGIN\r\n")
    refusal = dm.Message(
        type=dm.ERROR, serial=1, reply_serial=1,
        error_name="org.freedesktop.DBus.Error.LimitsExceeded", signature="s",
        body=["The maximum number of active connections has been reached"],
    )  # fmt: skip
    conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n" + dm.encode_message(refusal))
    time.sleep(1)


def access_denied(conn: socket.socket, received: bytearray) -> None:
    read_until(conn, received, b"BEGIN\r\n")
    conn.sendall(
        b"OK 0123456789abcdef0123456789abcdef\r\n"
        + hello_reply()
        + reply_to_call(
            "s", ["Rejected send message"], error="org.freedesktop.DBus.Error.AccessDenied"
        )
    )
    time.sleep(1)


HOSTILE = [
    ("refused", refusing, DaemonUnreachable, "cannot connect to the bus at .*: authentication "
     "failed: REJECTED: \\['EXTERNAL'\\]"),
    ("closed-during-auth", closing, DaemonUnreachable, "the bus closed the connection"),
    ("silent", silent_after_hello, DaemonUnreachable, "did not answer ListOverrides within 1 s"),
    ("no-hello", silent_before_hello, DaemonUnreachable, "cannot connect to .*: timed out"),
    ("closed-during-call", closing_after_hello, DaemonUnreachable,
     "lost the connection to the bus at .* during ListOverrides"),
    ("garbage", garbage_after_auth, PortalError, "unreadable message from the bus at .*"),
    ("huge", huge_message, PortalError, "unreadable message .*128 MiB"),
    ("endless-auth-line", endless_auth_line, DaemonUnreachable, "authentication line is too long"),
    ("hello-refused", hello_refused, DaemonUnreachable,
     "cannot connect to the bus at .*: The maximum number of active connections"),
    ("access-denied", access_denied, PortalError, "not authorised: Rejected send message"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("script", "error", "message"), [pytest.param(s, e, m, id=i) for i, s, e, m in HOSTILE]
)
def test_a_hostile_peer_gets_a_one_line_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    script: Callable[[socket.socket, bytearray], None],
    error: type[Exception],
    message: str,
) -> None:
    monkeypatch.setattr("portal.edges.sync_client.CALL_TIMEOUT_S", 1.0)
    peer = Peer(tmp_path, script)
    try:
        client = SyncClient.open(peer.address)
        assert client is not None
        t0 = time.monotonic()
        with pytest.raises(error, match=message) as caught:
            client.call("ListOverrides")
        assert time.monotonic() - t0 < 5
        assert "\n" not in str(caught.value)
        client.close()
    finally:
        peer.close()


def test_the_cli_prints_the_error_and_exits_1(tmp_path: Path) -> None:
    peer = Peer(tmp_path, refusing)
    try:
        out = run_cli("list", bus=peer.address)
    finally:
        peer.close()
    assert out.returncode == 1
    assert out.stderr == (
        f"portal: error: cannot connect to the bus at {peer.address}: authentication failed: "
        "REJECTED: ['EXTERNAL']\n"
    )


# -- what the light path costs -------------------------------------------------------------------


def test_one_shot_commands_load_neither_asyncio_nor_dbus_next(daemon: Daemon) -> None:
    """The point of the light client: `portal list` and friends never import them (the timing
    itself is bench/run's to measure), nor inspect (dataclasses' import of it is put off: see
    cli.import_dataclasses), shutil (argparse's help formatter's) or typing (TYPE_CHECKING is
    their own constant)."""
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['portal'] + sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_module('portal', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "heavy = sorted(m for m in ('asyncio', 'dbus_next', 'ssl', 'inspect', 'shutil', 'typing')\n"
        "                if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    env["PORTAL_BUS"] = daemon.bus
    # (check fails here, with no network to probe: its error path must stay light too)
    for args in (["list"], ["status"], ["add", "light.example", "10.0.0.4"], ["check"]):
        out = subprocess.run(
            [sys.executable, "-c", probe, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            cwd="/",
        )
        assert "HEAVY []" in out.stderr, (args, out.stderr)
