"""Large bodies (many libcurl chunks, several MiB): the digest, the checks before the commit,
resumes, retries, stops and disk errors, served for real on 127.0.0.1 to the libcurl engine and
through the ``open_response`` seam to the threaded path.

Written for an attempt at writing and hashing large bodies on a worker thread (measured slower:
see the commit that removed it); they guard whichever path a large body takes.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsync.errors import LocalWriteError, TransferError
from mlsync.hub.curl import CurlEngine, Job
from mlsync.hub.http import RetryPolicy
from mlsync.transfer import FileTransfer, TransferStopped
from mlsync.tree.local import LocalPart
from tests.test_transfer import response

LARGE_BYTES = 4 << 20
"""A body several times this long is large (the worker thread took over at this size)."""

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
        self.send_header("Last-Modified", "Mon, 02 Nov 2026 10:00:00 GMT")
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


def _engine_fetch(
    url: str, dest: Path, **kw: object
) -> tuple[FileTransfer, list[BaseException | None]]:
    transfer = FileTransfer(_unused, dest, label="big", policy=FAST, **kw)  # type: ignore[arg-type]
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
    transfer = FileTransfer(_unused, dest, label="big", policy=FAST, stop=stop)  # type: ignore[arg-type]
    received = 0

    def on_bytes(n: int) -> None:
        nonlocal received
        received += n
        if received >= 2 * LARGE_BYTES:
            stop.set()

    transfer.on_bytes = on_bytes
    jobs = iter([Job(url, transfer)])
    results: list[BaseException | None] = []
    CurlEngine(connections=1, stop=stop).run(
        lambda: next(jobs, None), lambda _j, e: results.append(e)
    )
    assert all(isinstance(error, TransferStopped) for error in results)
    kept = Path(f"{dest}.part").read_bytes()
    assert 0 < len(kept) < len(BIG) and BIG.startswith(kept)
    assert not dest.exists()


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
