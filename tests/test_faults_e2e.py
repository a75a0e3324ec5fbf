"""apply against a hub that misbehaves: it heals what can be healed and reports the rest exactly.

Every test runs the real command line (in-process) against its own local hub with a seeded
``FaultConfig``, then checks the result independently of mlsync's own bookkeeping: each file
is compared byte for byte (sha256) with the file the hub serves, no ``.part`` is left, the
asset database records exactly the files on disk, and ``err_report.csv`` lists exactly the
assets that could not be fetched.

Faults are mostly injected with ``fail_first`` (the first N requests to every path fail,
later ones succeed), so the outcome does not depend on how threads happen to interleave. The
CLI's retry policy is swapped for one with tiny backoffs (``fast_retries``) where the waits
would only slow the suite down; one test keeps the real defaults.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlsync.assetdb import AssetDB
from mlsync.cli import sync_cmd
from mlsync.cli.main import main
from mlsync.hub.http import HubSession, RetryPolicy, Timeouts
from mlsync.layout import ASSET_DB_NAME, ERR_REPORT_NAME
from mlsync.localhub import FaultConfig
from mlsync.localhub.faults import KINDS
from mlsync.localhub.server import RunningHub
from mlsync.records import FileState
from tests.conftest import SAMPLE_DATASET, isolate_cli

SOURCE = f"{SAMPLE_DATASET}_source"
LABELS = f"{SAMPLE_DATASET}_labels"
FAST = RetryPolicy(attempts=4, backoff_initial=0.01, backoff_max=0.05)  # default: 6
ERR_REPORT_HEADER = [  # the contract: one header row, then one row per failed asset
    *("error", "dataset_id", "rel_path", "asset_url", "http_status", "attempts", "time")
]
COMMON_KEYS = frozenset({"documentation"})

HubFactory = Callable[..., RunningHub]


# --- the catalog as served, read without mlsync ------------------------------------------------


def served_files(root: Path, dataset: str = SAMPLE_DATASET) -> dict[str, Path]:
    """Where each asset file of ``dataset`` lands (relative to the dataset dir) → the file the
    hub serves for it. Shared assets (the sample's ``documentation``) land once in ``_common``."""
    files: dict[str, Path] = {}
    for item_json in sorted((root / dataset / "catalog").glob("*/*/*.json")):
        item = json.loads(item_json.read_text())
        if item.get("type") != "Feature":
            continue
        for key, asset in item["assets"].items():
            href = asset["href"].split("?", 1)[0]
            folder = "_common" if key in COMMON_KEYS else item["id"]
            files[f"{item['collection']}/{folder}/{key}{Path(href).suffix}"] = (
                item_json.parent / href
            ).resolve()
    return files


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def asset_files(dataset_dir: Path) -> set[str]:
    """Asset files under their final name (item and collection JSON excluded)."""
    return {
        p.relative_to(dataset_dir).as_posix()
        for p in dataset_dir.glob("*/*/*")
        if p.is_file() and p.suffix not in (".json", ".part")
    }


def recorded(dataset_dir: Path) -> dict[str, Any]:
    with AssetDB.open(dataset_dir / ASSET_DB_NAME) as db:
        return {f.rel_path: f for f in db.iter_recorded_files()}


def assert_synced(
    output_dir: Path,
    root: Path,
    dataset: str = SAMPLE_DATASET,
    *,
    failed: Collection[str] = (),
    strict_db: bool = True,
    resumable: Collection[str] = (),
) -> dict[str, Path]:
    """Every served file but ``failed`` is on disk byte for byte, nothing else is, no ``.part``
    anywhere, and the database records exactly the files on disk as complete (with their size
    and mtime) and ``failed`` as failed. ``strict_db=False``: the database may miss files a
    killed run put in place (it must never claim a file that is not there). ``resumable``:
    failed files that may keep a ``.part``, which must then be a true prefix of the file."""
    dataset_dir = output_dir / dataset
    expected = served_files(root, dataset)
    assert set(failed) <= set(expected)
    assert set(resumable) <= set(failed)
    parts = sorted(output_dir.rglob("*.part"))
    for part in parts:
        rel = part.relative_to(dataset_dir).as_posix().removesuffix(".part")
        assert rel in resumable, part
        served = expected[rel].read_bytes()
        assert 0 < part.stat().st_size < len(served), rel
        assert served.startswith(part.read_bytes()), rel
    on_disk = asset_files(dataset_dir)
    assert on_disk == set(expected) - set(failed)
    assert [rel for rel in on_disk if sha256(dataset_dir / rel) != sha256(expected[rel])] == []
    records = recorded(dataset_dir)
    complete = {rel for rel, f in records.items() if f.state is FileState.COMPLETE}
    if strict_db:
        assert complete == on_disk
    else:
        assert complete <= on_disk
    for rel in complete:
        stat = (dataset_dir / rel).stat()
        assert (records[rel].recorded_size, records[rel].recorded_mtime_ns) == (
            stat.st_size,
            stat.st_mtime_ns,
        ), rel
    for rel in failed:
        assert records[rel].state is FileState.FAILED, rel
    return expected


def read_err_report(dataset_dir: Path) -> dict[str, dict[str, str]]:
    """err_report.csv by rel_path; checks the header row and one row per asset."""
    with open(dataset_dir / ERR_REPORT_NAME, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ERR_REPORT_HEADER
    by_path = {row[2]: dict(zip(ERR_REPORT_HEADER, row, strict=True)) for row in rows[1:]}
    assert len(by_path) == len(rows) - 1, "an asset is listed twice"
    return by_path


# --- running the CLI ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No user profile or key; logging restored afterwards (the CLI replaces handlers)."""
    isolate_cli(monkeypatch, tmp_path)
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("mlsync").level
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("mlsync").setLevel(saved[2])


def use_session_options(monkeypatch: pytest.MonkeyPatch, **options: Any) -> None:
    """Make the CLI build its hub session with these options (retry policy, timeouts)."""
    monkeypatch.setattr(sync_cmd, "HubSession", functools.partial(HubSession, **options))


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> RetryPolicy:
    """FAST instead of the default policy (the always-failing tests count FAST's attempts in
    err_report.csv, so they notice should this stop taking effect)."""
    use_session_options(monkeypatch, retry=FAST)
    return FAST


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float


@pytest.fixture
def apply(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Callable[..., Run]:
    """``apply(hub, *extra_args)``: ``mlsync apply`` of a manifest selecting the whole sample
    dataset into ``tmp_path/out``, in-process; returns exit code, output and duration."""
    manifest = tmp_path / "mlsync.yaml"
    manifest.write_text(f"version: 1\noutput_dir: out\ndatasets:\n  - id: {SAMPLE_DATASET}\n")

    def run(hub: RunningHub, *extra: str) -> Run:
        capsys.readouterr()
        started = time.monotonic()
        code = main(["apply", str(manifest), "--root-url", hub.url, *extra])
        seconds = time.monotonic() - started
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err, seconds)

    return run


def seed_parts(
    output_dir: Path, files: Mapping[str, Path], *, fraction: float = 0.5, corrupt: bool = False
) -> int:
    """Put the first ``fraction`` of each served file (or as many garbage bytes) in
    ``DEST.part``, as an interrupted run leaves it; returns the bytes seeded."""
    seeded = 0
    for rel, source in files.items():
        data = source.read_bytes()
        head = data[: int(len(data) * fraction)]
        if corrupt:
            head = bytes(b ^ 0xFF for b in head)
        part = output_dir / SAMPLE_DATASET / f"{rel}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(head)
        seeded += len(head)
    return seeded


# --- faults that retries heal ---------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "503", "429", "reset", "truncate"])
def test_each_transient_fault_is_retried_to_an_identical_tree(
    fault: str,
    hub_factory: HubFactory,
    sample_root: Path,
    tmp_path: Path,
    apply: Callable[..., Run],
    fast_retries: RetryPolicy,
) -> None:
    """The first two requests for every asset fail (an error status; a reset before any byte;
    headers promising the full Content-Length then half the body and a closed connection)."""
    hub = hub_factory(faults=FaultConfig(fail_first=2, fail_first_fault=fault))  # type: ignore[arg-type]
    run = apply(hub)
    assert run.code == 0, run.err
    expected = assert_synced(tmp_path / "out", sample_root)
    assert not (tmp_path / "out" / SAMPLE_DATASET / ERR_REPORT_NAME).exists()
    stats = hub.stats
    assert stats["faults"] == {fault: 2 * len(expected)}
    assert stats["by_kind"]["asset"] == 3 * len(expected)
    if fault in ("500", "503", "429"):
        assert stats["by_status"][fault] == 2 * len(expected)
    assert "Apply complete!" in run.out


def test_stall_shorter_than_the_read_timeout_is_waited_out(
    hub_factory: HubFactory, sample_root: Path, tmp_path: Path, apply: Callable[..., Run]
) -> None:
    """Half the body, a pause, then the rest: one request per file, nothing retried."""
    hub = hub_factory(faults=FaultConfig(fail_first=1, fail_first_fault="stall", stall_seconds=0.3))
    run = apply(hub)
    assert run.code == 0, run.err
    expected = assert_synced(tmp_path / "out", sample_root)
    assert hub.stats["faults"] == {"stall": len(expected)}
    assert hub.stats["by_kind"]["asset"] == len(expected)


def test_stall_longer_than_the_read_timeout_is_abandoned_and_retried(
    hub_factory: HubFactory,
    sample_root: Path,
    tmp_path: Path,
    apply: Callable[..., Run],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_session_options(monkeypatch, retry=FAST, timeouts=Timeouts(connect=5.0, read=0.5))
    faults = FaultConfig(
        fail_first=1, fail_first_fault="stall", stall_seconds=6.0, path_pattern=r"/B04\.tif$"
    )
    hub = hub_factory(faults=faults)
    run = apply(hub)
    assert run.code == 0, run.err
    expected = assert_synced(tmp_path / "out", sample_root)
    stalled = [rel for rel in expected if rel.endswith("/B04.tif")]
    assert hub.stats["faults"] == {"stall": len(stalled)}
    assert hub.stats["by_kind"]["asset"] == len(expected) + len(stalled)
    assert run.seconds < 5.0, "the client waited for the stall instead of timing out"


@pytest.mark.parametrize("fault", ["429", "503"])
def test_retry_after_is_honoured(
    fault: str,
    hub_factory: HubFactory,
    sample_root: Path,
    tmp_path: Path,
    apply: Callable[..., Run],
    fast_retries: RetryPolicy,
) -> None:
    """The policy's own backoff is at most 0.05 s here: a wait of a second is Retry-After's."""
    faults = FaultConfig(
        fail_first=1,
        fail_first_fault=fault,  # type: ignore[arg-type]
        retry_after=1,
        path_pattern=r"/B02\.tif$",
    )
    hub = hub_factory(faults=faults)
    run = apply(hub)
    assert run.code == 0, run.err
    assert_synced(tmp_path / "out", sample_root)
    assert hub.stats["by_status"][fault] == 12
    assert run.seconds >= 1.0


@pytest.mark.parametrize("case", ["ranged", "range-ignored", "part-whole"])
def test_resumed_files_complete_identically_however_the_server_answers_the_range(
    case: str,
    hub_factory: HubFactory,
    sample_root: Path,
    tmp_path: Path,
    apply: Callable[..., Run],
) -> None:
    """Every file is partly in ``.part`` and resumed with ``Range``: answered 206 with the
    rest; or 200 with the whole body by a server that ignores Range, which must replace the
    part, not extend it; or, for a part that already holds every byte (a run killed between
    verifying and renaming), 416, after which the part is verified and renamed."""
    out = tmp_path / "out"
    files = served_files(sample_root)
    seeded = seed_parts(out, files, fraction=1.0 if case == "part-whole" else 0.5)
    total = sum(p.stat().st_size for p in files.values())
    hub = hub_factory(faults=FaultConfig(rate_ignore_range=1.0 if case == "range-ignored" else 0))
    run = apply(hub)
    assert run.code == 0, run.err
    assert f"0 to add, {len(files)} to resume" in run.err
    assert_synced(out, sample_root)
    stats = hub.stats
    assert stats["by_kind"]["asset"] == stats["range_requests"]["asset"] == len(files)
    if case == "range-ignored":
        assert stats["faults"] == {"ignore_range": len(files)}
        assert stats["bytes_sent"]["asset"] == total
    elif case == "ranged":
        assert stats["by_status"]["206"] == len(files)
        assert stats["bytes_sent"]["asset"] == total - seeded
    else:
        assert stats["by_status"]["416"] == len(files)


def test_corrupt_part_is_detected_by_checksum_and_downloaded_again(
    hub: RunningHub, sample_root: Path, tmp_path: Path, apply: Callable[..., Run]
) -> None:
    """A ``.part`` of the right length but wrong bytes: the resumed tail makes a file of the
    right size whose sha256 is wrong; it is never renamed into place, but fetched whole."""
    out = tmp_path / "out"
    files = served_files(sample_root)
    seeded = seed_parts(out, files, corrupt=True)
    total = sum(p.stat().st_size for p in files.values())
    run = apply(hub)
    assert run.code == 0, run.err
    assert_synced(out, sample_root)
    assert hub.stats["bytes_sent"]["asset"] == (total - seeded) + total


def test_mixed_random_faults_everywhere_with_the_default_policy(
    hub_factory: HubFactory, sample_root: Path, tmp_path: Path, apply: Callable[..., Run]
) -> None:
    """15 % of all requests (API, catalog archive, assets) fail some way, with the CLI's own
    retry policy; then a second apply through the same faulty hub transfers nothing."""
    faults = FaultConfig(
        seed=20211028,
        rate_500=0.03,
        rate_503=0.02,
        rate_429=0.02,
        rate_reset=0.03,
        rate_truncate=0.03,
        rate_stall=0.02,
        stall_seconds=0.2,
        kinds=KINDS,
    )
    hub = hub_factory(faults=faults)
    run = apply(hub)
    assert run.code == 0, run.err
    assert_synced(tmp_path / "out", sample_root)
    assert faults.total_injected > 0
    asset_requests = hub.stats["by_kind"]["asset"]
    again = apply(hub)
    assert again.code == 0, again.err
    assert hub.stats["by_kind"]["asset"] == asset_requests
    assert "0 transferred" in again.out


# --- faults that cannot be healed: reported exactly -----------------------------------------


@pytest.mark.parametrize("fault", ["500", "reset", "truncate"])
def test_path_that_always_fails_is_reported_and_everything_else_completes(
    fault: str,
    hub_factory: HubFactory,
    sample_root: Path,
    tmp_path: Path,
    apply: Callable[..., Run],
    fast_retries: RetryPolicy,
) -> None:
    faults = FaultConfig(path_pattern=r"_000003/", **{f"rate_{fault}": 1.0})  # type: ignore[arg-type]
    hub = hub_factory(faults=faults)
    run = apply(hub)
    assert run.code == 1
    out = tmp_path / "out"
    failing = {rel for rel in served_files(sample_root) if "_000003/" in rel}
    assert len(failing) == 4  # three bands and one label
    # A body cut short keeps its bytes in a .part for the next run; a reset or 500 has none.
    assert_synced(
        out, sample_root, failed=failing, resumable=failing if fault == "truncate" else ()
    )
    report = read_err_report(out / SAMPLE_DATASET)
    assert set(report) == failing
    for rel, row in report.items():
        assert row["dataset_id"] == SAMPLE_DATASET
        # The status of the last response; a connection that broke has none.
        assert row["http_status"] == ("500" if fault == "500" else "")
        assert row["attempts"] == str(FAST.attempts)
        assert str(FAST.attempts) in row["error"]
        assert row["asset_url"].startswith(f"{hub.data_url}{SAMPLE_DATASET}/files/")
        assert row["asset_url"].endswith(rel.rsplit("/", 1)[1])
        assert row["time"]
    sent = hub.stats["faults"][fault]
    if fault == "reset":
        # libcurl sends a request again, at once, when a kept-alive connection it reused dies
        # before any byte of the answer (a server's idle close looks exactly like this fault),
        # up to 5 times; every one of our attempts still reaches the server.
        assert len(failing) * FAST.attempts <= sent <= len(failing) * FAST.attempts * 6
    else:
        assert sent == len(failing) * FAST.attempts
    assert set(hub.stats["faults"]) == {fault}
    assert "4 failed" in run.out and ERR_REPORT_NAME in run.out


def test_missing_file_is_not_retried_and_the_report_holds_no_key(
    hub_factory: HubFactory,
    sample_root_copy: Path,
    tmp_path: Path,
    apply: Callable[..., Run],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two files deleted on the hub (404); one asset's href carries a signed ``key=`` query.
    The run authenticates with an API key: neither secret may appear in the report."""
    api_key = "hub-api-key-5f3a9c"
    signed = "signed-token-77e1d0"
    monkeypatch.setenv("MLHUB_API_KEY", api_key)
    item = f"{SOURCE}_000005"
    item_json = sample_root_copy / SAMPLE_DATASET / "catalog" / SOURCE / item / f"{item}.json"
    document = json.loads(item_json.read_text())
    document["assets"]["B02"]["href"] += f"?key={signed}"
    item_json.write_text(json.dumps(document))
    expected = served_files(sample_root_copy)
    missing = {f"{SOURCE}/{item}/B02.tif", f"{LABELS}/{LABELS}_000007/labels.geojson"}
    for rel in missing:
        expected[rel].unlink()
    hub = hub_factory(root=sample_root_copy, api_keys=[api_key])

    run = apply(hub)
    assert run.code == 1
    out = tmp_path / "out"
    assert_synced(out, sample_root_copy, failed=missing)
    report_text = (out / SAMPLE_DATASET / ERR_REPORT_NAME).read_text()
    report = read_err_report(out / SAMPLE_DATASET)
    assert set(report) == missing
    assert {row["http_status"] for row in report.values()} == {"404"}
    assert {row["attempts"] for row in report.values()} == {"1"}
    assert report[f"{SOURCE}/{item}/B02.tif"]["asset_url"].endswith("/B02.tif?key=***")
    for secret in (api_key, signed):
        assert secret not in report_text + run.out + run.err
    stats = hub.stats
    assert stats["by_status"]["404"] == len(missing)  # one request each: never retried
    assert stats["by_kind"]["asset"] == len(expected)

    # The next run tries the failed assets once more (and only them), and reports them again.
    again = apply(hub)
    assert again.code == 1
    assert set(read_err_report(out / SAMPLE_DATASET)) == missing
    assert hub.stats["by_kind"]["asset"] == len(expected) + len(missing)


def test_files_changed_upstream_are_reported_and_never_presented_as_complete(
    hub_factory: HubFactory,
    sample_root_copy: Path,
    tmp_path: Path,
    apply: Callable[..., Run],
    fast_retries: RetryPolicy,
) -> None:
    """The catalog says one thing, the hub now serves another: a file that grew, one with the
    same size but other bytes, and one that changed after half of it was downloaded (its
    ``.part`` holds the old first half, so a resume would splice old and new)."""
    out = tmp_path / "out"
    expected = served_files(sample_root_copy)
    grown = f"{SOURCE}/{SOURCE}_000001/B02.tif"
    rewritten = f"{SOURCE}/{SOURCE}_000002/B03.tif"
    spliced = f"{SOURCE}/{SOURCE}_000004/B04.tif"
    seed_parts(out, {spliced: expected[spliced]})
    hub = hub_factory(root=sample_root_copy)
    with open(expected[grown], "ab") as handle:
        handle.write(b"appended upstream")
    for rel in (rewritten, spliced):
        size = expected[rel].stat().st_size
        expected[rel].write_bytes(hashlib.shake_256(rel.encode()).digest(size))
    changed = {grown, rewritten, spliced}

    for _ in range(2):  # and the same again on a second run: nothing is taken for complete
        run = apply(hub)
        assert run.code == 1
        unchanged = {rel: path for rel, path in expected.items() if rel not in changed}
        dataset_dir = out / SAMPLE_DATASET
        assert sorted(out.rglob("*.part")) == []
        assert asset_files(dataset_dir) == set(unchanged)
        assert all(sha256(dataset_dir / rel) == sha256(p) for rel, p in unchanged.items())
        report = read_err_report(dataset_dir)
        assert set(report) == changed
        assert "catalog says" in report[grown]["error"]
        assert "checksum mismatch" in report[rewritten]["error"]
        assert "checksum mismatch" in report[spliced]["error"]
        records = recorded(dataset_dir)
        assert {records[rel].state for rel in changed} == {FileState.FAILED}
