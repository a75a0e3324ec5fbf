"""apply against a hub whose files change between two requests: no splice ever lands.

The local hub's ``change`` fault serves an asset as the file's other version: the same length,
other bytes (XOR-ed with a seeded mask), another ETag and Last-Modified. A client that resumes
a part of one version with a ``Range`` request onto the other would splice the two; mlsync
sends ``If-Range`` on resumes (so a changed file comes back whole, 200) and verifies
``file:checksum`` when the catalog has one.

* With the sample's checksums, every file that lands is the served one, byte for byte (a run
  may fail some assets after its retries; the next run finishes them).
* With a catalog that gives neither ``file:size`` nor ``file:checksum``, mlsync cannot tell
  the versions apart, so a file may land as either whole version; what must never land is a
  mix of the two, even though many parts are cut from the changed version (``truncate``
  combined with ``change``), and a part an earlier run cut from one version is never
  continued from the other.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlsync.cli.main import main
from mlsync.localhub import FaultConfig
from mlsync.localhub.faults import Fault, changed_bytes, changed_validators
from mlsync.localhub.server import RunningHub
from tests.conftest import SAMPLE_DATASET, isolate_cli
from tests.test_faults_e2e import (
    FAST,
    assert_synced,
    asset_files,
    served_files,
    use_session_options,
)

MAX_RUNS = 5
SEED = 20211028

HubFactory = Callable[..., RunningHub]


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user profile or key; fast retries (4 attempts, backoffs of at most 0.05 s)."""
    isolate_cli(monkeypatch, tmp_path)
    use_session_options(monkeypatch, retry=FAST)


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("mlsync").level
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("mlsync").setLevel(saved[2])


@pytest.fixture
def apply_until_done(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Callable[[RunningHub], list[Run]]:
    """``mlsync apply`` of the whole sample dataset into ``tmp_path/out`` (in-process), again
    and again until it exits 0 (at most ``MAX_RUNS`` times); every run's result."""
    manifest = tmp_path / "mlsync.yaml"
    manifest.write_text(f"version: 1\noutput_dir: out\ndatasets:\n  - id: {SAMPLE_DATASET}\n")

    def run(hub: RunningHub) -> list[Run]:
        runs: list[Run] = []
        while len(runs) < MAX_RUNS and (not runs or runs[-1].code != 0):
            capsys.readouterr()
            code = main(["apply", str(manifest), "--root-url", hub.url])
            captured = capsys.readouterr()
            runs.append(Run(code, captured.out, captured.err))
            assert code in (0, 1), captured.err
            assert "Traceback" not in captured.err
        return runs

    return run


class RecordingFaults(FaultConfig):
    """A FaultConfig that keeps every ``(fault, changed)`` it drew for an asset request."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.drawn: list[tuple[Fault | None, bool]] = []

    def draw(
        self, kind: str, path: str, *, method: str = "GET", has_range: bool = False
    ) -> tuple[Fault | None, bool]:
        result = super().draw(kind, path, method=method, has_range=has_range)
        if kind == "asset":
            self.drawn.append(result)
        return result


def _name(root: Path, source: Path, dataset: str = SAMPLE_DATASET) -> str:
    """The file's name as the change fault keys it: ``{dataset}/{path in the dataset}``."""
    return f"{dataset}/{source.relative_to((root / dataset).resolve()).as_posix()}"


def _strip_size_and_checksum(root: Path, dataset: str = SAMPLE_DATASET) -> int:
    """Remove ``file:size`` and ``file:checksum`` from every asset of the dataset's items
    (before the hub starts: it builds and caches its catalog archive from these files)."""
    stripped = 0
    for item_json in sorted((root / dataset / "catalog").glob("*/*/*.json")):
        item = json.loads(item_json.read_text())
        if item.get("type") != "Feature":
            continue
        for asset in item["assets"].values():
            stripped += asset.pop("file:size", None) is not None
            stripped += asset.pop("file:checksum", None) is not None
        item_json.write_text(json.dumps(item))
    return stripped


def test_changed_files_never_land_when_the_catalog_has_checksums(
    hub_factory: HubFactory,
    sample_root: Path,
    tmp_path: Path,
    apply_until_done: Callable[[RunningHub], list[Run]],
) -> None:
    faults = RecordingFaults(seed=SEED, rate_change=0.3, rate_truncate=0.1)
    hub = hub_factory(faults=faults)

    runs = apply_until_done(hub)

    assert runs[-1].code == 0, [r.err for r in runs]
    assert_synced(tmp_path / "out", sample_root)  # byte for byte, no .part, db == disk
    stats = hub.stats
    assert stats["faults"]["change"] >= 10
    assert ("truncate", True) in faults.drawn  # parts were cut from the other version too
    assert stats["by_kind"]["asset"] > len(served_files(sample_root))  # changes were refused


def test_a_part_of_one_version_is_never_spliced_onto_the_other_without_checksums(
    hub_factory: HubFactory,
    sample_root_copy: Path,
    tmp_path: Path,
    apply_until_done: Callable[[RunningHub], list[Run]],
) -> None:
    root = sample_root_copy
    assert _strip_size_and_checksum(root) > 0
    served = served_files(root)
    faults = RecordingFaults(seed=SEED, rate_change=0.3, rate_truncate=0.3)
    hub = hub_factory(root=root, faults=faults)

    runs = apply_until_done(hub)

    assert runs[-1].code == 0, [r.err for r in runs]
    out = tmp_path / "out" / SAMPLE_DATASET
    assert sorted(out.rglob("*.part")) == []
    assert asset_files(out) == set(served)
    whole_versions = {"served": 0, "changed": 0}
    for rel, source in sorted(served.items()):
        real = source.read_bytes()
        landed = (out / rel).read_bytes()
        other = changed_bytes(SEED, _name(root, source), real)
        whole = landed in (real, other)
        assert whole, f"{rel}: a mix of two versions landed"
        whole_versions["served" if landed == real else "changed"] += 1
    # The mix the test is about happened: bodies of the changed version cut short, so parts
    # of it that a resume could have continued from the served version (and the reverse).
    assert faults.drawn.count(("truncate", True)) >= 3
    assert faults.drawn.count(("truncate", False)) >= 3
    assert hub.stats["range_requests"]["asset"] >= 3
    assert whole_versions["served"] > 0


def test_a_part_an_earlier_run_cut_from_the_other_version_is_fetched_again(
    hub_factory: HubFactory,
    sample_root_copy: Path,
    tmp_path: Path,
    apply_until_done: Callable[[RunningHub], list[Run]],
) -> None:
    """No checksum, no size: each ``.part`` holds the first half of the changed version,
    stamped with its Last-Modified as mlsync stamps parts; the hub now serves the real file.
    ``If-Range`` carries the part's date, the hub answers 200, and no half lands spliced."""
    root = sample_root_copy
    _strip_size_and_checksum(root)
    served = served_files(root)
    out = tmp_path / "out" / SAMPLE_DATASET
    for rel, source in served.items():
        real = source.read_bytes()
        name = _name(root, source)
        _, modified = changed_validators(SEED, name, '"x"', source.stat().st_mtime)
        stamp = math.floor(modified)
        assert email.utils.formatdate(stamp, usegmt=True) != email.utils.formatdate(
            source.stat().st_mtime, usegmt=True
        )
        part = out / f"{rel}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(changed_bytes(SEED, name, real)[: len(real) // 2])
        os.utime(part, (stamp, stamp))
    hub = hub_factory(root=root)
    started = time.monotonic()

    runs = apply_until_done(hub)

    assert [r.code for r in runs] == [0], [r.err for r in runs]
    assert f"{len(served)} to resume" in runs[0].err + runs[0].out
    assert_synced(tmp_path / "out", root)
    stats = hub.stats
    assert stats["range_requests"]["asset"] == len(served)  # each part was offered...
    assert stats["by_status"].get("206", 0) == 0  # ...and refused: a 200 each
    assert time.monotonic() - started < 60


def test_a_part_of_the_other_version_is_not_spliced_when_the_catalog_has_only_sizes(
    hub_factory: HubFactory,
    sample_root_copy: Path,
    tmp_path: Path,
    apply_until_done: Callable[[RunningHub], list[Run]],
) -> None:
    """As above, but the catalog keeps ``file:size``: the size cannot tell two versions of
    the same length apart, so it does not guard the part."""
    root = sample_root_copy
    for item_json in sorted((root / SAMPLE_DATASET / "catalog").glob("*/*/*.json")):
        item = json.loads(item_json.read_text())
        for asset in item.get("assets", {}).values():
            asset.pop("file:checksum", None)
        item_json.write_text(json.dumps(item))
    served = served_files(root)
    out = tmp_path / "out" / SAMPLE_DATASET
    for rel, source in served.items():
        real = source.read_bytes()
        part = out / f"{rel}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(changed_bytes(SEED, _name(root, source), real)[: len(real) // 2])
    hub = hub_factory(root=root)

    runs = apply_until_done(hub)

    assert [r.code for r in runs] == [0], [r.err for r in runs]
    assert_synced(tmp_path / "out", root)
