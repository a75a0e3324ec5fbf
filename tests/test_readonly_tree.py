"""Read-only and permission-denied trees: one clear line, no traceback (issue 15 item 3).

A really read-only file system is a tmpfs remounted ``ro`` (root only; skipped elsewhere). A
folder that refuses us is ``chmod a-w`` for an ordinary user (skipped for root, whom the
kernel lets write anyway), and, for every user, the run lock's ``open`` answering EACCES as
the kernel would. Each command must exit 1 with one ``error:`` line naming the path and the
reason, and lose nothing already on disk.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlsync.localhub.server import RunningHub
from mlsync.runlock import LOCK_FILE_NAME
from tests.conftest import SAMPLE_DATASET, CliResult, isolate_cli

TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_cli(monkeypatch, tmp_path)


class Mount:
    """A small tmpfs that can be switched to read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    point = tmp_path / "mnt"
    point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield Mount(point)
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def manifest_at(folder: Path, output_dir: Path, hub: RunningHub) -> Path:
    manifest = folder / "mlsync.yaml"
    manifest.write_text(
        f"version: 1\nhub: {{root_url: '{hub.url}'}}\noutput_dir: '{output_dir}'\n"
        f"datasets:\n  - id: {SAMPLE_DATASET}\n"
        f"    collections: {{{SAMPLE_DATASET}_source: [B02]}}\n"
    )
    return manifest


def one_error_line(run: CliResult) -> str:
    assert run.code == 1, (run.out, run.err)
    assert TRACEBACK not in run.err
    errors = [line for line in run.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, run.err
    assert run.err.rstrip().endswith(errors[0]), run.err  # the last word, nothing after it
    return errors[0]


def files_under(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_plan_and_apply_on_a_read_only_tree(
    mount: Mount, tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = manifest_at(tmp_path, mount.path, hub)
    assert cli("apply", manifest).code == 0
    before = files_under(mount.path)
    mount.read_only()
    lock = mount.path / SAMPLE_DATASET / LOCK_FILE_NAME
    for args in (("plan",), ("apply",), ("plan", "--json"), ("apply", "--prune", "-q")):
        line = one_error_line(cli(*args, manifest))
        assert f"cannot create the run lock {lock}: the file system is read-only" in line
        assert "must be writable" in line
    assert cli("plan", "--json", manifest).json()["kind"] == "error"
    assert cli("validate", manifest).code == 0  # it writes nothing
    assert files_under(mount.path) == before


def test_a_read_only_manifest_folder_cannot_take_the_lock_file(
    mount: Mount, tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = manifest_at(mount.path, tmp_path / "out", hub)
    mount.read_only()
    line = one_error_line(cli("plan", manifest))
    assert f"cannot write the lock file {mount.path / 'mlsync.lock'}" in line
    assert "the file system is read-only" in line


def test_plan_out_into_a_read_only_folder(
    mount: Mount, tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = manifest_at(tmp_path, tmp_path / "out", hub)
    mount.read_only()
    line = one_error_line(cli("plan", manifest, "--out", mount.path / "plan.json"))
    assert f"cannot write the plan file {mount.path / 'plan.json'}" in line


def test_configure_into_a_read_only_home(
    mount: Mount, monkeypatch: pytest.MonkeyPatch, cli: Callable[..., CliResult]
) -> None:
    """No command checks this one itself: main's net says it in one line too."""
    mount.read_only()
    monkeypatch.setenv("MLHUB_HOME", str(mount.path / "mlhub"))
    line = one_error_line(cli("configure", "--api-key", "k-123456"))
    assert f"{mount.path / 'mlhub'}: the file system is read-only" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_folder_without_write_permission(
    tmp_path: Path, hub: RunningHub, cli: Callable[..., CliResult]
) -> None:
    manifest = manifest_at(tmp_path, tmp_path / "out", hub)
    assert cli("apply", manifest).code == 0
    dataset_dir = tmp_path / "out" / SAMPLE_DATASET
    dataset_dir.chmod(0o555)
    try:
        for command in ("plan", "apply"):
            line = one_error_line(cli(command, manifest))
            assert "permission denied" in line and str(dataset_dir) in line
    finally:
        dataset_dir.chmod(0o755)


def test_a_run_lock_the_kernel_refuses(
    tmp_path: Path,
    hub: RunningHub,
    monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., CliResult],
) -> None:
    """EACCES from creating the run lock, as a folder of another user gives it (for root too,
    whom chmod would not stop)."""
    real_open = os.open

    def refusing_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(LOCK_FILE_NAME):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    manifest = manifest_at(tmp_path, tmp_path / "out", hub)
    monkeypatch.setattr(os, "open", refusing_open)
    lock = tmp_path / "out" / SAMPLE_DATASET / LOCK_FILE_NAME
    for command in ("plan", "apply"):
        line = one_error_line(cli(command, manifest))
        assert f"cannot create the run lock {lock}: permission denied" in line


def test_make_sample_into_a_read_only_hub_folder(
    mount: Mount, cli: Callable[..., CliResult]
) -> None:
    mount.read_only()
    line = one_error_line(cli("hub", "make-sample", mount.path, "--dataset-id", "x_v1"))
    assert f"cannot write {mount.path / 'x_v1'}: the file system is read-only" in line
    assert "Give a hub folder you can write to" in line
