"""Fixtures of the desktop tests; they live in desktop_support.py with the helpers they use."""

from desktop_support import (  # noqa: F401  (pytest finds fixtures by name here)
    desktop,
    fake_server,
    session_bus,
    short_tmp,
    stand_in,
    system_bus,
)
