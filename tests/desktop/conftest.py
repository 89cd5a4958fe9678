"""Fixtures of the desktop tests: they live in tests/support/desktop.py with their helpers."""

from tests.support.desktop import (  # noqa: F401  (pytest finds fixtures by name here)
    desktop,
    fake_server,
    session_bus,
    stand_in,
    system_bus,
)
