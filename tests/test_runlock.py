"""RunLock: one run per output tree, stale locks recovered, flock semantics across processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlsync.errors import LockHeldError
from mlsync.runlock import LOCK_FILE_NAME, LockHolder, RunLock

HOST = socket.gethostname()

HOLD_LOCK = """
import sys, time
from pathlib import Path
from mlsync.runlock import RunLock
with RunLock(Path(sys.argv[1]), command="apply"):
    print("locked", flush=True)
    sys.stdin.read()  # hold until the parent closes our stdin (or kills us)
"""

RACE_FOR_LOCK = """
import sys, time
from pathlib import Path
from mlsync.errors import LockHeldError
from mlsync.runlock import RunLock
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
try:
    with RunLock(Path(sys.argv[1]), command="apply"):
        time.sleep(1.0)
        print("won")
except LockHeldError:
    print("refused")
"""


def write_holder(path: Path, pid: int, host: str = HOST) -> None:
    path.write_text(LockHolder(pid, host, "2024-05-01T12:00:00Z", "apply").to_json())


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def hold_in_child(path: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "locked"
    return child


def test_lock_file_names_the_holder_and_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "ds" / LOCK_FILE_NAME
    with RunLock(path, command="apply") as lock:
        assert lock.held
        data = json.loads(path.read_text())
        assert data["pid"] == os.getpid()
        assert data["host"] == HOST
        assert data["command"] == "apply"
        assert data["started_at"].endswith("Z")
    assert not lock.held
    assert not path.exists()
    lock.release()  # releasing twice is harmless


def test_second_acquire_refuses_naming_the_pid(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE_NAME
    with RunLock(path, command="apply"), pytest.raises(LockHeldError) as caught:
        RunLock(path, command="plan").acquire()
    message = str(caught.value)
    assert f"pid {os.getpid()} on {HOST}" in message
    assert "`mlsync apply`" in message
    assert "Wait for it to finish" in message
    lock = RunLock(path)
    lock.acquire()
    with pytest.raises(RuntimeError, match="already held"):
        lock.acquire()
    lock.release()


def test_lock_left_by_a_dead_process_is_recovered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / LOCK_FILE_NAME
    pid = dead_pid()
    write_holder(path, pid)
    with caplog.at_level(logging.WARNING, "mlsync.runlock"), RunLock(path, command="apply"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"pid {pid}" in caplog.text and "no longer running" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_recycled_pid_without_flock_is_recovered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The pid is alive (it is ours) but nobody holds the flock: the writer is gone."""
    path = tmp_path / LOCK_FILE_NAME
    write_holder(path, os.getppid())
    with caplog.at_level(logging.WARNING, "mlsync.runlock"), RunLock(path):
        pass
    assert "pid was reused" in caplog.text


def test_unreadable_lock_is_stale_only_when_old(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE_NAME
    path.write_text("")
    with pytest.raises(LockHeldError, match="unreadable, and only 0 s old"):
        RunLock(path, stale_after=60).acquire()
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))
    with RunLock(path, stale_after=60):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_lock_from_another_host_is_not_guessed_at(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE_NAME
    write_holder(path, 12345, host="elsewhere.example")
    with pytest.raises(
        LockHeldError, match=r"on elsewhere\.example.*another host.*delete the file"
    ):
        RunLock(path).acquire()
    assert path.exists()


def test_flock_is_held_across_processes_and_dropped_on_kill(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE_NAME
    child = hold_in_child(path)
    try:
        with pytest.raises(LockHeldError, match=f"pid {child.pid} on"):
            RunLock(path).acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert path.exists()  # kill -9 leaves the file behind...
    with RunLock(path):  # ...but not the flock, so it is taken over
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_clean_exit_of_another_process_releases(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE_NAME
    child = hold_in_child(path)
    child.communicate("")  # closing stdin lets it leave its with-block
    assert not path.exists()
    with RunLock(path):
        pass


def test_only_one_of_racing_processes_wins(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE_NAME
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_FOR_LOCK, str(path), str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    time.sleep(0.3)  # let the interpreters start
    go.touch()
    outcomes = sorted(child.communicate(timeout=30)[0].strip() for child in children)
    assert outcomes == ["refused", "refused", "refused", "won"]


def test_release_leaves_a_file_that_is_no_longer_ours(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE_NAME
    lock = RunLock(path)
    lock.acquire()
    path.unlink()
    write_holder(path, 4242)  # someone deleted ours and made their own
    lock.release()
    assert json.loads(path.read_text())["pid"] == 4242


def test_command_never_carries_secrets(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE_NAME
    with RunLock(path, command="apply --api-key SECRET123 mlsync.yaml"):
        assert "SECRET123" not in path.read_text()
        assert json.loads(path.read_text())["command"] == "apply"
    with RunLock(path, command="key=SECRET123"):
        assert "SECRET123" not in path.read_text()


def test_holder_parse_rejects_foreign_content() -> None:
    assert LockHolder.parse(b"") is None
    assert LockHolder.parse(b"\xff") is None
    assert LockHolder.parse(b"[1]") is None
    assert LockHolder.parse(b'{"pid": true, "host": "h"}') is None
    assert LockHolder.parse(b'{"pid": 3, "host": 1}') is None
    holder = LockHolder.parse(b'{"pid": 3, "host": "h"}')
    assert holder == LockHolder(3, "h", "?", "")
    assert holder.describe() == "mlsync (pid 3 on h, since ?)"
