"""One mlsync run per output tree: the lock file ``.mlsync-apply.lock`` in the dataset dir.

The reference client has no lock, and two runs on one folder corrupt each other (both append
to the same files, SQLite errors). Here a run holds two things at once:

* the file itself, created with ``O_CREAT | O_EXCL`` and holding JSON
  ``{"pid", "host", "started_at", "command"}`` — so the next run can say who holds it;
* an ``fcntl.flock`` on it for as long as the run lasts. The kernel drops it when the process
  dies, however it dies, so a lock file whose flock can be taken was left by a process that
  is gone — even if its pid now belongs to another process.

Who holds the lock is "whoever holds the flock on the file currently at ``path``". A run that
finds the file checks that: flock taken by someone → :class:`LockHeldError` naming them. Flock
free and the writer on this host → stale: taken over with a warning (atomically: our own file
is renamed over it). Flock free but written on another host (a shared network drive, where
flock cannot be trusted) → refused, with the advice to delete the file if that run is gone.
An unreadable file is stale only once older than ``stale_after`` seconds: a younger one may be
a run that has created it but not written it yet.

The file never holds secrets: ``command`` is cut to its first word and key-like values are
masked. POSIX only (``fcntl``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from mlsync.errors import LocalWriteError, LockHeldError

__all__ = ["LOCK_FILE_NAME", "LockHolder", "RunLock"]

WRITABLE_ADVICE = (
    "plan and apply keep the run lock and the asset database in the dataset directory, so "
    "it must be writable: fix its permissions or mount, or set output_dir to a writable place"
)
log = logging.getLogger("mlsync.runlock")

LOCK_FILE_NAME: Final = ".mlsync-apply.lock"
STALE_AFTER_S: Final = 60.0
"""How old an unreadable lock file must be before it counts as abandoned."""

_MAX_ATTEMPTS = 20
_CREATOR_WAIT_S = 5.0
_MAX_INFO_BYTES = 4096
_SECRET_RE = re.compile(r"(?i)(api[-_]?key|key|token|secret|password)([=:\s]+)\S+")


@dataclass(frozen=True, slots=True)
class LockHolder:
    """What a lock file says about the run that wrote it."""

    pid: int
    host: str
    started_at: str
    command: str

    def describe(self) -> str:
        what = f"`mlsync {self.command}`" if self.command else "mlsync"
        return f"{what} (pid {self.pid} on {self.host}, since {self.started_at})"

    def to_json(self) -> str:
        data = {
            "pid": self.pid,
            "host": self.host,
            "started_at": self.started_at,
            "command": self.command,
        }
        return json.dumps(data, sort_keys=True) + "\n"

    @classmethod
    def parse(cls, raw: bytes) -> LockHolder | None:
        """None when ``raw`` is not a lock file's JSON (empty, cut short, foreign)."""
        try:
            data: Any = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(data, dict):
            return None
        pid, host = data.get("pid"), data.get("host")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return None
        if not isinstance(host, str):
            return None
        return cls(pid, host, str(data.get("started_at", "?")), str(data.get("command", "")))


def _safe_command(command: str) -> str:
    """The subcommand only, with anything key-like masked, whatever the caller passed."""
    first = command.strip().split(maxsplit=1)[0] if command.strip() else ""
    return _SECRET_RE.sub(r"\1\2***", first)[:64]


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not unlinked or replaced since)."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive use of an output tree by one mlsync process; a context manager.

    ``RunLock(dataset_dir / LOCK_FILE_NAME, command="apply")``. Raises
    :class:`LockHeldError` on entry when another live run holds it. Not reentrant: a second
    ``RunLock`` on the same path in the same process is refused like any other.
    """

    def __init__(
        self, path: Path, *, command: str = "", stale_after: float = STALE_AFTER_S
    ) -> None:
        self.path = Path(path)
        self.command = _safe_command(command)
        self.stale_after = stale_after
        self._fd: int | None = None

    @classmethod
    def for_dataset(cls, dataset_dir: Path, *, command: str = "") -> RunLock:
        return cls(dataset_dir / LOCK_FILE_NAME, command=command)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _our_holder(self) -> LockHolder:
        return LockHolder(
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            command=self.command,
        )

    def acquire(self) -> None:
        """Take the lock, taking over a stale one; raise :class:`LockHeldError` if held."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(_MAX_ATTEMPTS):
                try:
                    fd = os.open(
                        self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
                    )
                except FileExistsError:
                    if self._take_over_if_stale():
                        return
                    continue  # it vanished or was replaced meanwhile: look again
                if self._lock_new_file(fd):
                    return
        except (BlockingIOError, FileExistsError):
            raise
        except OSError as exc:  # a read-only or foreign tree: one clear line, not a traceback
            raise LocalWriteError.from_os_error(
                exc, self.path, what="the run lock", action="create", advice=WRITABLE_ADVICE
            ) from None
        raise LockHeldError(
            f"{self.path} keeps changing under us (several mlsync runs starting at once?); "
            "try again"
        )

    def _lock_new_file(self, fd: int) -> bool:
        """Flock and fill a file we just created. Someone inspecting it may hold the flock
        for a moment (they see it empty and young, so they back off): wait for them."""
        try:
            deadline = time.monotonic() + _CREATOR_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            if not _same_file(fd, self.path):
                os.close(fd)
                return False
            os.write(fd, self._our_holder().to_json().encode("utf-8"))
        except BaseException:
            with contextlib.suppress(OSError):
                if _same_file(fd, self.path):
                    os.unlink(self.path)
            os.close(fd)
            raise
        self._fd = fd
        return True

    def _take_over_if_stale(self) -> bool:
        """Inspect an existing lock file: True if we took it over, False to look again."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = LockHolder.parse(os.pread(fd, _MAX_INFO_BYTES, 0))
                raise self._held_error(holder) from None
            if not _same_file(fd, self.path):
                return False
            holder = LockHolder.parse(os.pread(fd, _MAX_INFO_BYTES, 0))
            reason = self._stale_reason(fd, holder)
            log.warning("taking over the lock %s: %s", self.path, reason)
            self._replace_with_ours()
            return True
        finally:
            os.close(fd)  # releases our flock on the old file, now replaced or left alone

    def _stale_reason(self, fd: int, holder: LockHolder | None) -> str:
        """Why a lock file whose flock we could take is abandoned; raise if we cannot tell."""
        if holder is None:
            age = time.time() - os.fstat(fd).st_mtime
            if age < self.stale_after:
                raise LockHeldError(
                    f"{self.path} exists but is unreadable, and only {age:.0f} s old: another "
                    "mlsync may be starting. Try again; if no mlsync runs on this directory, "
                    "delete the file"
                )
            return f"unreadable and {age:.0f} s old"
        if holder.host != socket.gethostname():
            raise LockHeldError(
                f"{self.path} is held by {holder.describe()}; that is another host, so mlsync "
                "cannot check from here whether it still runs. If it does not, delete the file"
            )
        if _pid_alive(holder.pid):
            return f"left by {holder.describe()}, which no longer holds it (the pid was reused)"
        return f"left by {holder.describe()}, which is no longer running"

    def _replace_with_ours(self) -> None:
        """Rename a new, already flocked lock file of ours over the stale one."""
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, self._our_holder().to_json().encode("utf-8"))
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self._fd = fd

    def _held_error(self, holder: LockHolder | None) -> LockHeldError:
        who = holder.describe() if holder is not None else "another mlsync (not yet described)"
        return LockHeldError(
            f"{self.path} is held by {who}: one mlsync run per output directory. Wait for it "
            "to finish, or stop it; a lock whose process has exited is taken over automatically"
        )

    def release(self) -> None:
        """Remove the lock file (only if it is still ours) and drop the flock."""
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        try:
            if _same_file(fd, self.path):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)
