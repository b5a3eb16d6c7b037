"""The benches that need no cluster run, at a size of seconds: a change to what they
drive (the gateway's hooks, the recorder, the codec) that breaks them fails here,
not months later when someone measures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SMALL = {
    "recording.py": ["--statements", "50", "--runs", "1", "--close-statements", "200"],
    "access_facts.py": ["--statements", "50", "--runs", "1"],
    "masking.py": ["--rows", "2000", "--runs", "1", "--cpu-only"],
    "pgwire_codec.py": ["--count", "2000"],
    "sqlcheck.py": ["--count", "5", "--no-pure"],
}


@pytest.mark.parametrize("bench", sorted(SMALL))
def test_a_bench_runs_to_its_end(bench: str) -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / bench), *SMALL[bench]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip(), "the bench printed no figures"
