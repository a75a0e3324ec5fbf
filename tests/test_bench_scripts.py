"""The bench scripts, started by an interpreter that cannot import mlsync (a system
``python3``, here one without site-packages), say so in one line instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("script", "target"),
    [("run.py", "make bench"), ("shards.py", "make bench-shards"), ("soak.py", "make soak")],
)
def test_a_bench_script_without_mlsync_says_so_in_one_line(script: str, target: str) -> None:
    done = subprocess.run(
        [sys.executable, "-S", str(REPO / "bench" / script)],
        cwd=REPO / "bench",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("bench: ") and "cannot run mlsync" in lines[0]
    assert f"`{target}`" in lines[0]
    assert done.stdout == ""
