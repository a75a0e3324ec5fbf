"""``.ci/run`` runs the README's lint and test commands from a fresh venv (issue 15 item 13).

The script runs in a copy of its folder with ``make`` and ``python3`` replaced by recorders,
so what it runs, and its exit status when either target fails, are checked in milliseconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FAKE_MAKE = """#!/usr/bin/env bash
echo "make $*" >> "$CI_LOG"
for target in $FAIL; do [[ "$1" == "$target" ]] && exit 2; done
exit 0
"""


def run_ci(tmp_path: Path, fail: str = "") -> tuple[int, list[str], bool]:
    """Exit status, the commands run, and whether a stale ``.venv`` was removed."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy2(REPO / ".ci" / "run", repo / ".ci" / "run")
    (repo / ".venv").mkdir()
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, body in (("make", FAKE_MAKE), ("python3", "#!/bin/sh\necho Python 3.11\n")):
        (tools / name).write_text(body)
        (tools / name).chmod(0o755)
    log = tmp_path / "ci.log"
    log.touch()
    env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}
    env.update(CI_LOG=str(log), FAIL=fail)
    done = subprocess.run(
        [str(repo / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=30
    )
    return done.returncode, log.read_text().splitlines(), not (repo / ".venv").exists()


def test_ci_runs_lint_and_tests_from_a_fresh_venv(tmp_path: Path) -> None:
    code, commands, fresh = run_ci(tmp_path)
    assert code == 0
    assert commands == ["make lint", "make test"]
    assert fresh


@pytest.mark.parametrize("fail", ["lint", "test", "lint test"])
def test_ci_fails_when_lint_or_tests_fail_and_still_runs_both(tmp_path: Path, fail: str) -> None:
    code, commands, _ = run_ci(tmp_path, fail)
    assert code != 0
    assert commands == ["make lint", "make test"]
