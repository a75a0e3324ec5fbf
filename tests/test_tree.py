"""The local output tree (mlsync.tree.local): the one owner of the files of a dataset."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from mlsync.errors import LocalWriteError, LockHeldError, UnsafePathError
from mlsync.runlock import LOCK_FILE_NAME, RunLock
from mlsync.tree.base import ABSENT, ABSENT_NO_PART, FileFacts, ProbeResult, ReadStopped, Tree
from mlsync.tree.local import LocalTree, write_atomically

DATA = b"0123456789" * 100


def test_a_local_tree_is_a_tree(tmp_path: Path) -> None:
    tree: Tree = LocalTree(tmp_path)
    assert tree.state_dir == tmp_path
    assert tree.describe("a/b") == str(tmp_path / "a" / "b")


def test_probe_yields_one_result_per_path_in_order(tmp_path: Path) -> None:
    (tmp_path / "col" / "item").mkdir(parents=True)
    (tmp_path / "col" / "item" / "a.tif").write_bytes(DATA)
    (tmp_path / "col" / "item" / "dir.tif").mkdir()
    mtime = (tmp_path / "col" / "item" / "a.tif").stat().st_mtime_ns
    paths = ["col/item/a.tif", "col/item/b.tif", "col/gone/c.tif", "col/item/dir.tif"]
    assert list(LocalTree(tmp_path).probe(iter(paths))) == [
        ProbeResult(len(DATA), mtime, True),
        ABSENT,  # its folder exists: a part may be there
        ABSENT_NO_PART,  # no folder, no part: no second look
        ABSENT,  # not a regular file
    ]


def count_stats(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ``os.stat`` from now on (``os.path.isdir`` is one), by path."""
    calls: list[str] = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: calls.append(p) or real_stat(p, *a, **k))
    return calls


def test_probe_stats_each_path_of_a_folder_that_exists_and_none_below_an_absent_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f").mkdir()
    calls = count_stats(monkeypatch)
    paths = [f"f/{n}.tif" for n in range(5)] + [f"g/{n}.tif" for n in range(5)]
    results = list(LocalTree(tmp_path).probe(paths))
    assert results == [ABSENT] * 5 + [ABSENT_NO_PART] * 5
    # a stat per path in f and one of f; in g one stat, then g itself and the root
    assert len(calls) == 5 + 1 + 3
    assert calls[-2:] == [str(tmp_path / "g"), f"{tmp_path}/"]


def test_probe_of_a_fresh_tree_makes_a_handful_of_stats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "dataset"  # not made yet: a first plan
    paths = sorted(f"{c}/i{i}/{k}.tif" for c in ("lbl", "src") for i in range(50) for k in "ab")
    calls = count_stats(monkeypatch)
    assert list(LocalTree(root).probe(paths)) == [ABSENT_NO_PART] * len(paths)
    assert len(calls) == 4  # the first path, its folder, its collection, the root


def test_probe_looks_up_from_an_absent_item_folder_once_per_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "src" / "i1").mkdir(parents=True)
    (tmp_path / "src" / "i1" / "a.tif").write_bytes(DATA)
    paths = [f"src/i{i}/{k}.tif" for i in range(4) for k in "ab"] + ["zzz/i0/a.tif"]
    calls = count_stats(monkeypatch)
    results = list(LocalTree(tmp_path).probe(paths))
    assert results[2].size == len(DATA) and results[3] == ABSENT
    assert results[:2] + results[4:] == [ABSENT_NO_PART] * 7
    # src/i0: stat, isdir i0, isdir src; i1: two stats and isdir i1 (b.tif is absent);
    # i2, i3: stat and isdir each (src is known to exist); zzz: stat, isdir zzz/i0, zzz, root
    assert len(calls) == 3 + 3 + 2 * 2 + 4


def test_probe_sees_nothing_below_a_file_where_a_folder_should_be(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"not a folder")
    paths = ["src/i0/a.tif", "src/i0/b.tif", "src/i1/a.tif"]
    assert list(LocalTree(tmp_path).probe(paths)) == [ABSENT_NO_PART] * 3


def test_a_part_is_never_visible_under_the_final_name_until_committed(tmp_path: Path) -> None:
    tree = LocalTree(tmp_path)
    part = tree.open_part("col/item/a.tif", resume=True)
    assert part.offset == 0 and part.stamp is None
    part.write(DATA[:300])
    part.set_stamp(1_600_000_000)
    part.close()
    assert not (tmp_path / "col" / "item" / "a.tif").exists()
    assert tree.part_size("col/item/a.tif") == 300

    resumed = tree.open_part("col/item/a.tif", resume=True)
    assert (resumed.offset, resumed.stamp) == (300, 1_600_000_000)
    prefix = resumed.read_prefix(64)
    assert prefix is not None and b"".join(prefix) == DATA[:300]
    resumed.truncate(300)
    resumed.write(DATA[300:])
    facts = resumed.facts()
    resumed.close()
    assert facts.size == len(DATA)
    assert not (tmp_path / "col" / "item" / "a.tif").exists()
    committed = tree.commit(resumed, sha256=hashlib.sha256(DATA).hexdigest())
    assert committed == FileFacts(len(DATA), facts.mtime_ns)
    assert (tmp_path / "col" / "item" / "a.tif").read_bytes() == DATA
    assert tree.part_size("col/item/a.tif") is None
    assert tree.facts("col/item/a.tif") == committed


def test_a_new_part_drops_a_held_one_and_restart_starts_over(tmp_path: Path) -> None:
    tree = LocalTree(tmp_path)
    (tmp_path / "a.bin.part").write_bytes(b"stale")
    part = tree.open_part("a.bin", resume=False)
    assert part.offset == 0
    part.write(b"new")
    part.close()
    assert (tmp_path / "a.bin.part").read_bytes() == b"new"
    again = tree.open_part("a.bin", resume=True)
    again.restart()
    assert again.offset == 0 and tree.part_size("a.bin") is None
    again.close()


def test_a_part_in_a_vanished_root_is_an_error_not_made_again(tmp_path: Path) -> None:
    part = LocalTree(tmp_path / "gone").open_part("col/a.bin", resume=False)
    with pytest.raises(LocalWriteError, match="vanished"):
        part.write(b"x")
    assert not (tmp_path / "gone").exists()


def test_drop_part_only_if_empty(tmp_path: Path) -> None:
    tree = LocalTree(tmp_path)
    (tmp_path / "a.part").write_bytes(b"")
    (tmp_path / "b.part").write_bytes(b"held")
    tree.drop_part("a", only_if_empty=True)
    tree.drop_part("b", only_if_empty=True)
    assert not (tmp_path / "a.part").exists() and (tmp_path / "b.part").exists()
    tree.drop_part("b")
    assert not (tmp_path / "b.part").exists()


def test_guard_refuses_a_symlink_leading_out(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "col").mkdir(parents=True)
    outside.mkdir()
    (root / "col" / "item").symlink_to(outside, target_is_directory=True)
    (root / "col" / "inner").symlink_to(root / "col", target_is_directory=True)
    tree = LocalTree(root)
    with pytest.raises(UnsafePathError):
        tree.guard("col/item/a.tif")
    with pytest.raises(UnsafePathError):
        tree.guard("col/../../x")
    tree.guard("col/inner/a.tif")  # a link that stays inside is fine
    tree.guard("col/new/a.tif")


def test_guard_memory_stays_flat_over_many_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of millions of items meets as many folders: the guard's caches are bounded, and a
    folder they forgot is simply checked again (an escaping link is still refused)."""
    monkeypatch.setattr("mlsync.tree.local.FOLDER_CACHE_LIMIT", 16)
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "col").mkdir(parents=True)
    outside.mkdir()
    tree = LocalTree(root)
    tree.guard("col/escape/a.tif")  # not there yet: remembered as checked
    for n in range(100):
        (root / "col" / f"item{n}").mkdir()
        tree.guard(f"col/item{n}/a.tif")
    assert len(tree._checked_folders) <= 16 and len(tree._real_folders) <= 16
    (root / "col" / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError):
        tree.guard("col/escape/a.tif")  # long forgotten: looked at again


def test_move_checks_the_source_and_never_clobbers(tmp_path: Path) -> None:
    tree = LocalTree(tmp_path)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "a.tif").write_bytes(DATA)
    sha = "1220" + hashlib.sha256(DATA).hexdigest()
    wrong = "1220" + hashlib.sha256(b"other").hexdigest()
    assert tree.move("old/a.tif", "new/a.tif", size=len(DATA) + 1, checksum=None) is None
    assert tree.move("old/a.tif", "new/a.tif", size=len(DATA), checksum=wrong) is None
    (tmp_path / "taken.tif").write_bytes(b"x")
    assert tree.move("old/a.tif", "taken.tif", size=None, checksum=None) is None
    moved = tree.move("old/a.tif", "new/a.tif", size=len(DATA), checksum=sha)
    assert moved is not None and moved.size == len(DATA)
    assert (tmp_path / "new" / "a.tif").read_bytes() == DATA
    assert not (tmp_path / "old" / "a.tif").exists()


def test_remove_deletes_the_file_and_its_part_inside_only(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "keep.tif").write_bytes(DATA)
    (root / "a.tif").write_bytes(DATA)
    (root / "a.tif.part").write_bytes(DATA)
    (root / "link").symlink_to(outside, target_is_directory=True)
    tree = LocalTree(root)
    tree.remove("a.tif")
    tree.remove("never-there.tif")
    assert not (root / "a.tif").exists() and not (root / "a.tif.part").exists()
    with pytest.raises(UnsafePathError):
        tree.remove("link/keep.tif")
    assert (outside / "keep.tif").read_bytes() == DATA


def test_remove_tree_keeps_links_targets_and_respects_a_held_lock(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "col").mkdir(parents=True)
    outside.mkdir()
    (outside / "keep.tif").write_bytes(DATA)
    (root / "col" / "a.tif").write_bytes(DATA)
    (root / "col" / "link").symlink_to(outside, target_is_directory=True)
    tree = LocalTree(root)
    with RunLock(root / LOCK_FILE_NAME, command="apply"), pytest.raises(LockHeldError):
        tree.remove_tree()
    assert (root / "col" / "a.tif").exists()
    tree.remove_tree()
    assert not root.exists()
    assert (outside / "keep.tif").read_bytes() == DATA


def test_write_atomically_replaces_whole_with_the_mode_asked(tmp_path: Path) -> None:
    path = tmp_path / "profiles"
    write_atomically(path, b"old")
    write_atomically(path, b"secret", mode=0o600)
    assert path.read_bytes() == b"secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profiles"]  # no temporary left


def test_write_atomically_leaves_the_old_content_when_it_fails(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"old")
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomically(tmp_path / "dir", b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]


def test_write_atomic_and_write_many_in_the_tree(tmp_path: Path) -> None:
    tree = LocalTree(tmp_path)
    (tmp_path / "col").mkdir()
    tree.write_atomic("col/collection.json", b"{}")
    assert tree.write_many([("col/i/1.json", b"1"), ("col/i/2.json", b"2")]) == 2
    assert (tmp_path / "col" / "collection.json").read_bytes() == b"{}"
    assert (tmp_path / "col" / "i" / "2.json").read_bytes() == b"2"
    with pytest.raises(UnsafePathError):
        tree.write_atomic("../escape.json", b"{}")


def test_hash_streams_with_progress_and_stops(tmp_path: Path) -> None:
    tree = LocalTree(tmp_path)
    (tmp_path / "a").write_bytes(DATA)
    seen: list[int] = []
    assert tree.hash("a", on_bytes=seen.append) == (hashlib.sha256(DATA).hexdigest(), len(DATA))
    assert sum(seen) == len(DATA)
    stop = threading.Event()
    stop.set()
    with pytest.raises(ReadStopped):
        tree.hash("a", stop=stop)
    with tree.open_read("a") as handle:
        assert handle.read() == DATA
