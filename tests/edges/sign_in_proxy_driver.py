"""Runs portal's sign-in proxy for a test, where the test cannot run it in-process (on the lab's
laptop): ``python3 sign_in_proxy_driver.py JSON``.

JSON: ``{"interface": "lap0", "venue_dns": ["10.77.0.1"], "overrides": {"name": ["addr"]},
"limits": {...}, "lifetime_s": 120}``. Prints the port as its first line, logs what the proxy
logs (debug), and serves until SIGTERM or ``lifetime_s``; it must not outlive either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys

from portal.core.report import OverrideView
from portal.edges.sign_in_proxy import Limits, SignInProxy


async def serve(conf: dict[str, object]) -> None:
    overrides = conf.get("overrides") or {}
    assert isinstance(overrides, dict)
    limits = conf.get("limits") or {}
    assert isinstance(limits, dict)
    venue_dns = conf.get("venue_dns") or []
    assert isinstance(venue_dns, list)
    proxy = SignInProxy(
        interface=str(conf["interface"]),
        venue_dns=[str(s) for s in venue_dns],
        overrides=[OverrideView(n, tuple(a), active=True) for n, a in overrides.items()],
        uid=os.getuid(),
        limits=Limits(**limits),
    )
    port = await proxy.start()
    print(port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    lifetime_s = conf.get("lifetime_s", 120)
    assert isinstance(lifetime_s, int | float)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), lifetime_s)
    await proxy.close()
    print(f"served {proxy.served}, refused peers {proxy.refused_peers}", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(levelname)s %(message)s")
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    asyncio.run(serve(json.loads(sys.argv[1])))
