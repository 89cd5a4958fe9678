"""resolv.conf and the stub request on disk: read them, write them atomically.

Two sides use it. The daemon (user `portal`, no privileges) writes its request, a file in its
runtime directory that holds the stub's address while the stub has work and is gone otherwise.
The root helper `portal wire` (run by portal-wire.path whenever the request or resolv.conf
changes) reads the request and resolv.conf and writes back what portal/core/wiring.py planned.

It must not decide anything (core does), must never write resolv.conf from the daemon, must
accept from the request nothing but one loopback address, and must write resolv.conf only
through a temporary file renamed over the old one (in the symlink target's directory when
/etc/resolv.conf is a symlink, so NetworkManager's or resolvconf's link stays as they made it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from portal.core.wiring import ResolvConfPlan, format_stub_request, parse_stub_request
from portal.core.wiring import plan_resolv_conf as plan
from portal.errors import PortalError

DEFAULT_RESOLV_CONF = "/etc/resolv.conf"
# In portal.service's RuntimeDirectory: systemd removes it whenever the daemon stops, crashes
# included, and portal-wire.path then takes the stub out of resolv.conf.
DEFAULT_REQUEST = "/run/portal/resolv-stub"
# Passes of sync() while the request keeps changing under it (a crash-looping daemon).
MAX_PASSES = 5


class ResolvConfError(PortalError):
    """resolv.conf or the stub request cannot be read or written."""


def read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist or cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:
        return None


def write_request(path: str, stub: str | None, *, force: bool = False) -> bool:
    """Ask for the stub (its address) or for none (an empty file). True when written.

    Written by rename, so the helper never reads half a request; an unchanged request is not
    written again unless `force` (at start: the rename makes the helper check resolv.conf once,
    which repairs a block a crash or a power cut left behind).
    """
    wanted = format_stub_request(stub)
    if not force and read_text(path) == wanted:
        return False
    try:
        _replace(path, wanted.encode(), mode=0o644)
    except OSError as exc:
        raise ResolvConfError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return True


def remove_request(path: str) -> None:
    """Withdraw the request altogether (the daemon is stopping); the helper takes the stub out."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ResolvConfError(f"cannot remove {path}: {exc.strerror or exc}") from exc


def _replace(path: str, data: bytes, *, mode: int, like: os.stat_result | None = None) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if like is not None and (like.st_uid, like.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(f.fileno(), like.st_uid, like.st_gid)  # e.g. NixOS's root:resolvconf
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What `sync` found and did."""

    plan: ResolvConfPlan
    changed: bool  # resolv.conf was rewritten
    path: str  # the file written (the symlink's target when resolv.conf is a link)
    request_error: str = ""  # the request was unreadable and taken as "no stub"
    request_text: str | None = None  # the request as the last pass read it (None: none)


def sync(
    resolv_conf: str = DEFAULT_RESOLV_CONF,
    request: str = DEFAULT_REQUEST,
    *,
    stopped: bool = False,
) -> SyncResult:
    """Make resolv.conf what the request asks for: the stub first, or portal's block gone.

    The helper's whole job; safe to run any number of times (a second run changes nothing).
    A request that is not one loopback address counts as none. Raise ResolvConfError when
    resolv.conf cannot be read or written.

    `stopped` is the daemon's stop (portal.service's ExecStopPost, after the daemon is gone):
    its request is withdrawn, so no helper after this one can read it, and the stub taken out.

    Runs hold a lock on resolv.conf's directory from reading the request to writing the file:
    a helper the path unit started while the daemon was alive may have read its request, and
    without the lock it could write the stub back after the stop's run took it out.
    The request is read again after each pass, and the pass repeated if it changed meanwhile:
    a path unit does not start its service again for a change made while that service runs,
    so a daemon killed during a pass (its request removed) would otherwise leave its stub.
    """
    with _locked(os.path.dirname(os.path.abspath(resolv_conf))):
        if stopped:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(request)
        return _sync(resolv_conf, request)


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """An exclusive flock(2) on `directory` (every helper run takes the same one)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ResolvConfError(f"cannot open {directory}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _sync(resolv_conf: str, request: str) -> SyncResult:
    result = _sync_once(resolv_conf, request)
    for _ in range(MAX_PASSES - 1):
        if read_text(request) == result.request_text:
            break
        again = _sync_once(resolv_conf, request)
        result = SyncResult(
            again.plan,
            changed=result.changed or again.changed,
            path=again.path,
            request_error=again.request_error,
            request_text=again.request_text,
        )
    return result


def _sync_once(resolv_conf: str, request: str) -> SyncResult:
    request_error = ""
    asked = read_text(request)
    try:
        stub = parse_stub_request(asked or "")
    except ValueError as exc:
        stub, request_error = None, f"ignoring {request}: {exc}"
    target = os.path.realpath(resolv_conf)
    try:
        with open(target, encoding="utf-8", errors="surrogateescape") as f:
            current = f.read()
        st = os.stat(target)
    except FileNotFoundError:
        raise ResolvConfError(f"{resolv_conf} does not exist: nothing to wire") from None
    except OSError as exc:
        raise ResolvConfError(f"cannot read {resolv_conf}: {exc.strerror or exc}") from exc
    result = plan(current, stub)
    if result.text == current:
        return SyncResult(result, False, target, request_error, asked)
    try:
        _replace(
            target,
            result.text.encode("utf-8", errors="surrogateescape"),
            mode=st.st_mode & 0o7777,
            like=st,
        )
    except OSError as exc:
        raise ResolvConfError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return SyncResult(result, True, target, request_error, asked)
