"""portal-wire.path's job where no systemd runs (the namespace lab's laptop).

Runs the real `portal wire` as root once at start and again whenever the daemon's request file
or resolv.conf (through a symlink, its target) changes, the same triggers the path unit has
(tests/platform/test_wire_units.py shows systemd firing on each of them). One line per run goes
to stdout: the time and what `portal wire` said.

Usage (as root, on the laptop): python3 wire_helper.py REQUEST RESOLV_CONF

It must not change anything itself (only `portal wire` does), and it stops when killed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from portal.edges.inotify import FileWatch  # noqa: E402


async def main(request: str, resolv_conf: str) -> None:
    wake = asyncio.Event()
    watches = [FileWatch(path, wake.set, settle_s=0.0) for path in (request, resolv_conf)]
    for watch in watches:
        watch.start()
    wake.set()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "portal", "wire", "--request", request,
            "--resolv-conf", resolv_conf]  # fmt: skip
    while True:
        await wake.wait()
        wake.clear()
        done = await asyncio.to_thread(
            subprocess.run, argv, env=env, capture_output=True, text=True, timeout=60
        )
        said = (done.stdout + done.stderr).strip().replace("\n", " | ")
        print(f"{time.time():.3f} rc={done.returncode} {said}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
