"""mlsync.lock: deterministic JSON, atomic writes, readable comparisons for --frozen."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from mlsync.errors import FrozenLockError, StateError
from mlsync.lockfile import (
    CatalogPin,
    LockEntry,
    LockFile,
    check_frozen,
    compare,
    describe_differences,
    read_lock,
    write_lock,
)

SHA_OLD = "abc123def4567890" + "0" * 48
SHA_NEW = "def456abc1237890" + "1" * 48


def entry(**changes: object) -> LockEntry:
    fields: dict[str, object] = {
        "id": "demo_dataset",
        "doi": "10.1/demo",
        "catalog": CatalogPin(size=2048, sha256=SHA_OLD, etag='"e1"', last_modified=None),
        "selected_assets": 100,
        "selected_bytes": 1_000_000,
        **changes,
    }
    return LockEntry(**fields)  # type: ignore[arg-type]


def test_json_is_deterministic_and_has_the_documented_shape(tmp_path: Path) -> None:
    lock = LockFile().with_entry("zeta", entry()).with_entry("alpha", entry(doi=None))
    text = lock.to_json()
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    data = json.loads(text)
    assert data["format_version"] == 1
    assert list(data["datasets"]) == ["alpha", "zeta"]
    assert data["datasets"]["zeta"] == {
        "id": "demo_dataset",
        "doi": "10.1/demo",
        "catalog": {"size": 2048, "sha256": SHA_OLD, "etag": '"e1"', "last_modified": None},
        "selected": {"assets": 100, "bytes": 1_000_000},
    }
    assert LockFile.from_json(text) == lock


def test_read_write_round_trip_and_unchanged_file_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "mlsync.lock"
    assert read_lock(path) is None
    lock = LockFile({"demo": entry()})
    assert write_lock(path, lock) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert read_lock(path) == lock
    mtime = path.stat().st_mtime_ns
    assert write_lock(path, lock) is False
    assert path.stat().st_mtime_ns == mtime
    os.chmod(path, 0o600)
    assert write_lock(path, lock.with_entry("demo", entry(selected_assets=5))) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a replaced file keeps its mode
    assert read_lock(path).entry("demo").selected_assets == 5  # type: ignore[union-attr]
    assert [p.name for p in tmp_path.iterdir()] == ["mlsync.lock"]  # no temp file left


def test_failed_write_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mlsync.lock"
    write_lock(path, LockFile({"demo": entry()}))
    before = path.read_text()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_lock(path, LockFile())
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["mlsync.lock"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"format_version": 1}', "missing field 'datasets'"),
        ('{"format_version": "1", "datasets": {}}', "format_version is '1'"),
        ('{"format_version": 2, "datasets": {}}', "newer mlsync; upgrade mlsync"),
        (
            '{"format_version": 1, "datasets": {"d": {"id": 1, "catalog": {"size": 1, '
            '"sha256": "s"}, "selected": {"assets": 1, "bytes": 1}}}}',
            "expected a string",
        ),
        (
            '{"format_version": 1, "datasets": {"d": {"id": "x", "catalog": {"size": -1, '
            '"sha256": "s"}, "selected": {"assets": 1, "bytes": 1}}}}',
            "non-negative integer",
        ),
        ("[]", "expected an object"),
    ],
)
def test_invalid_lock_files_are_state_errors_naming_the_file(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "mlsync.lock"
    path.write_text(content)
    with pytest.raises(StateError, match=re.escape(str(path))) as caught:
        read_lock(path)
    assert message in str(caught.value)


def test_compare_lists_readable_differences() -> None:
    assert compare(entry(), entry()) == []
    now = entry(
        catalog=CatalogPin(size=4096, sha256=SHA_NEW, etag='"e2"'),
        selected_assets=112,
        selected_bytes=1_200_000,
    )
    differences = compare(entry(), now)
    assert differences == [
        "catalog sha256 changed (abc123def456… → def456abc123…)",
        "12 more assets",
        "selected size 1.0 MB → 1.2 MB",
    ]
    assert describe_differences("demo", differences[:2]) == (
        "dataset demo: catalog sha256 changed (abc123def456… → def456abc123…), 12 more assets"
    )
    assert compare(entry(), entry(selected_assets=99, selected_bytes=1_000_001)) == [
        "1 fewer asset",
        "selected size 1,000,000 → 1,000,001 bytes",
    ]
    assert compare(entry(), entry(id="other", doi=None)) == [
        "dataset id changed (demo_dataset → other)",
        "DOI changed (10.1/demo → none)",
    ]
    # ETag or Last-Modified alone is no change: the sha256 decides
    assert compare(entry(), entry(catalog=CatalogPin(2048, SHA_OLD, '"e9"', "today"))) == []


def test_check_frozen(tmp_path: Path) -> None:
    lock_path = tmp_path / "mlsync.lock"
    lock = LockFile({"demo": entry()})
    check_frozen(lock, {"demo": entry()}, lock_path=lock_path)
    with pytest.raises(FrozenLockError, match="does not exist"):
        check_frozen(None, {"demo": entry()}, lock_path=lock_path)
    with pytest.raises(FrozenLockError) as caught:
        check_frozen(
            lock, {"demo": entry(selected_assets=101), "new": entry()}, lock_path=lock_path
        )
    message = str(caught.value)
    assert "dataset demo: 1 more asset" in message
    assert f"dataset new: not in {lock_path}" in message
    assert "mlsync plan" in message
