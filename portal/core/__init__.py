"""Pure decision code: plain data in, plain data out.

Nothing under core/ may import asyncio, socket, logging, httpx, dbus_next, pyroute2 or do file
I/O; tests/core/test_purity.py enforces that.
"""
