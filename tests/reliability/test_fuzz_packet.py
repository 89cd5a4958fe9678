"""The atheris fuzz target (bench/fuzz_packet.py) runs for a fixed, short time in CI and finds
nothing. Longer runs are for bench/ (`-max_total_time=600`); figures in docs/reliability.md."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import REPO

FUZZ_SECONDS = 4


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="needs atheris (pip install atheris; the test extras install it)",
)
def test_fuzz_target_runs_clean_for_a_fixed_time(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "fuzz_packet.py"),
         f"-max_total_time={FUZZ_SECONDS}", "-seed=20261126", "-print_final_stats=1",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=FUZZ_SECONDS + 60, cwd=tmp_path,
    )  # fmt: skip
    log = out.stdout + out.stderr
    crashes = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-"))]
    assert out.returncode == 0 and not crashes, log[-4000:]
    runs = re.search(r"Done (\d+) runs in (\d+) second", log)
    assert runs, log[-2000:]
    print(
        f"fuzzed {runs.group(1)} inputs in {runs.group(2)} s, corpus {len(list(corpus.iterdir()))}"
    )
    assert int(runs.group(1)) > 1000
