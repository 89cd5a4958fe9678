"""The override table at run time: one owner, one lock, one way to change it, one save policy.

    service = OverrideService(store, limits=..., on_change=...)
    await service.load()
    made = await service.change(lambda table, now: table.add(...), automatic=False)

Every change — `portal add`, `remove`, `import`, expiry, pinning a portal's names and removing
those pins — is `change(fn)`: under the lock, `fn` changes a copy of the table, the copy is
saved, and only then does it replace the table and `on_change()` run (the stub's view, the
resolver wiring, OverridesChanged). So:

- A change becomes visible only once it is on disk: nothing a client was told about is lost by a
  crash, and no restart changes an answer. A change that changes nothing is not saved.
- When the save fails the change is not applied. A user's call gets the error (one line:
  "cannot save overrides to ...") and can be retried by the user. An automatic change (expiry,
  pins) logs one line and is kept pending: it is applied again, before anything else, with the
  next change or when the retry timer fires (RETRY_S; the expiry timer shares it), until a save
  succeeds. Expired overrides stop answering at once either way (the table's `active()` skips
  them); a pending pin or unpin only waits.

This policy was chosen over the alternatives (apply unsaved, as unpinning did; give up, as
pinning did) because what the daemon reports is always what a restart would load, and an
automatic change is never lost, only late.

It must not decide what to change (core/overrides.py and core/session.py do) nor talk to D-Bus;
it does the one thing the daemon needs from disk, through `store`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from portal.core.model import Override
from portal.core.overrides import Limits, OverrideTable
from portal.errors import StateError

log = logging.getLogger("portal")

RETRY_S = 30.0  # an automatic change whose save failed is tried again after this long
EXPIRY_SLACK_S = 0.05  # wake a little after an expiry, so that it has passed

T = TypeVar("T")
# changes the table it is given (a copy); `now` is wall-clock time; returns what change() returns
Change = Callable[[OverrideTable, float], T]


class Store(Protocol):
    """Where the table lives between runs (portal/edges/store.py)."""

    def load(self, *, limits: Limits) -> OverrideTable: ...
    def save(self, table: OverrideTable) -> None: ...


class OverrideService:
    """Owns the OverrideTable; see the module text for the save policy."""

    def __init__(
        self,
        store: Store,
        *,
        limits: Limits,
        on_change: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.limits = limits
        self._on_change = on_change
        self._clock = clock
        self._table = OverrideTable(limits=limits)
        self._lock = asyncio.Lock()
        self._pending: list[tuple[str, Change[object]]] = []  # automatic changes not yet saved
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def table(self) -> OverrideTable:
        """The table as saved. Read it, never change it: changes go through change()."""
        return self._table

    def load(self) -> None:
        """Read the saved table (a corrupt file is moved aside by the store). What expired while
        the daemon was not running is dropped in memory; the next save drops it on disk."""
        self._table = self._store.load(limits=self.limits)
        self._table.expire(self._clock())

    async def change(self, fn: Change[T], *, what: str, automatic: bool = False) -> T | None:
        """Apply `fn` to a copy, save it, then make it the table. `what` names the change in the
        log. Raises what `fn` raises (nothing changes) and, for a user's change, StateError
        when the save fails; an automatic change returns None then, and is retried."""
        async with self._lock:
            now = self._clock()
            new = OverrideTable(self._table.entries(), limits=self.limits)
            for _, pending in self._pending:
                pending(new, now)
            result = fn(new, now)
            if new.entries() == self._table.entries() and not self._pending:
                self._schedule()
                return result  # nothing changed: nothing to save or tell
            try:
                await asyncio.to_thread(self._store.save, new)
            except StateError as exc:
                if not automatic:
                    raise
                log.error("%s; %s is not applied yet, trying again in %.0f s", exc, what, RETRY_S)
                self._pending.append((what, fn))
                self._schedule()
                return None
            if self._pending:
                log.info("saved at last: %s", ", ".join(name for name, _ in self._pending))
                self._pending.clear()
            self._table = new
            self._schedule()
        self._on_change()
        return result

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._tasks:
            task.cancel()

    # -- the one timer: expiry and retries -----------------------------------------------------

    def _schedule(self) -> None:
        """Wake at the next expiry, or sooner to retry a pending change; no timer otherwise (no
        wakeups while nothing can change)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self._clock()
        delays = [RETRY_S] if self._pending else []
        when = self._table.next_expiry()
        # with a purge pending, the expiries already past are what it waits to save
        if when is not None and (when > now or not self._pending):
            delays.append(max(0.0, when - now) + EXPIRY_SLACK_S)
        if delays:
            self._timer = asyncio.get_running_loop().call_later(min(delays), self._wake)

    def _wake(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self._purge())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _purge(self) -> None:
        def expire(table: OverrideTable, now: float) -> list[Override]:
            return table.expire(now)

        gone = await self.change(expire, what="removing expired overrides", automatic=True)
        for o in gone or ():
            log.info("override %s expired", o.name)
