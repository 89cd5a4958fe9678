"""Files that change under our feet, followed with the kernel's inotify (no polling).

Linux's inotify through ctypes (the standard library has no binding; no callback crosses into C,
so this works under MemoryDenyWriteExecute=). `FileWatch` follows one path such as
/etc/resolv.conf by watching the directories that hold it: its own, and when it is a symlink
the target's too (NetworkManager and resolvconf replace the target by rename, which a watch on
the old file would miss). It calls back once per burst of changes, on the asyncio loop.

It must not read the files it watches (the caller does) and must not hold a descriptor after
close().
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import struct
from collections.abc import Callable

log = logging.getLogger("portal")

# <sys/inotify.h>
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
DIR_EVENTS = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class InotifyError(OSError):
    """inotify is not available here (no libc symbol, or the kernel refused)."""


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError) as exc:
        raise InotifyError(f"inotify is not available: {exc}") from exc
    return libc


class FileWatch:
    """Call `on_change()` after `path` (or what it links to) is created, replaced, written or
    removed. Bursts within `settle_s` are one call. Start with `start()`, end with `close()`."""

    def __init__(self, path: str, on_change: Callable[[], None], *, settle_s: float = 0.05):
        self.path = path
        self._on_change = on_change
        self._settle_s = settle_s
        self._libc: ctypes.CDLL | None = None
        self._fd = -1
        self._dirs: dict[int, str] = {}  # watch descriptor -> directory
        self._names: set[str] = set()  # base names that matter in those directories
        self._pending: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Begin watching. Raise InotifyError when inotify cannot be used here."""
        self._libc = _libc()
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise InotifyError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._rewatch()
        self._loop.add_reader(self._fd, self._readable)

    def _directories(self) -> dict[str, set[str]]:
        """The directories to watch and, in each, the names whose changes count."""
        wanted: dict[str, set[str]] = {}
        path = os.path.abspath(self.path)
        # The link itself, then each link it leads through, then the final file.
        for _ in range(8):
            wanted.setdefault(os.path.dirname(path), set()).add(os.path.basename(path))
            try:
                target = os.readlink(path)
            except OSError:
                break
            path = os.path.normpath(os.path.join(os.path.dirname(path), target))
        return wanted

    def _rewatch(self) -> None:
        assert self._libc is not None
        wanted = self._directories()
        for wd, directory in list(self._dirs.items()):
            if directory not in wanted:
                self._libc.inotify_rm_watch(self._fd, wd)
                del self._dirs[wd]
        watched = set(self._dirs.values())
        for directory in wanted:
            if directory in watched:
                continue
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), DIR_EVENTS)
            if wd < 0:
                err = ctypes.get_errno()
                # A directory that does not exist yet (/run/NetworkManager before NM starts)
                # is looked for again at the next change of the link.
                log.debug("cannot watch %s: %s", directory, os.strerror(err))
                continue
            self._dirs[wd] = directory
        self._names = set().union(*wanted.values())

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("reading inotify events failed: %s, ignoring", exc)
            return
        relevant = False
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                relevant = True  # events were lost: look again
            elif mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                # A watched directory went away or moved: watch what the path means now.
                if mask & IN_IGNORED:
                    self._dirs.pop(wd, None)
                relevant = True
            elif os.fsdecode(name) in self._names:
                relevant = True
        if relevant:
            self._rewatch()  # the link may point elsewhere now
            self._schedule()

    def _schedule(self) -> None:
        if self._pending is not None or self._loop is None:
            return
        self._pending = self._loop.call_later(self._settle_s, self._fire)

    def _fire(self) -> None:
        self._pending = None
        try:
            self._on_change()
        except Exception:
            log.exception("handling a change of %s failed, ignoring", self.path)

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._fd >= 0:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        self._dirs.clear()
