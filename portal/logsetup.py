"""Logging for portal's processes: one line per record on stderr, with sd-daemon(3) priority
prefixes when stderr is the journal (JOURNAL_STREAM), timestamps otherwise."""

from __future__ import annotations

import logging
import os
import sys

PRIO = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournalFormatter(logging.Formatter):
    """`<prio>message`: journald reads the priority from the prefix."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{PRIO.get(record.levelno, 6)}>{super().format(record)}"


def setup_logging(level: str, program: str) -> None:
    """`level`: "debug" or anything else for info."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {program} %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if level == "debug" else logging.INFO)
    # httpx/httpcore narrate every request at INFO/DEBUG; portal logs what matters itself
    for noisy in ("httpx", "httpcore", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
