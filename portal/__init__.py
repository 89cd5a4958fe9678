"""portal: a captive-portal helper for Linux laptops.

The daemon watches the network, detects captive portals through the network's own DNS,
serves a local DNS stub that answers temporary, network-scoped overrides and forwards the
rest; the CLI and the per-user agent talk to it over D-Bus.
"""

__version__ = "0.1.0"
