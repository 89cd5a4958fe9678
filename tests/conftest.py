"""Fixtures shared by the whole suite. Helpers live in tests/helpers.py."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, Daemon, Dnsmasq, PrivateBus, dnsmasq, free_port, private_bus

UPSTREAM_RECORDS = {"upstream.test": "192.0.2.10", "www.example.test": "192.0.2.20"}


def need(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/install-test-deps installs it)")


@pytest.fixture
def bus() -> Iterator[PrivateBus]:
    need("dbus-daemon")
    with private_bus() as b:
        yield b


@pytest.fixture
def upstream() -> Iterator[Dnsmasq]:
    need("dnsmasq")
    with dnsmasq(UPSTREAM_RECORDS) as d:
        yield d


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(
        bus: str,
        *,
        upstreams: list[str] | None = None,
        extra_args: list[str] | None = None,
        state_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        start: bool = True,
        env: dict[str, str] | None = None,
    ) -> Daemon:
        port = port or free_port(host)
        state = state_dir or tmp_path / f"state-{len(made)}"
        args = [
            "daemon",
            "--bus",
            bus,
            "--listen",
            f"{host}:{port}",
            "--state-dir",
            str(state),
            "--log-level",
            "debug",
            "--config",
            str(tmp_path / "none.toml"),
            # No detection and no resolver wiring unless a test asks for them (extra_args come
            # later and win): the test machine's own network must never be probed, nor its
            # resolver touched.
            "--network-source",
            "none",
            "--wiring",
            "none",
        ]
        (tmp_path / "none.toml").touch()
        for u in upstreams or []:
            args += ["--upstream", u]
        args += extra_args or []
        full_env = dict(os.environ, PYTHONPATH=str(REPO))
        full_env.pop("PORTAL_BUS", None)
        full_env.update(env or {})
        d = Daemon(
            bus=bus,
            host=host,
            port=port,
            state_dir=state,
            args=args,
            log_path=tmp_path / f"daemon-{len(made)}.log",
            env=full_env,
        )
        made.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in made:
        d.stop()


@pytest.fixture
def daemon(bus: PrivateBus, upstream: Dnsmasq, make_daemon: Callable[..., Daemon]) -> Daemon:
    """The real daemon on a private bus, forwarding to a real dnsmasq."""
    return make_daemon(bus.address, upstreams=[upstream.upstream])
