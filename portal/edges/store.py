"""The state file: overrides persisted in the state directory, written atomically.

Write: temp file in the same directory, fsync, rename over the old one, fsync the directory —
so after a crash the file is either the old or the new version, never a mix. Read: a file that
does not parse is moved aside (never deleted: nothing is lost) and the daemon starts empty.

The file is one JSON object (core/overrides.py `format_state` / `parse_state`): a little daemon
state can be kept beside the overrides under a key of its own (a reader ignores keys it does not
know), written by the same atomic save. Only portal/overrides_service.py calls `Store` for the
overrides. The network the daemon was last on is kept in a small file of its own
(network.json, core/remembered.py), written the same way by the daemon when it changes, and so
are the user's choices about networks ("don't ask again": choices.json, core/choices.py; a
corrupt one is moved aside like the overrides).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from portal.core.model import Network
from portal.core.overrides import Limits, OverrideTable, format_state, parse_state
from portal.core.remembered import format_network, parse_network
from portal.errors import StateError

if TYPE_CHECKING:
    from portal.core.choices import Choices

log = logging.getLogger("portal.store")

STATE_FILE = "overrides.json"
NETWORK_FILE = "network.json"  # the network the daemon was last on (core/remembered.py)
CHOICES_FILE = "choices.json"  # networks not to ask about again (core/choices.py)


def state_path(state_dir: str | os.PathLike[str]) -> str:
    return os.path.join(state_dir, STATE_FILE)


class Store:
    """The state file in `state_dir`, as the override service uses it."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = state_dir

    def load(self, *, limits: Limits) -> OverrideTable:
        return load(self.state_dir, limits=limits)

    def save(self, table: OverrideTable) -> None:
        save(self.state_dir, table)

    def load_network(self) -> Network | None:
        return load_network(self.state_dir)

    def save_network(self, network: Network | None) -> None:
        save_network(self.state_dir, network)

    def load_choices(self) -> Choices:
        return load_choices(self.state_dir)

    def save_choices(self, choices: Choices) -> None:
        save_choices(self.state_dir, choices)


def load(state_dir: str | os.PathLike[str], *, limits: Limits | None = None) -> OverrideTable:
    limits = limits or Limits()
    path = state_path(state_dir)
    _sweep_temp_files(path)
    try:
        text = _read_text(path)
    except FileNotFoundError:
        return OverrideTable(limits=limits)
    except (OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, UnicodeDecodeError):
            _move_aside(path, f"not UTF-8 text: {exc}", then="started with no overrides")
            return OverrideTable(limits=limits)
        log.error("cannot read %s: %s; starting with no overrides", path, exc)
        return OverrideTable(limits=limits)
    try:
        return parse_state(text, limits=limits)
    except StateError as exc:
        _move_aside(path, str(exc), then="started with no overrides")
        return OverrideTable(limits=limits)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _sweep_temp_files(path: str) -> None:
    """Remove temp files of saves that a crash interrupted (SIGKILL between write and rename).
    Each carries its writer's PID, so a crash loop would leave one more each time. Called at
    load, before this process saves anything: no save of this process can be in flight.
    (os and plain strings, not pathlib: this runs before the daemon's first answer, and
    pathlib would be a few milliseconds of that start.)"""
    directory, name = os.path.split(path)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return
    prefix, suffix = f".{name}.", ".tmp"  # what _write_atomic names it: .NAME.<pid>.tmp
    for entry in names:
        pid = entry[len(prefix) : -len(suffix)]
        if not (entry.startswith(prefix) and entry.endswith(suffix) and pid.isdigit()):
            continue
        stale = os.path.join(directory, entry)
        try:
            os.unlink(stale)
            log.info("removed %s, left by an interrupted save", stale)
        except OSError as exc:
            log.warning("cannot remove %s: %s, ignoring", stale, exc.strerror or exc)


def _move_aside(path: str, why: str, *, then: str) -> None:
    """Keep a file that does not parse beside the new one (nothing is lost), and say so; `then`
    says what the daemon does instead ("started with no overrides")."""
    aside = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    try:
        os.rename(path, aside)
        log.error("%s is corrupt (%s); moved it to %s and %s", path, why, aside, then)
    except OSError as exc:
        log.error(
            "%s is corrupt (%s) and could not be moved aside (%s); %s, leaving it in place",
            path,
            why,
            exc,
            then,
        )


def save(state_dir: str | os.PathLike[str], table: OverrideTable) -> None:
    """Write the table durably. Raises StateError with a one-line reason on failure."""
    _write_atomic(state_dir, STATE_FILE, format_state(table).encode("utf-8"), "overrides")


def load_network(state_dir: str | os.PathLike[str]) -> Network | None:
    """The network the daemon was last on (core/remembered.py); None when none is known or the
    file cannot be read (logged: the daemon then assumes nothing, which is never wrong)."""
    path = os.path.join(state_dir, NETWORK_FILE)
    _sweep_temp_files(path)
    try:
        return parse_network(_read_text(path))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("cannot read the last network from %s (%s), ignoring", path, exc)
        return None


def save_network(state_dir: str | os.PathLike[str], network: Network | None) -> None:
    """Remember the network the daemon is on. Raises StateError with a one-line reason."""
    _write_atomic(state_dir, NETWORK_FILE, format_network(network).encode(), "the network")


def load_choices(state_dir: str | os.PathLike[str]) -> Choices:
    """The user's choices about networks; none when there is no file. A file that does not
    parse is moved aside (nothing is lost) and the daemon starts with none."""
    # Imported here, not at the top: the stub's first answers (portal/early.py) read the state
    # directory through this module and need none of it.
    from portal.core.choices import Choices, parse_choices

    path = os.path.join(state_dir, CHOICES_FILE)
    _sweep_temp_files(path)
    try:
        return parse_choices(_read_text(path))
    except FileNotFoundError:
        return Choices()
    except (ValueError, UnicodeDecodeError) as exc:
        _move_aside(path, str(exc), then="remember no choices")
        return Choices()
    except OSError as exc:
        log.error("cannot read %s: %s; remembering no choices", path, exc.strerror or exc)
        return Choices()


def save_choices(state_dir: str | os.PathLike[str], choices: Choices) -> None:
    """Write the choices durably. Raises StateError with a one-line reason on failure."""
    from portal.core.choices import format_choices

    _write_atomic(state_dir, CHOICES_FILE, format_choices(choices).encode(), "choices")


def _write_atomic(directory: str | os.PathLike[str], name: str, data: bytes, what: str) -> None:
    """Temp file, fsync, rename over the old one, fsync the directory."""
    path = os.path.join(directory, name)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    try:
        os.makedirs(directory, exist_ok=True)
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
            os.unlink(tmp)
        except OSError:
            pass
        raise StateError(f"cannot save {what} to {path}: {exc.strerror or exc}") from exc
