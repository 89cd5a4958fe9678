"""Probe rounds in a short-lived child process.

The daemon lives for weeks and probes for a second now and then. httpx and its TLS stack take
about 10 MiB once imported, and an interpreter never gives imported modules back; so the daemon
starts `python3 -m portal.edges.probe_child` for each probe round, sends it one JSON request on
stdin, reads one JSON answer from stdout, and the memory goes with the child. The child costs
about a fifth of a second to start, which is inside every detection target (see
docs/benchmarks.md). Lookups through the venue's DNS (pinning a portal's names, `portal add
NAME`) need no HTTP and stay in the daemon: portal.edges.venue_dns.

The child does exactly what portal.edges.http_probe does in-process; this module only carries
the request and the result across, with the core's dataclasses encoded as JSON objects. It
inherits the daemon's sandbox, user and capabilities (to bind to the venue's interface), and
its log lines go to the daemon's stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import Any

from portal.core.model import Network
from portal.core.probe_model import (
    CaptiveApi,
    ProbeFinished,
    ProbeResponse,
    ProbeSpec,
    failed_round,
)

log = logging.getLogger("portal.probe")

START_ALLOWANCE_S = 10.0  # on top of the probe's own timeout: interpreter start and imports
MAX_ANSWER = 4 << 20  # bytes read from the child at most (bodies are capped far below)
PYTHON = sys.executable


class ChildFailed(Exception):
    """The child died, timed out or answered something unreadable."""


# --- the daemon's side --------------------------------------------------------------------------


async def probe_network_in_child(
    network: Network,
    specs: Sequence[ProbeSpec],
    *,
    probe_id: int,
    timeout_s: float,
    ca_file: str | None = None,
) -> ProbeFinished:
    """The daemon's probe round: http_probe.probe_network() (the in-process round, which only
    the child runs) in a child process. Never raises for the child's sake:
    a child that fails is a probe round whose every probe failed ("probe-failed"), like any
    failure of a probe, and the session retries as it would."""
    try:
        return await _probe_in_child(
            network, specs, probe_id=probe_id, timeout_s=timeout_s, ca_file=ca_file
        )
    except ChildFailed as exc:
        log.warning("probe of %s failed: %s", network.id, exc)
        return failed_round(network, specs, probe_id=probe_id, why=str(exc))


async def _probe_in_child(
    network: Network,
    specs: Sequence[ProbeSpec],
    *,
    probe_id: int,
    timeout_s: float,
    ca_file: str | None,
) -> ProbeFinished:
    answer = await _run(
        {
            "op": "probe",
            "network": asdict(network),
            "specs": [asdict(s) for s in specs],
            "probe_id": probe_id,
            "timeout_s": timeout_s,
            "ca_file": ca_file,
        },
        timeout_s,
    )
    return _finished(answer)


async def _run(request: dict[str, Any], timeout_s: float) -> Any:
    env = dict(os.environ)
    # the daemon's import path as it is (a Nix wrapper sets it up inside the script, not in env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    debug = logging.getLogger("portal").isEnabledFor(logging.DEBUG)
    try:
        proc = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "portal.edges.probe_child",
            "debug" if debug else "info",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
    except OSError as exc:
        # An interpreter this user cannot execute (a venv made from a Python under /root), a
        # missing one (a removed virtual environment), no memory or processes left.
        raise ChildFailed(
            f"cannot start the probe process ({PYTHON}): {exc.strerror or exc}"
        ) from None
    try:
        out, _ = await asyncio.wait_for(
            proc.communicate(json.dumps(request).encode()), timeout_s + START_ALLOWANCE_S
        )
    except TimeoutError:
        raise ChildFailed("the probe process did not finish in time") from None
    finally:
        if proc.returncode is None:  # timed out or cancelled: never leave it behind
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise ChildFailed(f"the probe process exited with status {proc.returncode}")
    if len(out) > MAX_ANSWER:
        raise ChildFailed("the probe process answered too much")
    try:
        return json.loads(out)
    except ValueError:
        raise ChildFailed("the probe process answered something unreadable") from None


# --- encoding -----------------------------------------------------------------------------------


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the dataclasses hold (nested: header pairs)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _make(cls: Any, data: Any) -> Any:
    if not isinstance(data, dict):
        raise ChildFailed(f"unreadable {cls.__name__} from the probe process")
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: _tuples(v) for k, v in data.items() if k in names})
    except TypeError as exc:
        raise ChildFailed(f"unreadable {cls.__name__} from the probe process: {exc}") from None


def _finished(data: Any) -> ProbeFinished:
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ChildFailed("unreadable probe result from the probe process")
    results = []
    for pair in data["results"]:
        if not isinstance(pair, list) or len(pair) != 2:
            raise ChildFailed("unreadable probe result from the probe process")
        results.append((_make(ProbeSpec, pair[0]), _make(ProbeResponse, pair[1])))
    api = data.get("api")
    return ProbeFinished(
        network_id=str(data.get("network_id", "")),
        probe_id=int(data.get("probe_id", -1)),
        results=tuple(results),
        api=_make(CaptiveApi, api) if api is not None else None,
        api_uri=str(data.get("api_uri", "")),
    )


# --- the child's side ---------------------------------------------------------------------------


async def _serve(request: dict[str, Any]) -> Any:
    from portal.edges import http_probe

    network = _make(Network, request["network"]) if request.get("network") else None
    if request["op"] == "probe":
        assert network is not None
        result = await http_probe.probe_network(
            network,
            [_make(ProbeSpec, s) for s in request["specs"]],
            probe_id=int(request["probe_id"]),
            timeout_s=float(request["timeout_s"]),
            ca_file=request.get("ca_file"),
        )
        return asdict(result)
    raise ValueError(f"unknown request {request['op']!r}")


def main(argv: Sequence[str]) -> int:
    from portal.logsetup import setup_logging

    setup_logging(argv[0] if argv else "info", "portal")
    try:
        request = json.loads(sys.stdin.buffer.read(MAX_ANSWER))
        answer = asyncio.run(_serve(request))
    except Exception as exc:
        print(f"portal probe process: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
