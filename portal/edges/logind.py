"""systemd-logind's sleep signal: resume from suspend, as an event.

`watch_resume(bus, emit)` subscribes to org.freedesktop.login1.Manager's PrepareForSleep on a
connected bus and emits `Resumed()` (portal/core/events.py) for PrepareForSleep(false), the
signal logind sends on waking. It must not decide what a resume means (core/session.py
re-probes); without logind nothing is ever emitted, and that is not an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus

from portal.core.events import Resumed
from portal.edges.bus import CallFailed, add_match

log = logging.getLogger("portal")

MANAGER = "org.freedesktop.login1.Manager"
RULE = f"type='signal',interface='{MANAGER}',member='PrepareForSleep'"


async def watch_resume(bus: MessageBus, emit: Callable[[object], None]) -> None:
    """Emit Resumed() on every wake from suspend for as long as `bus` is connected."""
    try:
        await add_match(bus, RULE)
    except (CallFailed, OSError, EOFError) as exc:
        log.debug("cannot watch for resume: %s, ignoring", exc)
        return

    def on_message(msg: Message) -> None:
        if (
            msg.message_type == MessageType.SIGNAL
            and msg.interface == MANAGER
            and msg.member == "PrepareForSleep"
            and msg.body == [False]
        ):
            log.info("resumed from suspend")
            emit(Resumed())

    bus.add_message_handler(on_message)
