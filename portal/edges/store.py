"""The state file: overrides persisted in the state directory, written atomically.

Write: temp file in the same directory, fsync, rename over the old one, fsync the directory —
so after a crash the file is either the old or the new version, never a mix. Read: a file that
does not parse is moved aside (never deleted: nothing is lost) and the daemon starts empty.

The file is one JSON object (core/overrides.py `format_state` / `parse_state`): a little daemon
state can be kept beside the overrides under a key of its own (a reader ignores keys it does not
know), written by the same atomic save. Only portal/overrides_service.py calls `Store`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from portal.core.overrides import Limits, OverrideTable, format_state, parse_state
from portal.errors import StateError

log = logging.getLogger("portal.store")

STATE_FILE = "overrides.json"


def state_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / STATE_FILE


class Store:
    """The state file in `state_dir`, as the override service uses it."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = state_dir

    def load(self, *, limits: Limits) -> OverrideTable:
        return load(self.state_dir, limits=limits)

    def save(self, table: OverrideTable) -> None:
        save(self.state_dir, table)


def load(state_dir: str | os.PathLike[str], *, limits: Limits | None = None) -> OverrideTable:
    limits = limits or Limits()
    path = state_path(state_dir)
    _sweep_temp_files(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return OverrideTable(limits=limits)
    except (OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, UnicodeDecodeError):
            return _move_aside(path, f"not UTF-8 text: {exc}", limits)
        log.error("cannot read %s: %s; starting with no overrides", path, exc)
        return OverrideTable(limits=limits)
    try:
        return parse_state(text, limits=limits)
    except StateError as exc:
        return _move_aside(path, str(exc), limits)


def _sweep_temp_files(path: Path) -> None:
    """Remove temp files of saves that a crash interrupted (SIGKILL between write and rename).
    Each carries its writer's PID, so a crash loop would leave one more each time. Called at
    load, before this process saves anything: no save of this process can be in flight."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            stale.unlink()
            log.info("removed %s, left by an interrupted save", stale)
        except OSError as exc:
            log.warning("cannot remove %s: %s, ignoring", stale, exc.strerror or exc)


def _move_aside(path: Path, why: str, limits: Limits) -> OverrideTable:
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    try:
        os.rename(path, aside)
        log.error(
            "%s is corrupt (%s); moved it to %s and started with no overrides", path, why, aside
        )
    except OSError as exc:
        log.error(
            "%s is corrupt (%s) and could not be moved aside (%s); starting with no "
            "overrides and leaving it in place",
            path,
            why,
            exc,
        )
    return OverrideTable(limits=limits)


def save(state_dir: str | os.PathLike[str], table: OverrideTable) -> None:
    """Write the table durably. Raises StateError with a one-line reason on failure."""
    directory = Path(state_dir)
    path = state_path(directory)
    tmp = directory / f".{STATE_FILE}.{os.getpid()}.tmp"
    data = format_state(table).encode("utf-8")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise StateError(f"cannot save overrides to {path}: {exc.strerror or exc}") from exc
