"""A dataset removed from the manifest: plan reports what it left on disk, ``apply --prune``
offers to remove it (asking on a terminal, ``--yes`` to skip the question, refused otherwise).

The CLI runs in-process against the local hub. Only dataset directories this manifest synced
(stamped in their asset database) count: a folder of the user's, a tree synced by another
manifest sharing the output directory, and anything a symbolic link points to are never
reported nor touched.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mlsync.localhub.server import RunningHub
from tests.conftest import CliResult, isolate_cli
from tests.test_workflow_e2e import DATASET, LABELS, SECOND, two_dataset_manifest

CliRunner = Callable[..., CliResult]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path)


class _Terminal(io.StringIO):
    """stdin as a person at a terminal types it."""

    def isatty(self) -> bool:
        return True


def only_flood(path: Path, hub_url: str) -> Path:
    path.write_text(
        f"version: 1\nhub: {{root_url: '{hub_url}'}}\noutput_dir: out\ndatasets:\n"
        f"  - id: {DATASET}\n    name: flood\n    collections: {{{LABELS}: [labels]}}\n"
    )
    return path


def tree_size(top: Path) -> tuple[int, int]:
    """(files, bytes) under ``top``, symbolic links counted as files and never followed."""
    files = size = 0
    for folder, dirs, names in os.walk(top):
        for name in names + [d for d in dirs if (Path(folder) / d).is_symlink()]:
            files += 1
            size += os.lstat(Path(folder) / name).st_size
    return files, size


def synced_then_crops_removed(tmp_path: Path, hub: RunningHub, cli: CliRunner) -> Path:
    manifest = two_dataset_manifest(tmp_path / "sync.yaml", hub.url)
    assert cli("apply", manifest).code == 0
    return only_flood(manifest, hub.url)


def test_plan_reports_a_removed_dataset_in_text_json_and_exit_code(
    tmp_path: Path, hub: RunningHub, cli: CliRunner
) -> None:
    manifest = synced_then_crops_removed(tmp_path, hub, cli)
    crops = tmp_path / "out" / SECOND
    files, size = tree_size(crops)
    archive = tmp_path / "out" / f"{SECOND}.tar.gz"
    assert archive.is_file()
    files, size = files + 1, size + archive.stat().st_size

    run = cli("plan", manifest, "--detailed-exitcode")
    assert run.code == 2, run.err  # apply --prune would change the tree
    assert run.out.splitlines()[-1] == "No changes. 12 assets up to date."  # frozen line
    line = next(line for line in run.out.splitlines() if "removed from the manifest" in line)
    assert "crops" in line and f"{files} files" in line and str(crops) in line

    document = cli("plan", manifest, "--json").json()
    assert document["has_changes"] is True
    assert document["removed_datasets"] == [
        {
            "name": "crops",
            "dataset_dir": str(crops),
            "archive": str(archive),
            "files": files,
            "bytes": size,
        }
    ]
    # Plain apply reports it too, and removes nothing.
    run = cli("apply", manifest)
    assert run.code == 0, run.err
    assert "crops" in run.err and "--prune" in run.err
    assert crops.is_dir() and archive.is_file()


def test_apply_prune_asks_on_a_terminal_and_refuses_without_one(
    tmp_path: Path, hub: RunningHub, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = synced_then_crops_removed(tmp_path, hub, cli)
    crops = tmp_path / "out" / SECOND
    files, _ = tree_size(crops)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (crops / "link").symlink_to(outside, target_is_directory=True)  # must not be followed
    files += 2  # the link and the archive

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal
    run = cli("apply", manifest, "--prune")
    assert run.code == 1
    assert "--yes" in run.err and "crops" in run.err
    assert crops.is_dir()

    monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
    run = cli("apply", manifest, "--prune")
    assert run.code == 0, run.err
    assert "of dataset crops? [y/N]" in run.err and f"remove {files} files" in run.err
    assert crops.is_dir()

    monkeypatch.setattr(sys, "stdin", _Terminal("y\n"))
    run = cli("apply", manifest, "--prune", "--json")
    assert run.code == 0, run.err
    assert [d["name"] for d in run.json()["removed_datasets"]] == ["crops"]
    assert not crops.exists() and not (tmp_path / "out" / f"{SECOND}.tar.gz").exists()
    assert (outside / "keep.txt").read_text() == "mine"
    assert (tmp_path / "out" / DATASET).is_dir()
    assert cli("plan", manifest, "--detailed-exitcode").code == 0


def test_yes_removes_without_asking_and_only_what_this_manifest_synced(
    tmp_path: Path, hub: RunningHub, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = synced_then_crops_removed(tmp_path, hub, cli)
    out = tmp_path / "out"
    # Another manifest syncing into the same output directory, a folder of the user's holding
    # a file named like mlsync's database, and a symbolic link to a synced tree elsewhere.
    other = (tmp_path / "other").mkdir() or tmp_path / "other" / "sync.yaml"
    other.write_text(
        f"version: 1\nhub: {{root_url: '{hub.url}'}}\noutput_dir: ../out\ndatasets:\n"
        "  - name: theirs\n"
        f"    source: {{stac: '{hub.stac_url}{SECOND}/catalog.json'}}\n"
    )
    assert cli("apply", other).code == 0, "the other manifest's sync"
    (out / "mine").mkdir()
    (out / "mine" / "mlhub_stac_assets.db").write_text("not a database")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(out / SECOND, elsewhere)
    (out / "linked").symlink_to(elsewhere, target_is_directory=True)

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    document = cli("plan", manifest, "--json").json()
    assert [d["name"] for d in document["removed_datasets"]] == ["crops"]

    run = cli("apply", manifest, "--prune", "--yes")
    assert run.code == 0, run.err
    assert "[y/N]" not in run.err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [DATASET, f"{DATASET}.tar.gz", "theirs", "mine", "linked"]
    )
    assert (elsewhere / "mlhub_stac_assets.db").is_file()
    assert cli("plan", other, "--detailed-exitcode").code == 0  # theirs: intact, not reported
