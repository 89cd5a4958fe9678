"""Thin adapters to the outside world: sockets, D-Bus, files, HTTP. They translate and carry
out; decisions live in portal.core."""
