"""The benchmark arithmetic on recorded tool output: `python3 -m pytest bench/test_measure.py`."""

from __future__ import annotations

import measure as m
import pytest

DNSPERF = """DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 15353 -d queries.txt -l 1 -Q 1000 -v
[Status] Sending queries (to 127.0.0.1:15353)
> NOERROR bench-1.example A 0.000115
> NOERROR bench-1.example A 0.000027
> SERVFAIL bench-2.example A 0.001000
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         124258
  Queries completed:    124250 (99.99%)
  Queries lost:         8 (0.01%)

  Response codes:       NOERROR 124249 (100.00%), SERVFAIL 1 (0.00%)
  Average packet size:  request 33, response 49
  Run time (s):         3.001297
  Queries per second:   41401.434113

  Average Latency (s):  0.002193 (min 0.000022, max 0.024916)
  Latency StdDev (s):   0.002591
"""


def test_dnsperf_summary_and_per_query_latencies() -> None:
    run = m.parse_dnsperf(DNSPERF)
    assert (run.sent, run.completed, run.lost) == (124258, 124250, 8)
    assert run.qps == pytest.approx(41401.434113)
    assert run.avg_latency_s == pytest.approx(0.002193)
    assert run.latencies_s == (0.000115, 0.000027, 0.001)
    assert m.rcodes(DNSPERF) == {"NOERROR": 124249, "SERVFAIL": 1}


def test_dnsperf_output_without_statistics_is_an_error() -> None:
    with pytest.raises(ValueError, match="Queries sent"):
        m.parse_dnsperf("Error: socket: Address already in use\n")


def test_percentiles_are_nearest_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert m.percentile(values, 50) == 3.0
    assert m.percentile(values, 99) == 5.0
    assert m.percentile(values, 0) == 1.0
    assert m.percentile([7.0], 50) == 7.0
    with pytest.raises(ValueError):
        m.percentile([], 50)
    assert m.median([3, 1, 2, 10]) == 2.5


def test_cpu_ticks_with_a_command_name_holding_spaces_and_parens() -> None:
    fields = ["S", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "250", "50", "0", "0"]
    stat = "1234 (python3 (x) y) " + " ".join(fields)
    assert m.cpu_ticks(stat) == 300


def test_status_fields_and_context_switches_over_threads() -> None:
    a = (
        "Name:\tportal\nVmRSS:\t  30720 kB\n"
        "voluntary_ctxt_switches:\t10\nnonvoluntary_ctxt_switches:\t2\n"
    )
    b = "Name:\tportal\nvoluntary_ctxt_switches:\t5\nnonvoluntary_ctxt_switches:\t0\n"
    assert m.status_field(a, "VmRSS") == 30720
    assert m.context_switches([a, b]) == 17
    with pytest.raises(ValueError):
        m.status_field(b, "VmRSS")


def test_importtime_lines_nest_by_indent() -> None:
    text = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       100 |        100 |     _io\n"
        "import time:      8893 |     120633 |   asyncio\n"
        "import time:     15589 |     152323 | portal.cli\n"
        "import time:       217 |      43732 |   dbus_next\n"
    )
    costs = m.parse_importtime(text)
    assert [(c.module, c.depth) for c in costs] == [
        ("_io", 2),
        ("asyncio", 1),
        ("portal.cli", 0),
        ("dbus_next", 1),
    ]
    top = m.top_imports(costs, depth=1, count=2)
    assert [c.module for c in top] == ["portal.cli", "asyncio"]
    assert m.top_imports(costs, depth=0, count=5)[0].cumulative_us == 152323


def test_collapsed_stacks_count_self_and_total_once_per_sample() -> None:
    text = (
        "main (portal/cli.py:10);run (portal/daemon.py:5);_sendto (portal/edges/dns_stub.py:9) 30\n"
        "main (portal/cli.py:10);run (portal/daemon.py:5) 10\n"
        "main (portal/cli.py:10);f (a.py:1);f (a.py:2) 5\n"
        "garbage line\n"
    )
    own, total, samples = m.collapsed_profile(text)
    assert samples == 45
    assert own["_sendto (dns_stub.py)"] == 30 and own["run (daemon.py)"] == 10
    assert total["main (cli.py)"] == 45
    assert total["f (a.py)"] == 5  # recursion counts once per sample


def test_markdown_table_escapes_pipes() -> None:
    table = m.markdown_table(["a", "b"], [["1", "x|y"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]


def test_formatting_helpers() -> None:
    assert m.fmt_num(12345.6) == "12,346"
    assert m.fmt_num(float("nan")) == "–"
    assert m.ratio(3.0, 2.0) == 1.5
    assert m.ratio(1.0, 0.0) == float("inf")
    assert (m.verdict(True), m.verdict(False), m.verdict(None)) == ("met", "**missed**", "–")
