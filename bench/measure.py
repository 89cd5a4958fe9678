"""Arithmetic and parsing for the benchmarks: dnsperf output, /proc counters, -X importtime,
py-spy's collapsed stacks, and the Markdown table.

Pure functions over text and numbers (tested in test_measure.py); starts nothing, reads no file.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PerfRun:
    """One dnsperf run."""

    sent: int
    completed: int
    lost: int
    qps: float
    avg_latency_s: float
    latencies_s: tuple[float, ...] = ()  # per query, only with -v


def parse_dnsperf(text: str) -> PerfRun:
    def num(label: str) -> float:
        m = re.search(rf"^\s*{label}:\s+([0-9.]+)", text, re.MULTILINE)
        if m is None:
            raise ValueError(f"dnsperf output has no {label!r}:\n{text[-1500:]}")
        return float(m.group(1))

    lat = tuple(float(m.group(1)) for m in re.finditer(r"^> \S+ \S+ \S+ ([0-9.]+)$", text, re.M))
    return PerfRun(
        sent=int(num("Queries sent")),
        completed=int(num("Queries completed")),
        lost=int(num("Queries lost")),
        qps=num("Queries per second"),
        avg_latency_s=num(r"Average Latency \(s\)"),
        latencies_s=lat,
    )


def rcodes(text: str) -> dict[str, int]:
    """'Response codes: NOERROR 10 (50.00%), SERVFAIL 10 (50.00%)' → {'NOERROR': 10, ...}."""
    m = re.search(r"Response codes:\s+(.*)$", text, re.MULTILINE)
    if m is None:
        return {}
    return {code: int(n) for code, n in re.findall(r"([A-Z]+) (\d+) \(", m.group(1))}


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def cpu_ticks(stat_text: str) -> int:
    """utime + stime (clock ticks) from /proc/PID/stat; the command name may hold spaces."""
    fields = stat_text.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15
    return int(fields[11]) + int(fields[12])


def status_field(status_text: str, key: str) -> int:
    """A numeric field of /proc/PID/status ('VmRSS:  1234 kB' → 1234)."""
    m = re.search(rf"^{key}:\s+(\d+)", status_text, re.MULTILINE)
    if m is None:
        raise ValueError(f"no {key} in status")
    return int(m.group(1))


def context_switches(status_texts: Iterable[str]) -> int:
    """Voluntary + involuntary context switches summed over a process's threads."""
    return sum(
        status_field(t, "voluntary_ctxt_switches") + status_field(t, "nonvoluntary_ctxt_switches")
        for t in status_texts
    )


@dataclass(frozen=True)
class ImportCost:
    module: str
    self_us: int
    cumulative_us: int
    depth: int  # 0 = imported directly by the program


def parse_importtime(stderr: str) -> list[ImportCost]:
    """Lines of `python -X importtime`: 'import time:   self |  cumulative | [ ]*module'."""
    out = []
    for m in re.finditer(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$", stderr, re.M):
        out.append(ImportCost(m.group(4), int(m.group(1)), int(m.group(2)), len(m.group(3)) // 2))
    return out


def top_imports(costs: Sequence[ImportCost], *, depth: int, count: int) -> list[ImportCost]:
    """The most expensive imports at one nesting depth (0: what the program imports itself)."""
    picked = [c for c in costs if c.depth <= depth]
    return sorted(picked, key=lambda c: c.cumulative_us, reverse=True)[:count]


def collapsed_profile(text: str) -> tuple[Counter[str], Counter[str], int]:
    """py-spy `--format raw` (collapsed stacks: 'frame;frame;leaf N') → (self, total, samples).

    `self` counts samples whose innermost frame is the function, `total` counts samples with the
    function anywhere on the stack (once per sample)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for f in set(frames):
            total[f] += count
    return own, total, samples


def _frame_name(frame: str) -> str:
    # py-spy: 'function (path/to/file.py:123)' → 'function (file.py)'
    m = re.match(r"^(.*?) \((?:.*/)?([^/:]+)(?::\d+)?\)$", frame.strip())
    return f"{m.group(1)} ({m.group(2)})" if m else frame.strip()


def ratio(value: float, reference: float) -> float:
    return value / reference if reference else float("inf")


def fmt_num(value: float, digits: int = 0) -> str:
    if value != value:  # NaN: not measured
        return "–"
    return f"{value:,.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "–"
    return "met" if ok else "**missed**"
