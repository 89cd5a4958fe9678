"""The sign-in window: a browser with a throwaway profile, started, watched, closed, deleted.

The profile is a fresh directory (mode 0700) under the user's runtime directory or /tmp (for a
snap-packaged browser, under ~/snap/NAME/common, the only place it may write), named
`portal-sign-in-*` and holding a marker with the owning process's PID and start time. It is
deleted when the window ends, however it ends; one left by a `portal open` that was killed
outright is deleted by the next one (`sweep_stale_profiles`).

The browser runs in a session of its own, so that closing the window stops every process it
started (Chromium's zygote and renderers, Firefox's content processes): SIGTERM to the group,
which both close cleanly on, then SIGKILL after a bound. What the command line and profile
contain is decided in portal/core/sign_in.py; this module must not decide it, and must never
start a browser as root.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from portal.core.sign_in import (
    HANDOFF_S,
    PROFILE_PREFIX,
    Browser,
    Family,
    browser_argv,
    firefox_user_js,
    profile_parent,
)
from portal.errors import PortalError

log = logging.getLogger("portal.sign_in")

OWNER_FILE = ".portal-owner"
STDERR_LINES = 20  # kept to explain a browser that fails to start
UNMARKED_STALE_S = 3600.0  # a profile without a marker is someone's half-made one for this long


def which(command: str) -> str | None:
    return shutil.which(command)


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _snap_name(browser: Browser) -> str | None:
    """The snap a browser comes from (/snap/bin/NAME, or a wrapper when /snap/bin/NAME exists)."""
    if browser.path.startswith("/snap/"):
        return browser.name
    if Path("/snap/bin", browser.name).exists():
        return browser.name
    return None


def profile_dir_parent(browser: Browser) -> Path:
    parent = profile_parent(
        snap_name=_snap_name(browser),
        home=os.environ.get("HOME") or str(Path.home()),
        runtime_dir=_usable_runtime_dir(),
        temp_dir=tempfile.gettempdir(),
    )
    return Path(parent)


def _usable_runtime_dir() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.access(runtime, os.W_OK | os.X_OK):
        return runtime
    return ""


def sweep_stale_profiles(parent: Path) -> list[Path]:
    """Delete this user's sign-in profiles whose `portal open` is gone; return them."""
    removed: list[Path] = []
    try:
        entries = list(parent.glob(f"{PROFILE_PREFIX}*"))
    except OSError:
        return removed
    me = os.getuid()
    for entry in entries:
        try:
            st = entry.lstat()
        except OSError:
            continue
        if st.st_uid != me or not entry.is_dir() or entry.is_symlink():
            continue
        try:
            pid_text, _, started = (entry / OWNER_FILE).read_text().strip().partition(" ")
            alive = _start_time(int(pid_text)) == started
        except (OSError, ValueError):
            alive = time.time() - st.st_mtime < UNMARKED_STALE_S
        if not alive:
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry)
    return removed


def make_profile(browser: Browser, *, proxy_port: int) -> Path:
    """A fresh, private profile directory for `browser`, marked as this process's."""
    parent = profile_dir_parent(browser)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for stale in sweep_stale_profiles(parent):
            log.info("removed a sign-in profile left behind: %s", stale)
        profile = Path(tempfile.mkdtemp(prefix=PROFILE_PREFIX, dir=parent))
        (profile / OWNER_FILE).write_text(f"{os.getpid()} {_start_time(os.getpid()) or ''}\n")
        if browser.family is Family.FIREFOX:
            (profile / "user.js").write_text(
                firefox_user_js(proxy_port=proxy_port, profile=str(profile))
            )
    except OSError as exc:
        raise PortalError(
            f"cannot make a profile for the sign-in window in {parent}: {exc}"
        ) from exc
    return profile


class SignInWindow:
    """One running browser and its profile."""

    def __init__(self, browser: Browser, proc: asyncio.subprocess.Process, profile: Path) -> None:
        self.browser = browser
        self.proc = proc
        self.profile = profile
        self.started = time.monotonic()
        self.exited_after_s: float | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._reader = asyncio.ensure_future(self._read_stderr())

    @classmethod
    async def open(
        cls,
        browser: Browser,
        *,
        url: str,
        proxy_port: int,
        env: Mapping[str, str] | None = None,
    ) -> SignInWindow:
        if os.geteuid() == 0:
            raise PortalError(f"refusing to start a browser as root; open {url} as your user")
        profile = make_profile(browser, proxy_port=proxy_port)
        argv = browser_argv(browser, profile=str(profile), proxy_port=proxy_port, url=url)
        log.debug("starting %s", " ".join(argv))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                # Its own session: closing the window stops everything it started.
                start_new_session=True,
                env=dict(env) if env is not None else None,
            )
        except OSError as exc:
            await _remove(profile)
            raise PortalError(f"cannot run {browser.path}: {exc.strerror}") from exc
        return cls(browser, proc, profile)

    async def _read_stderr(self) -> None:
        # Drained all along (a full pipe would stall the browser); only the tail is kept.
        assert self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())

    async def wait(self) -> int:
        code = await self.proc.wait()
        if self.exited_after_s is None:
            self.exited_after_s = time.monotonic() - self.started
        return code

    @property
    def handed_off(self) -> bool:
        """It exited at once with success: the page went to a window out of our reach."""
        return (
            self.proc.returncode == 0
            and self.exited_after_s is not None
            and self.exited_after_s < HANDOFF_S
        )

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop the browser and everything it started, then delete the profile."""
        pgid = self.proc.pid
        if self.proc.returncode is None:
            _killpg(pgid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.wait(), timeout_s)
            except TimeoutError:
                log.info("%s did not end within %.0f s, killing it", self.browser.name, timeout_s)
        # Helpers of the browser may outlive it for a moment (or, killed, for good).
        _killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait(), timeout_s)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self._reader, 1.0)
        self._reader.cancel()
        await _remove(self.profile)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _remove_tree(profile: Path) -> bool:
    shutil.rmtree(profile, ignore_errors=True)
    return not profile.exists()


async def _remove(profile: Path) -> None:
    # A dying browser may still write a file or two; a few tries cover it.
    for _ in range(5):
        if _remove_tree(profile):
            return
        await asyncio.sleep(0.1)
    log.warning("could not delete the sign-in profile %s", profile)
