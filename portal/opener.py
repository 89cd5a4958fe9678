"""Opening a URL in the user's browser: a configured command, $BROWSER, or xdg-open.

Never as root: a browser running as root on a hostile network's page is the wrong trade.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

from portal.errors import PortalError


def opener_command(url: str, configured: str = "") -> list[str]:
    """The argv that opens `url` (pure apart from looking up PATH)."""
    template = configured or os.environ.get("BROWSER", "")
    if template:
        # $BROWSER may be a colon-separated list (the old convention); take the first
        first = template.split(":")[0] if not configured else template
        argv = shlex.split(first)
        if any("%s" in a for a in argv):
            return [a.replace("%s", url) for a in argv]
        return [*argv, url]
    for candidate in ("xdg-open", "gio", "sensible-browser"):
        path = shutil.which(candidate)
        if path:
            return [path, "open", url] if candidate == "gio" else [path, url]
    raise PortalError(f"no browser found: set $BROWSER or open {url} yourself")


def open_url(url: str, configured: str = "") -> None:
    if os.geteuid() == 0:
        raise PortalError(f"refusing to start a browser as root; open {url} as your user")
    argv = opener_command(url, configured)
    try:
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        raise PortalError(f"cannot run {argv[0]}: {exc.strerror}") from exc
