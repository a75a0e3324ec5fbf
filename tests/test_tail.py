"""The tail (issue 14 e): a server that does not answer, or stops mid-body, costs a transfer
about the time its answers usually take, not the read timeout; a slow but live one is waited
for. Real hubs on 127.0.0.1 with injected faults; the bounds are generous (a correctness
check, not a timing: ``make bench`` case e measures)."""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from mlsync.cli import sync_cmd
from mlsync.cli.main import main
from mlsync.hub.http import (
    BodyCut,
    FirstByteTimes,
    FirstByteTracker,
    HubSession,
    RetryableStatus,
    RetryPolicy,
    Timeouts,
    TransferClient,
    _FirstByteGate,
    is_retryable,
)
from mlsync.localhub import FaultConfig, make_sample
from mlsync.localhub.faults import FAULTS
from mlsync.localhub.server import RunningHub
from tests.conftest import SAMPLE_DATASET, isolate_cli
from tests.test_faults_e2e import assert_synced

HubFactory = Callable[..., RunningHub]
HANG = 120.0
"""A server that waits minutes before answering: longer than any test may take."""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    isolate_cli(monkeypatch, tmp_path)
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("mlsync").level
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("mlsync").setLevel(saved[2])


def apply(hub: RunningHub, tmp_path: Path, dataset: str = SAMPLE_DATASET) -> tuple[int, float]:
    manifest = tmp_path / "mlsync.yaml"
    manifest.write_text(f"version: 1\noutput_dir: out\ndatasets:\n  - id: {dataset}\n")
    started = time.monotonic()
    code = main(["-q", "apply", str(manifest), "--root-url", hub.url])
    return code, time.monotonic() - started


def asset_requests(hub: RunningHub) -> int:
    return int(hub.stats["by_kind"].get("asset", 0))


# --- the hang fault -------------------------------------------------------------------------


def test_hang_is_a_fault_of_the_spec() -> None:
    assert "hang" in FAULTS
    config = FaultConfig.from_spec("hang=0.03,truncate=0.05,stall_seconds=120")
    assert (config.rate_hang, config.rate_truncate, config.stall_seconds) == (0.03, 0.05, 120)


def test_hang_sends_nothing_until_stall_seconds_then_the_whole_file(
    hub_factory: HubFactory, sample_root: Path
) -> None:
    hub = hub_factory(faults=FaultConfig(fail_first=1, fail_first_fault="hang", stall_seconds=1))
    rel = next((sample_root / SAMPLE_DATASET / "files").rglob("*.tif"))
    url = f"{hub.url}data/{SAMPLE_DATASET}/{rel.relative_to(sample_root / SAMPLE_DATASET)}"
    with pytest.raises(requests.Timeout):  # not even the status line within 0.5 s
        requests.get(url, timeout=(5, 0.5))
    started = time.monotonic()
    again = requests.get(url, timeout=(5, 5))  # fail_first=1: the second one is answered
    assert again.content == rel.read_bytes()
    assert time.monotonic() - started < 1
    assert hub.stats["faults"] == {"hang": 1}


# --- a server that does not answer ----------------------------------------------------------


def test_a_request_without_answer_is_asked_again_long_before_the_read_timeout(
    hub_factory: HubFactory, sample_root: Path, tmp_path: Path
) -> None:
    """Every B04 hangs for two minutes on its first request; the read timeout is a minute.
    The others' answers set the deadline: each B04 is asked again within about a second."""
    faults = FaultConfig(
        fail_first=1, fail_first_fault="hang", stall_seconds=HANG, path_pattern=r"/B04\.tif$"
    )
    hub = hub_factory(faults=faults)
    code, seconds = apply(hub, tmp_path)
    assert code == 0
    expected = assert_synced(tmp_path / "out", sample_root)
    hung = [rel for rel in expected if rel.endswith("/B04.tif")]
    assert hub.stats["faults"] == {"hang": len(hung)}
    assert asset_requests(hub) == len(expected) + len(hung)  # each asked once more, no more
    assert seconds < 30, "the client waited for the hung requests"


def test_an_answer_slower_than_usual_but_under_the_floor_is_waited_for(
    hub_factory: HubFactory, sample_root: Path, tmp_path: Path
) -> None:
    """One file answers after 0.1 s where the others take milliseconds: far beyond their
    usual time, under the floor: it is waited for, never asked twice (a slow but live server
    is not hammered)."""
    hung = next((sample_root / SAMPLE_DATASET / "files").rglob("B04.tif"))
    faults = FaultConfig(
        fail_first=1,
        fail_first_fault="hang",
        stall_seconds=0.1,
        path_pattern=f"{hung.parent.name}/B04\\.tif$",
    )
    hub = hub_factory(faults=faults)
    code, _ = apply(hub, tmp_path)
    assert code == 0
    expected = assert_synced(tmp_path / "out", sample_root)
    assert hub.stats["faults"] == {"hang": 1}
    assert asset_requests(hub) == len(expected)


def test_a_slow_server_is_waited_for_from_the_first_request(
    hub_factory: HubFactory, sample_root: Path, tmp_path: Path
) -> None:
    """Every file takes 0.6 s to answer, from the start: before any answer there is no
    evidence, so no deadline but the read timeout; afterwards the deadline is theirs."""
    hub = hub_factory(faults=FaultConfig(rate_hang=1.0, stall_seconds=0.6))
    code, _ = apply(hub, tmp_path)
    assert code == 0
    expected = assert_synced(tmp_path / "out", sample_root)
    assert asset_requests(hub) == len(expected)


# --- a body that stops ----------------------------------------------------------------------

BIG = "tail_big_v1"


@pytest.fixture(scope="module")
def big_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 3 MiB file: a transfer writes its first MiB before the body stops halfway."""
    root = tmp_path_factory.mktemp("tail-big")
    make_sample(root, BIG, items=1, assets_per_item=1, asset_size=3 << 20, collections=("source",))
    return root


class GetLog(logging.Handler):
    """The byte offsets of the asset GETs logged (``GET url from byte N``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.offsets: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("GET ") and "/data/" in text and " from byte " in text:
            self.offsets.append(int(text.rsplit(" ", 1)[1]))


def test_a_stalled_body_is_cut_by_the_low_speed_limit_and_resumed_from_the_part(
    hub_factory: HubFactory,
    big_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Half the body, then two minutes of nothing: after speed_time (1 s here) the body is
    cut, and the next request asks for the rest from the MiB already written."""
    timeouts = Timeouts(read=60.0, speed_time=1.0)
    monkeypatch.setattr(sync_cmd, "HubSession", functools.partial(HubSession, timeouts=timeouts))
    faults = FaultConfig(fail_first=1, fail_first_fault="stall", stall_seconds=HANG)
    hub = hub_factory(root=big_root, faults=faults)
    http_log = logging.getLogger("mlsync.http")
    monkeypatch.setattr(http_log, "level", logging.DEBUG)  # the CLI sets mlsync's, not this
    http_log.addHandler(gets := GetLog())
    try:
        code, seconds = apply(hub, tmp_path, BIG)
    finally:
        http_log.removeHandler(gets)
    assert code == 0
    assert_synced(tmp_path / "out", big_root, BIG)
    assert seconds < 30, "the client waited for the stalled body"
    assert asset_requests(hub) == 2
    assert hub.stats["range_requests"]["asset"] == 1
    # The rest is asked from where the part ends: at least the first MiB (the threaded client
    # writes whole 1 MiB chunks), at most the cut point (libcurl's engine writes every byte).
    assert gets.offsets[0] == 0 and len(gets.offsets) == 2
    assert 1 << 20 <= gets.offsets[1] <= (3 << 20) // 2


def trickling_server(rate_bytes: int, period: float, length: int) -> tuple[str, socket.socket]:
    """A one-shot HTTP server on 127.0.0.1 that sends ``rate_bytes`` every ``period`` s."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n".encode())
            sent = 0
            try:
                while sent < length:
                    conn.sendall(b"x" * rate_bytes)
                    sent += rate_bytes
                    time.sleep(period)
            except OSError:
                pass  # the client cut it

    threading.Thread(target=serve, daemon=True).start()
    port = server.getsockname()[1]
    return f"http://127.0.0.1:{port}/f", server


def test_a_trickling_body_is_cut_by_the_low_speed_limit() -> None:
    """Bytes keep coming (no read times out), but at 640 bytes/s against a limit of 10,000:
    the body is cut once speed_time has passed."""
    url, server = trickling_server(64, 0.1, 1 << 20)
    client = TransferClient(
        timeouts=Timeouts(read=30, speed_limit=10_000, speed_time=0.5),
        first_bytes=FirstByteTimes(),
    )
    started = time.monotonic()
    slow = pytest.raises(requests.exceptions.ChunkedEncodingError, match="slower than")
    with server, client.open(url) as response, slow:
        for _ in response.iter_content(64):
            pass
    assert time.monotonic() - started < 5
    client.close()


# --- retries --------------------------------------------------------------------------------


def test_the_first_retry_after_a_cut_body_resumes_at_once_later_ones_back_off() -> None:
    """The server answered: a cut body is a broken connection, not a busy server."""
    waits: list[float] = []
    failures = iter([BodyCut("cut"), BodyCut("cut again"), None])

    def attempt() -> str:
        failure = next(failures)
        if failure is not None:
            raise failure
        return "done"

    policy = RetryPolicy(attempts=3, backoff_initial=1.0, backoff_max=1.0)
    retrying = policy.retrying(is_retryable=is_retryable, describe=lambda: "f", sleep=waits.append)
    assert retrying(attempt) == "done"
    assert waits[0] == 0.0
    assert 0.0 < waits[1] <= 1.0


def test_retry_after_still_rules_a_status() -> None:
    waits: list[float] = []
    failures = iter([RetryableStatus(503, "busy", "http://h/f", 2.0), None])

    def attempt() -> str:
        failure = next(failures)
        if failure is not None:
            raise failure
        return "done"

    retrying = RetryPolicy(attempts=2).retrying(
        is_retryable=is_retryable, describe=lambda: "f", sleep=waits.append
    )
    assert retrying(attempt) == "done"
    assert waits == [2.0]


# --- the deadline ---------------------------------------------------------------------------


def test_no_deadline_before_eight_answers_then_three_times_their_p95_above_the_floor() -> None:
    tracker = FirstByteTracker(floor=0.25)
    for _ in range(7):
        tracker.record(0.5)
    assert tracker.deadline is None  # too little evidence: only the read timeout holds
    tracker.record(0.5)
    assert tracker.deadline == pytest.approx(1.5)
    fast = FirstByteTracker(floor=0.25)
    for _ in range(8):
        fast.record(0.005)
    assert fast.deadline == 0.25  # 3 × 5 ms is under the floor


def test_the_deadline_follows_the_recent_answers_only() -> None:
    tracker = FirstByteTracker(floor=0.0)
    for _ in range(64):
        tracker.record(1.0)
    for _ in range(64):  # the server got fast: the window forgets the slow answers
        tracker.record(0.01)
    assert tracker.deadline == pytest.approx(0.03)


def test_a_request_asked_again_waits_twice_as_long_each_time_up_to_the_read_timeout() -> None:
    tracker = FirstByteTracker(floor=0.25)
    for _ in range(8):
        tracker.record(0.001)
    gate = _FirstByteGate(tracker)
    limits = []
    for attempt in range(10):
        gate.attempt = attempt
        limits.append(gate.limit(60.0))
    assert limits == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
