"""The daemon's first step (portal/early.py): the stub answers before asyncio or the rest of the
daemon is imported, with the overrides and the last network a restart must keep, and the daemon
takes the same stub, table and network over without a gap or a changed answer.

Real sockets on loopback, a real state directory, a scripted upstream; the first part runs in a
fresh interpreter, where what is imported can be seen.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from portal.config import Config
from portal.core.model import Network, Source, Upstream
from portal.core.overrides import OverrideTable
from portal.daemon import build
from portal.early import Early, serve
from portal.edges.store import Store, state_path
from tests.support.dns import FakeUpstream, answer_a, fake_upstream, tcp_exchange, udp_exchange
from tests.support.procs import free_port

REPO = Path(__file__).resolve().parents[2]
HOTEL = Network(id="uuid-hotel", name="Hotel", interface="wlan0")


def ask(port: int, name: str, *, tcp: bool = False) -> list[str]:
    query = dns.message.make_query(name, "A").to_wire()
    if tcp:
        raw = tcp_exchange(("127.0.0.1", port), query)
        assert raw is not None
    else:
        [raw] = udp_exchange(("127.0.0.1", port), query)
    reply = dns.message.from_wire(raw)
    assert reply.rcode() == dns.rcode.NOERROR, reply
    return [rr.to_text() for rrset in reply.answer for rr in rrset]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with fake_upstream(lambda q: [(0.0, answer_a(q, "192.0.2.20"))]) as up:
        yield up


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """Overrides of a daemon that ran on the hotel network: one for any network, one scoped to
    the hotel, one scoped elsewhere; and the hotel as the last network."""
    table = OverrideTable()
    now = time.time()
    for name, ip, scope in (
        ("anywhere.test", "10.0.0.1", None),
        ("intranet.test", "10.0.0.2", "uuid-hotel"),
        ("elsewhere.test", "10.0.0.3", "uuid-cafe"),
    ):
        table.put(table.prepare(name, [ip], ttl_s=None, now=now, scope=scope, source=Source.USER))
    store = Store(tmp_path / "state")
    store.save(table)
    store.save_network(HOTEL)
    return tmp_path / "state"


def stop(early: Early) -> None:
    """What the daemon's close does, without a loop: the thread, then what it owned."""
    early.stub.reactor.stop()
    early.stub.forwarder.close()
    for s in early.stub.sockets:
        s.close()


def config_for(port: int, state_dir: Path, upstream: FakeUpstream) -> Config:
    return Config(
        listen=(f"127.0.0.1:{port}",),
        upstreams=(Upstream(upstream.host, upstream.port),),
        state_dir=str(state_dir),
        network_source="none",
        wiring="none",
    )


def test_answers_and_forwards_before_asyncio_is_imported(
    state_dir: Path, upstream: FakeUpstream
) -> None:
    port = free_port()
    code = textwrap.dedent(
        f"""
        import json, sys
        from portal.cli import import_dataclasses, import_logging
        import_dataclasses()  # as `portal daemon` does
        import_logging()
        from portal.config import Config
        from portal.core.model import Upstream
        from portal.early import Early, serve

        early = serve(Config(listen=("127.0.0.1:{port}",), state_dir={str(state_dir)!r},
                             upstreams=(Upstream({upstream.host!r}, {upstream.port}),)))
        print(json.dumps(sorted(m for m in ("asyncio", "portal.daemon", "portal.core.session",
                                            "dbus_next", "inspect", "traceback", "pathlib")
                                if m in sys.modules)),
              flush=True)
        sys.stdin.readline()  # until the test has asked its questions
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with subprocess.Popen(
        # -S: no site step, whose hooks (an editable install's finder) import pathlib in a
        # checkout; an installed portal's start has none, and early needs nothing of site's
        [sys.executable, "-S", "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdin is not None
            line = proc.stdout.readline()
            if line.strip() != "[]":
                proc.kill()
                _, err = proc.communicate(timeout=10)
                raise AssertionError(f"imported before the first answer: {line}{err}")
            # the DNS thread answers: overrides for any network and for the last network ...
            assert ask(port, "anywhere.test") == ["10.0.0.1"]
            assert ask(port, "intranet.test") == ["10.0.0.2"]
            # ... not those of another network, which go upstream like every other name
            assert ask(port, "elsewhere.test") == ["192.0.2.20"]
            assert ask(port, "www.example.test") == ["192.0.2.20"]
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


async def test_the_daemon_takes_over_without_a_changed_answer(
    state_dir: Path, upstream: FakeUpstream
) -> None:
    port = free_port()
    config = config_for(port, state_dir, upstream)
    early = serve(config)
    loop = asyncio.get_running_loop()
    before = await loop.run_in_executor(None, ask, port, "intranet.test")
    assert before == ["10.0.0.2"]
    daemon = build(config, early)
    assert daemon.stub is early.stub
    # what the first step read is what the daemon loads: the state file is not read again
    await asyncio.to_thread(Path(state_path(state_dir)).write_text, "not the state any more")
    task = asyncio.create_task(daemon.run())
    try:
        deadline = time.monotonic() + 10
        while daemon.control is None and not daemon.stub.reactor.main_loop:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        for name, want in (
            ("anywhere.test", ["10.0.0.1"]),
            ("intranet.test", ["10.0.0.2"]),  # the last network, assumed by the daemon too
            ("elsewhere.test", ["192.0.2.20"]),
        ):
            assert await loop.run_in_executor(None, ask, port, name) == want
        # TCP is served once the loop runs
        assert await loop.run_in_executor(None, lambda: ask(port, "anywhere.test", tcp=True)) == [
            "10.0.0.1"
        ]
        assert daemon.status().network_id == "uuid-hotel"
        assert {o.name for o in daemon.overrides()} == {
            "anywhere.test",
            "intranet.test",
            "elsewhere.test",
        }
    finally:
        daemon.stop()
        assert await asyncio.wait_for(task, 10) == 0


def test_a_corrupt_state_file_is_moved_aside_and_nothing_answers_from_it(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    Path(state_path(state_dir)).write_text('{"version": 1, "overrides": [{"name": 5}]}')
    port = free_port()
    early = serve(config_for(port, state_dir, upstream))
    try:
        assert ask(port, "anywhere.test") == ["192.0.2.20"]
        assert [p.name for p in state_dir.iterdir() if ".corrupt-" in p.name]
    finally:
        stop(early)


def test_an_address_in_use_is_one_clear_error(tmp_path: Path, upstream: FakeUpstream) -> None:
    port = free_port()
    first = serve(config_for(port, tmp_path / "a", upstream))
    try:
        with pytest.raises(Exception, match=f"cannot listen on 127.0.0.1:{port}"):
            serve(config_for(port, tmp_path / "b", upstream))
    finally:
        stop(first)
