"""Recorded probe answers (tests/data/probe, `curl -i` captures of the lab's portal)."""

from __future__ import annotations

from pathlib import Path

from portal.core.probe_model import ProbeResponse

DATA = Path(__file__).resolve().parents[1] / "data" / "probe"


def recorded(name: str, url: str, addresses: tuple[str, ...] = ()) -> ProbeResponse:
    """A ProbeResponse from a `curl -i` capture in tests/data/probe/."""
    raw = (DATA / name).read_bytes().decode()
    head, _, body = raw.replace("\r\n", "\n").partition("\n\n")
    status_line, *header_lines = head.split("\n")
    headers = tuple(
        (k.strip().lower(), v.strip())
        for k, _, v in (line.partition(":") for line in header_lines)
        if k
    )
    return ProbeResponse(
        url=url, status=int(status_line.split()[1]), headers=headers, body=body, addresses=addresses
    )
