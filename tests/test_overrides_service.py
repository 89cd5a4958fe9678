"""portal/overrides_service.py: one way to change the table, and its save policy.

The state file is the real one (portal/edges/store.py in a temporary directory); a save can be
made to fail on demand, as a full disk makes it fail (tests/reliability/test_faults.py fills a
real tmpfs for the daemon as a whole).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from portal import overrides_service
from portal.core.model import Source
from portal.core.overrides import Limits, OverrideTable
from portal.edges.store import Store
from portal.errors import StateError
from portal.overrides_service import OverrideService


class FlakyStore(Store):
    """The real store, whose saves fail while `full` is set."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.full = False
        self.saves = 0

    def save(self, table: OverrideTable) -> None:
        if self.full:
            raise StateError(f"cannot save overrides to {self.state_dir}: No space left on device")
        self.saves += 1
        super().save(table)


def saved_names(state_dir: Path) -> list[str]:
    data = json.loads((state_dir / "overrides.json").read_text())
    return [o["name"] for o in data["overrides"]]


@pytest.fixture
def made(tmp_path: Path) -> tuple[OverrideService, FlakyStore, list[int]]:
    store = FlakyStore(tmp_path)
    changes: list[int] = []
    service = OverrideService(store, limits=Limits(), on_change=lambda: changes.append(1))
    service.load()
    return service, store, changes


def add(
    name: str, *, ttl_s: float | None = None, source: Source = Source.USER
) -> Callable[[OverrideTable, float], object]:
    def put(table: OverrideTable, now: float) -> object:
        return table.add(name, ["10.0.0.1"], ttl_s=ttl_s, now=now, source=source)

    return put


async def test_a_change_is_visible_once_it_is_on_disk(
    made: tuple[OverrideService, FlakyStore, list[int]], tmp_path: Path
) -> None:
    service, store, changes = made
    o = await service.change(add("a.test"), what="adding a.test")
    assert o is not None and "a.test" in service.table and changes == [1]
    assert saved_names(tmp_path) == ["a.test"]
    # a change that changes nothing is neither saved nor told
    await service.change(lambda table, now: None, what="nothing")
    assert store.saves == 1 and changes == [1]


async def test_a_users_change_that_cannot_be_saved_is_an_error_and_not_applied(
    made: tuple[OverrideService, FlakyStore, list[int]], tmp_path: Path
) -> None:
    service, store, changes = made
    await service.change(add("kept.test"), what="adding kept.test")
    store.full = True
    with pytest.raises(StateError, match="No space left"):
        await service.change(add("new.test"), what="adding new.test")
    with pytest.raises(StateError):
        await service.change(lambda t, now: t.remove("kept.test"), what="removing kept.test")
    assert [o.name for o in service.table.entries()] == ["kept.test"] and changes == [1]
    assert saved_names(tmp_path) == ["kept.test"]
    # nothing pending after a user's failure: the next save holds only what comes next
    store.full = False
    await service.change(add("other.test"), what="adding other.test")
    assert saved_names(tmp_path) == ["kept.test", "other.test"]


async def test_an_automatic_change_that_cannot_be_saved_waits_and_is_retried(
    made: tuple[OverrideService, FlakyStore, list[int]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service, store, changes = made
    monkeypatch.setattr(overrides_service, "RETRY_S", 0.1)
    store.full = True
    with caplog.at_level(logging.ERROR, logger="portal"):
        got = await service.change(
            add("pin.test", source=Source.AUTO), what="pinning pin.test", automatic=True
        )
    assert got is None and "pin.test" not in service.table and changes == []
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "No space left" in line and "pinning pin.test is not applied yet" in line
    await asyncio.sleep(0.3)  # a retry while the disk is still full changes nothing
    assert "pin.test" not in service.table
    store.full = False
    for _ in range(100):  # the retry timer applies it once a save works
        if "pin.test" in service.table:
            break
        await asyncio.sleep(0.02)
    assert "pin.test" in service.table and saved_names(tmp_path) == ["pin.test"]
    assert changes == [1]
    service.close()


async def test_a_pending_change_goes_first_with_the_next_one(
    made: tuple[OverrideService, FlakyStore, list[int]], tmp_path: Path
) -> None:
    service, store, _ = made
    await service.change(add("pin.test", source=Source.AUTO), what="pinning", automatic=True)
    store.full = True
    await service.change(lambda t, now: t.unpin(None), what="removing the pins", automatic=True)
    assert "pin.test" in service.table  # the unpin waits
    store.full = False
    await service.change(add("user.test"), what="adding user.test")
    assert [o.name for o in service.table.entries()] == ["user.test"]
    assert saved_names(tmp_path) == ["user.test"]
    service.close()


async def test_expiry_is_a_change_like_any_other(
    made: tuple[OverrideService, FlakyStore, list[int]], tmp_path: Path
) -> None:
    service, _, changes = made
    await service.change(lambda t, now: t.add("soon.test", ["10.0.0.1"], ttl_s=1.0, now=now - 0.9),
                         what="adding soon.test")  # fmt: skip
    assert changes == [1]
    for _ in range(100):
        if "soon.test" not in service.table:
            break
        await asyncio.sleep(0.02)
    assert "soon.test" not in service.table and saved_names(tmp_path) == []
    assert changes == [1, 1]
    service.close()
