"""Large bodies (many libcurl chunks, several MiB): the digest, the checks before the commit,
resumes, retries, stops and disk errors, served for real on 127.0.0.1 to the libcurl engine and
through the ``open_response`` seam to the threaded path.

The engine's transfers write behind (as the executor makes them): a large body is written and
hashed on a :class:`~mlsync.transfer.BodyThread`, so these tests guard that path; the threaded
path writes inline.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import hashlib
import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsync.errors import LocalWriteError, TransferError
from mlsync.hub.curl import CurlEngine, Job
from mlsync.hub.http import FirstByteTimes, RetryPolicy, Timeouts
from mlsync.transfer import (
    BODY_BACKLOG_BYTES,
    BODY_BATCH_BYTES,
    BODY_THREAD_BYTES,
    BodyThread,
    FileTransfer,
    TransferStopped,
)
from mlsync.tree.local import LocalPart, LocalTree
from tests.test_transfer import response

LARGE_BYTES = BODY_THREAD_BYTES
"""A body several times this long is large (written behind, on a thread of its own)."""
LAST_MODIFIED = "Mon, 02 Nov 2026 10:00:00 GMT"

BIG = os.urandom(3 * LARGE_BYTES + 12345)
BIG_SHA = hashlib.sha256(BIG).hexdigest()
CHECKSUM = "1220" + BIG_SHA
FAST = RetryPolicy(attempts=3, backoff_initial=0.0, backoff_max=0.0)


def _unused(offset: int, if_range: str | None) -> object:
    raise AssertionError("the engine drives the transfer")


class _Big(http.server.BaseHTTPRequestHandler):
    """BIG, honouring ``Range: bytes=N-``; the first ``truncate`` answers stop halfway."""

    protocol_version = "HTTP/1.1"
    seen: list[str]
    truncate: list[int]

    def do_GET(self) -> None:
        start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-"))
        self.seen.append(f"{self.path} from {start}")
        body = BIG[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(BIG) - 1}/{len(BIG)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", LAST_MODIFIED)
        self.end_headers()
        if self.truncate:
            self.truncate.pop()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def big_server() -> Iterator[tuple[str, list[str], list[int]]]:
    seen: list[str] = []
    truncate: list[int] = []
    handler = type("H", (_Big,), {"seen": seen, "truncate": truncate})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/big.bin", seen, truncate
    server.shutdown()
    server.server_close()


def _wait_for_size(path: Path, size: int, seconds: float = 5.0) -> bool:
    """Whether the file at ``path`` holds ``size`` bytes or more within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size >= size:
                return True
        time.sleep(0.005)
    return False


def _engine_fetch(
    url: str, dest: Path, **kw: object
) -> tuple[FileTransfer, list[BaseException | None]]:
    transfer = FileTransfer(_unused, dest, label="big", policy=FAST, write_behind=True, **kw)  # type: ignore[arg-type]
    jobs = iter([Job(url, transfer)])
    results: list[BaseException | None] = []
    CurlEngine(connections=1).run(lambda: next(jobs, None), lambda _j, e: results.append(e))
    return transfer, results


def test_engine_a_large_file_is_verified_against_its_catalog_sha256(
    big_server: tuple[str, list[str], list[int]], tmp_path: Path
) -> None:
    url, _seen, _truncate = big_server
    dest = tmp_path / "out" / "big.bin"
    transfer, results = _engine_fetch(url, dest, checksum=CHECKSUM, expected_size=len(BIG))
    assert results == [None]
    outcome = transfer.finish()
    assert outcome.sha256 == BIG_SHA and outcome.attempts == 1
    assert dest.read_bytes() == BIG


def test_engine_a_large_file_with_a_wrong_checksum_is_never_committed(
    big_server: tuple[str, list[str], list[int]], tmp_path: Path
) -> None:
    url, seen, _truncate = big_server
    dest = tmp_path / "out" / "big.bin"
    wrong = "1220" + hashlib.sha256(b"another file").hexdigest()
    _transfer, results = _engine_fetch(url, dest, checksum=wrong)
    assert len(results) == 1 and isinstance(results[0], TransferError)
    assert "checksum mismatch" in str(results[0])
    assert len(seen) == FAST.attempts  # every attempt restarted from zero
    assert not dest.exists()


def test_engine_a_resume_hashes_the_parts_prefix_then_the_rest(
    big_server: tuple[str, list[str], list[int]], tmp_path: Path
) -> None:
    url, seen, _truncate = big_server
    dest = tmp_path / "out" / "big.bin"
    dest.parent.mkdir()
    kept = LARGE_BYTES // 2 + 7
    Path(f"{dest}.part").write_bytes(BIG[:kept])  # left by an earlier run
    transfer, results = _engine_fetch(url, dest, checksum=CHECKSUM, expected_size=len(BIG))
    assert results == [None]
    assert seen == [f"/big.bin from {kept}"]
    assert transfer.finish().sha256 == BIG_SHA
    assert dest.read_bytes() == BIG


def test_engine_a_truncated_body_is_resumed_and_the_digest_spans_both_attempts(
    big_server: tuple[str, list[str], list[int]], tmp_path: Path
) -> None:
    url, seen, truncate = big_server
    truncate.append(1)
    dest = tmp_path / "out" / "big.bin"
    transfer, results = _engine_fetch(url, dest, checksum=CHECKSUM, expected_size=len(BIG))
    assert results == [None]
    assert len(seen) == 2 and seen[0] == "/big.bin from 0" and seen[1] != seen[0]
    outcome = transfer.finish()
    assert outcome.sha256 == BIG_SHA and outcome.attempts == 2 and outcome.resumed_from == 0
    assert dest.read_bytes() == BIG


def test_engine_a_stop_keeps_a_part_that_is_a_prefix_of_the_file(
    big_server: tuple[str, list[str], list[int]], tmp_path: Path
) -> None:
    url, _seen, _truncate = big_server
    dest = tmp_path / "out" / "big.bin"
    stop = threading.Event()
    transfer = FileTransfer(_unused, dest, label="big", policy=FAST, stop=stop, write_behind=True)  # type: ignore[arg-type]
    received = 0
    on_chunk = transfer.on_chunk

    def receiving(chunk: bytes) -> bool:  # a stop while the body comes in (Ctrl-C, say)
        nonlocal received
        received += len(chunk)
        if received >= 2 * LARGE_BYTES and not stop.is_set():
            # the receiver never waits for its writer: let a batch reach the part first
            assert _wait_for_size(Path(f"{dest}.part"), BODY_BATCH_BYTES)
            stop.set()
        return on_chunk(chunk)

    transfer.on_chunk = receiving  # type: ignore[method-assign]
    jobs = iter([Job(url, transfer)])
    results: list[BaseException | None] = []
    CurlEngine(connections=1, stop=stop).run(
        lambda: next(jobs, None), lambda _j, e: results.append(e)
    )
    assert results and all(isinstance(error, TransferStopped) for error in results)
    kept = Path(f"{dest}.part").read_bytes()
    assert 0 < len(kept) < len(BIG) and BIG.startswith(kept)
    assert not dest.exists()
    # no checksum guards this part: it carries the Last-Modified its bytes were cut from
    stamp = email.utils.parsedate_to_datetime(LAST_MODIFIED).timestamp()
    assert Path(f"{dest}.part").stat().st_mtime == stamp


def test_engine_a_large_body_is_written_behind_in_batches_and_a_small_one_inline(
    big_server: tuple[str, list[str], list[int]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _seen, _truncate = big_server
    write = LocalPart.write
    writes: list[tuple[str, int]] = []

    def recording(self: LocalPart, chunk: bytes) -> None:
        writes.append((threading.current_thread().name, len(chunk)))
        write(self, chunk)

    monkeypatch.setattr(LocalPart, "write", recording)
    engine_thread = threading.current_thread().name
    dest = tmp_path / "out" / "big.bin"
    transfer, results = _engine_fetch(url, dest, checksum=CHECKSUM, expected_size=len(BIG))
    assert results == [None] and transfer.finish().sha256 == BIG_SHA
    assert {name for name, _ in writes} == {"mlsync-body"}
    assert all(size >= BODY_BATCH_BYTES for _, size in writes[:-1])
    assert sum(size for _, size in writes) == len(BIG) and dest.read_bytes() == BIG

    writes.clear()
    small = tmp_path / "out" / "small.bin"
    small.parent.mkdir(exist_ok=True)
    small.with_name("small.bin.part").write_bytes(BIG[: len(BIG) - BODY_THREAD_BYTES + 1])
    transfer, results = _engine_fetch(url, small, checksum=CHECKSUM)  # the rest: < 4 MiB
    assert results == [None] and transfer.finish().sha256 == BIG_SHA
    assert writes and {name for name, _ in writes} == {engine_thread}


class _GatedPart:
    """A part whose writes wait for ``gate``: the disk is the slower side."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.data = bytearray()

    def write(self, chunk: bytes) -> None:
        self.gate.wait()
        self.data += chunk


def test_a_body_thread_refuses_chunks_while_its_backlog_is_full_then_takes_them_again() -> None:
    part = _GatedPart()
    digest = hashlib.sha256()
    written: list[int] = []

    def write(block: bytes) -> None:
        part.write(block)
        digest.update(block)
        written.append(len(block))

    body = BodyThread(write)
    chunk = os.urandom(16 << 10)
    count = 4 * BODY_BACKLOG_BYTES // len(chunk)
    taken = 0
    while taken < count and body.add(chunk):  # the writer is held: the backlog fills
        taken += 1
    assert taken < count and not body.ready()
    # the batch being written, the backlog, and the batch being gathered
    assert BODY_BACKLOG_BYTES <= taken * len(chunk) <= BODY_BACKLOG_BYTES + 3 * BODY_BATCH_BYTES
    assert not body.add(chunk)  # refused again, and nothing taken
    part.gate.set()
    deadline = time.monotonic() + 10
    while taken < count and time.monotonic() < deadline:
        if body.add(chunk):
            taken += 1
        else:
            time.sleep(0.001)
    assert taken == count
    body.finish()
    expected = chunk * count
    assert bytes(part.data) == expected and sum(written) == len(expected)
    assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()


def test_engine_a_writer_that_falls_behind_pauses_its_transfer_only(
    big_server: tuple[str, list[str], list[int]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One file's writes stall (a parallel filesystem's busy server, say): that transfer
    pauses while the other connections go on, and the pause is not taken for a stall of the
    server's."""
    url, seen, _truncate = big_server
    write = LocalPart.write
    gate = threading.Event()
    done: dict[str, float] = {}

    def slow_for_one(self: LocalPart, chunk: bytes) -> None:
        if os.path.basename(self.path).startswith("slow"):
            gate.wait()
        write(self, chunk)

    monkeypatch.setattr(LocalPart, "write", slow_for_one)
    safety = threading.Timer(10, gate.set)  # had the loop waited for the slow writer
    safety.start()
    transfers = {
        name: FileTransfer(
            _unused,  # type: ignore[arg-type]
            tmp_path / "out" / name,
            label=name,
            policy=FAST,
            checksum=CHECKSUM,
            write_behind=True,
        )
        for name in ("slow.bin", "fast.bin")
    }
    jobs = iter([Job(f"{url}?{name}", transfer, name) for name, transfer in transfers.items()])
    results: list[BaseException | None] = []

    def finished(job: Job, error: BaseException | None) -> None:
        done[job.tag] = time.monotonic()
        results.append(error)
        if job.tag == "fast.bin":  # held well past the stall limit below, then let go
            threading.Timer(3.0, gate.set).start()

    engine = CurlEngine(
        connections=2,
        timeouts=Timeouts(speed_time=1.0, read=10.0),  # a body idle for 1 s is cut
        first_bytes=FirstByteTimes(),  # no deadline learned from other tests' answers
    )
    engine.run(lambda: next(jobs, None), finished)
    gate.set()
    safety.cancel()
    assert results == [None, None] and list(done) == ["fast.bin", "slow.bin"]
    assert done["slow.bin"] - done["fast.bin"] >= 2.9
    assert "/big.bin?slow.bin from 0" in seen
    assert [s for s in seen if "slow" in s and not s.endswith(" from 0")] == []  # no resume
    for name, transfer in transfers.items():
        outcome = transfer.finish()
        assert outcome.sha256 == BIG_SHA and outcome.attempts == 1  # the pause was no stall
        assert (tmp_path / "out" / name).read_bytes() == BIG


def test_a_body_thread_raises_a_full_disk_at_the_next_hand_over_and_keeps_a_prefix(
    tmp_path: Path,
) -> None:
    part = LocalTree(tmp_path).open_part("big.bin", resume=False)
    failing = threading.Event()

    def filling(block: bytes) -> None:  # as FileTransfer's block writer reports a full disk
        if failing.is_set():
            full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise LocalWriteError.from_os_error(full, tmp_path / "big.bin.part")
        part.write(block)

    body = BodyThread(filling)
    block = BIG[:BODY_BATCH_BYTES]
    body.add(block)  # a batch: handed over and written
    # watched by its path: the part itself belongs to the body thread (which creates it)
    assert _wait_for_size(tmp_path / "big.bin.part", len(block))
    failing.set()
    with pytest.raises(LocalWriteError, match="No space left"):
        for _ in range(64):  # the failure comes back on a later hand-over (or the finish)
            body.add(block)
        body.finish()
    body.cancel()
    part.close()
    assert (tmp_path / "big.bin.part").read_bytes() == block


def test_engine_a_full_disk_during_a_large_body_is_one_local_write_error(
    big_server: tuple[str, list[str], list[int]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, seen, _truncate = big_server
    write = LocalPart.write
    written = 0

    def filling(self: LocalPart, chunk: bytes) -> None:
        nonlocal written
        if written + len(chunk) > LARGE_BYTES:
            raise LocalWriteError.from_os_error(
                OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), self.path
            )
        written += len(chunk)
        write(self, chunk)

    monkeypatch.setattr(LocalPart, "write", filling)
    dest = tmp_path / "out" / "big.bin"
    _transfer, results = _engine_fetch(url, dest, checksum=CHECKSUM)
    assert len(results) == 1 and isinstance(results[0], LocalWriteError)
    assert "No space left" in str(results[0])
    assert len(seen) == 1  # never retried
    kept = Path(f"{dest}.part").read_bytes()
    assert len(kept) == written and BIG.startswith(kept)


# --- the threaded path ---------------------------------------------------------------------


def _serve_big(offset: int, if_range: str | None = None) -> object:
    body = BIG[offset:]
    headers = {"Content-Length": str(len(body))}
    if offset:
        headers["Content-Range"] = f"bytes {offset}-{len(BIG) - 1}/{len(BIG)}"
    return response(206 if offset else 200, body, headers)


@pytest.mark.parametrize("kept", [0, LARGE_BYTES + 3])
def test_threads_a_large_file_and_a_resumed_one_carry_the_exact_sha256(
    kept: int, tmp_path: Path
) -> None:
    dest = tmp_path / "out" / "big.bin"
    dest.parent.mkdir()
    if kept:
        Path(f"{dest}.part").write_bytes(BIG[:kept])
    transfer = FileTransfer(_serve_big, dest, label="big", policy=FAST, checksum=CHECKSUM)  # type: ignore[arg-type]
    outcome = transfer.run()
    assert outcome.sha256 == BIG_SHA and outcome.resumed_from == kept
    assert dest.read_bytes() == BIG


def test_threads_a_corrupt_large_body_fails_its_checksum(tmp_path: Path) -> None:
    def corrupt(offset: int, if_range: str | None = None) -> object:
        bad = BIG[:-1] + bytes([BIG[-1] ^ 1])
        return response(200, bad, {"Content-Length": str(len(bad))})

    dest = tmp_path / "out" / "big.bin"
    transfer = FileTransfer(corrupt, dest, label="big", policy=FAST, checksum=CHECKSUM)  # type: ignore[arg-type]
    with pytest.raises(TransferError, match="checksum mismatch"):
        transfer.run()
    assert not dest.exists()


def test_threads_a_body_written_behind_waits_for_its_writer_and_loses_no_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver with a thread of its own may write behind too: a chunk the body thread
    refuses (its backlog full) is offered again once the writer caught up, never dropped."""
    write = LocalPart.write
    refused = 0
    add = BodyThread.add

    def slow(self: LocalPart, chunk: bytes) -> None:
        time.sleep(0.05)  # the disk is the slower side: the backlog fills
        write(self, chunk)

    def counting(self: BodyThread, chunk: bytes) -> bool:
        nonlocal refused
        taken = add(self, chunk)
        refused += not taken
        return taken

    monkeypatch.setattr(LocalPart, "write", slow)
    monkeypatch.setattr(BodyThread, "add", counting)
    dest = tmp_path / "out" / "big.bin"
    transfer = FileTransfer(
        _serve_big,  # type: ignore[arg-type]
        dest,
        label="big",
        policy=FAST,
        checksum=CHECKSUM,
        write_behind=True,
    )
    outcome = transfer.run()
    assert refused > 0
    assert outcome.sha256 == BIG_SHA and outcome.attempts == 1
    assert dest.read_bytes() == BIG
