"""apply when the disk refuses a write: a clear error, nothing half-written, a clean resume.

Two ways to make the kernel refuse, each in a real ``mlsync apply`` process:

* ``RLIMIT_FSIZE`` below the size of the assets: every write past it fails (EFBIG), part-way
  through each file. Works for any user.
* a real full disk: the output on a tiny tmpfs (root only, skipped otherwise), where the
  assets, their last buffered bytes and the asset database itself all meet ENOSPC. Space is
  then freed by growing the tmpfs.

The run must stop with one message that names the file and says what to do, keep everything
already complete, present no partial file as complete, and a second run with room must finish
byte for byte.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsync.localhub import make_sample
from mlsync.localhub.server import RunningHub
from tests.test_faults_e2e import assert_synced, asset_files, served_files, sha256

DATASET = "bigfiles_v1"
ASSET_SIZE = 300_000
WRITE_LIMIT = 200_000
"""Below one asset, above the catalog archive and the asset database of this small dataset."""
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from mlsync.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _run(args: list[str], cwd: Path, limit: int | None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLHUB_")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    environ.update(MLHUB_HOME=str(cwd / "mlhub-home"), COLUMNS="300")
    code = ["-m", "mlsync"] if limit is None else ["-c", _LIMITED.format(limit=limit)]
    return subprocess.run(
        [sys.executable, *code, *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_write_failure_stops_cleanly_and_resumes(
    tmp_path: Path, hub_factory: type[RunningHub]
) -> None:
    root = tmp_path / "root"
    make_sample(
        root, DATASET, items=3, assets_per_item=2, asset_size=ASSET_SIZE, seed=2,
        collections=("source",),
    )  # fmt: skip
    hub = hub_factory(root)
    manifest = tmp_path / "mlsync.yaml"
    manifest.write_text(f"version: 1\noutput_dir: out\ndatasets:\n  - id: {DATASET}\n")
    args = ["apply", str(manifest), "--root-url", hub.url, "--workers", "2"]

    failed = _run(args, tmp_path, WRITE_LIMIT)

    assert failed.returncode == 1, failed.stderr
    assert "Traceback" not in failed.stderr
    assert "cannot write" in failed.stderr and "run apply again" in failed.stderr
    dataset_dir = tmp_path / "out" / DATASET
    served = served_files(root, DATASET)
    # Nothing under a final name unless it is the served file, byte for byte.
    for rel in asset_files(dataset_dir):
        assert sha256(dataset_dir / rel) == sha256(served[rel]), rel
    assert len(asset_files(dataset_dir)) < len(served)

    resumed = _run(args, tmp_path, None)

    assert resumed.returncode == 0, resumed.stderr
    assert_synced(tmp_path / "out", root, DATASET)


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 600 KiB tmpfs, unmounted when the test ends; skipped where mounting is not allowed."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_full_disk_stops_cleanly_and_resumes_after_space_is_freed(
    tmp_path: Path, hub_factory: type[RunningHub], tiny_filesystem: Path
) -> None:
    root = tmp_path / "root"
    make_sample(root, DATASET, items=6, assets_per_item=2, asset_size=100_000, seed=3)
    hub = hub_factory(root)
    manifest = tmp_path / "mlsync.yaml"
    manifest.write_text(
        f"version: 1\noutput_dir: {tiny_filesystem}\ndatasets:\n  - id: {DATASET}\n"
    )
    args = ["apply", str(manifest), "--root-url", hub.url, "--workers", "2"]

    failed = _run(args, tmp_path, None)

    assert failed.returncode == 1, failed.stderr
    assert "Traceback" not in failed.stderr
    assert "the disk is full" in failed.stderr and "run apply again" in failed.stderr
    dataset_dir = tiny_filesystem / DATASET
    served = served_files(root, DATASET)
    for rel in asset_files(dataset_dir):
        assert sha256(dataset_dir / rel) == sha256(served[rel]), rel
    assert len(asset_files(dataset_dir)) < len(served)

    subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_filesystem)], check=True)
    resumed = _run(args, tmp_path, None)

    assert resumed.returncode == 0, resumed.stderr
    assert_synced(tiny_filesystem, root, DATASET)
    replanned = _run(["plan", str(manifest), "--root-url", hub.url], tmp_path, None)
    assert "No changes." in replanned.stdout, replanned.stdout + replanned.stderr
