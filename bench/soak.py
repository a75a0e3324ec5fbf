"""Soak test: kill ``mlsync apply`` at random moments through a faulty hub, then prove nothing
was lost.

    python bench/soak.py                          # 3,000 assets, 20 kills, seed 0
    python bench/soak.py --assets 5000 --kills 40 --seed 7

A local hub (in this process) serves a generated dataset of ``--assets`` small assets
(sources, labels and one documentation file every item shares), ``--big-files`` of which are
enlarged to 3 or 5 MiB in turn, spread through the dataset, so that kills also leave ``.part``
files that are resumed with ``Range`` (the 5 MiB ones written behind, on a thread of their
own). About ``--fault-rate`` of all requests (API, catalog archive
and assets) fail: 500, 503, 429, connection reset, body cut short of its Content-Length,
stall, Range ignored; on top of that, a share of the asset responses serve another version of
the file ("the file changed between two requests": same length, other bytes, other ETag and
Last-Modified), which the catalog's ``file:checksum`` must keep from ever landing.

``mlsync apply`` runs as a subprocess, exactly as a user runs it, and is sent SIGKILL a random
delay (up to ``--max-delay``) after the hub sees its first request, ``--kills`` times: counting
from the first request rather than from the start keeps a slow interpreter start-up on a busy
machine from swallowing the kills. After every kill, while the tree is as the killed process
left it: every file under its final name is byte-identical to the served one (never a half
file), and every file the asset database records as complete is on disk with the recorded
size and mtime. A run that finishes before its kill moment is fine; then a random half of
the downloaded files is deleted (as a user might), so later kills still land mid-transfer.
Finally apply runs to completion and once more (which must transfer nothing), and the whole
tree is verified: every file byte-identical to the hub's, the database agreeing with the disk
(and ``mlsync status``: complete == selected), no ``.part``, no ``err_report.csv``, no run
lock left behind. Exit status 0 only if all of it holds; 1 otherwise. (Temporary files of the
catalog extraction, ``.mlsync-*.tmp``, that a kill left are counted, not failed: ``archive``
documents that they may stay behind and are never read.)

Then, unless ``--no-tiny-fs``, the output goes on a tiny filesystem that fills up: as root,
where ``mount -t tmpfs`` works (else the phase says why it is skipped), a tmpfs of about 40 %
of the dataset's bytes is mounted under the workdir and ``mlsync apply`` runs into it through
the same faulty hub. It must exit 1 saying "the disk is full" and "run apply again", with no
traceback, and every file under its final name must be the served one (and every file the
database records as complete there as recorded); the tmpfs is then grown (``mount -o
remount``), apply runs again and the tree on it must pass the final check above. The tmpfs is
always unmounted (``umount -l``) at the end.

Everything happens in a temporary folder (``--workdir`` to choose it, ``--keep`` to keep it;
it is kept anyway when something fails, with one log per apply run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__":  # not when a test loads this file (bench/ is not on its path)
    from requires import mlsync_or_exit

    mlsync_or_exit("make soak")

import mlsync
from mlsync.localhub import FaultConfig, make_sample, running_hub
from mlsync.localhub.faults import KINDS
from mlsync.localhub.server import RunningHub
from mlsync.transfer import BODY_THREAD_BYTES

DATASET = "soak_v1"
SMALL_ASSET_SIZE = 16 * 1024
BIG_ASSET_SIZES = (3 * 1024 * 1024 + 12_345, BODY_THREAD_BYTES + 1024 * 1024 + 12_345)
"""Every other big file of each size: both > the 1 MiB transfer chunk, so kills leave partial
parts; the second also >= BODY_THREAD_BYTES, so libcurl's engine writes it behind, on a
thread of its own (a kill may then cut a batch between its write and the part's stamp)."""
BIG_KEY = "B02"
ASSETS_PER_SMALL_ITEM = 5  # three bands, a label, the shared documentation
COMMON_KEYS = frozenset({"documentation"})
FAULT_SHARES = {  # of --fault-rate
    "rate_500": 0.20,
    "rate_503": 0.15,
    "rate_429": 0.15,
    "rate_reset": 0.15,
    "rate_truncate": 0.15,
    "rate_stall": 0.10,
    "rate_ignore_range": 0.10,
    "rate_change": 0.10,  # asset responses only, drawn on its own (it combines with the others)
}
STALL_SECONDS = 0.3
STARTUP_TIMEOUT = 60.0
"""How long a run may take to send its first request."""
FINAL_RUN_TIMEOUT = 600.0
TINY_FS_SHARE = 0.40
"""The tiny filesystem's size, as a share of the dataset's bytes."""
TINY_FS_MIN = 256 * 1024
LOCK_FILE = ".mlsync-apply.lock"
DB_FILE = "mlhub_stac_assets.db"
ERR_REPORT = "err_report.csv"

Log = Callable[[str], None]


@dataclass
class TinyFsResult:
    """The tiny-filesystem phase: what was on it when it filled, and after it grew."""

    skipped: str | None = None
    size: int = 0
    used_when_full: int = 0
    exit_when_full: int | None = None
    files_when_full: int = 0
    grown_size: int = 0
    exit_when_grown: int | None = None
    files_verified: int = 0

    def summary(self) -> str:
        if self.skipped is not None:
            return f"skipped ({self.skipped})"
        return (
            f"{self.size / 1e6:,.1f} MB tmpfs full at {self.used_when_full / 1e6:,.1f} MB "
            f"(exit {self.exit_when_full}, {self.files_when_full:,} files complete and "
            f"identical); grown to {self.grown_size / 1e6:,.1f} MB: exit {self.exit_when_grown}, "
            f"{self.files_verified:,} files verified byte-identical"
        )


@dataclass
class SoakResult:
    assets: int
    files: int
    dataset_bytes: int
    kills: int = 0
    runs: int = 0
    finished_before_kill: int = 0
    refills: int = 0
    stale_tmp_files: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    range_requests: int = 0
    bytes_served: int = 0
    files_verified: int = 0
    bytes_lost: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tiny_fs: TinyFsResult | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and self.bytes_lost == 0

    def summary(self) -> str:
        faults = ", ".join(f"{name} {count:,}" for name, count in sorted(self.faults.items()))
        lines = [
            f"dataset:          {self.assets:,} assets, {self.files:,} files, "
            f"{self.dataset_bytes / 1e6:,.1f} MB",
            f"kills survived:   {self.kills} (apply runs {self.runs}, finished before their "
            f"kill {self.finished_before_kill}, files deleted to make work {self.refills} times)",
            f"faults injected:  {sum(self.faults.values()):,} ({faults or 'none'})",
            f"hub traffic:      {self.requests:,} requests, {self.range_requests:,} with Range, "
            f"{self.bytes_served / 1e6:,.1f} MB served",
            f"files verified:   {self.files_verified:,} byte-identical "
            f"(catalog temp files left by kills: {self.stale_tmp_files})",
            f"bytes lost:       {self.bytes_lost:,}",
            *([f"tiny fs:          {self.tiny_fs.summary()}"] if self.tiny_fs else []),
            f"time:             {self.seconds:,.1f} s",
        ]
        if self.problems:
            lines.append(f"PROBLEMS ({len(self.problems)}):")
            lines += [f"  - {p}" for p in self.problems[:50]]
            if len(self.problems) > 50:
                lines.append(f"  ... and {len(self.problems) - 50} more")
        lines.append("SOAK OK" if self.ok else "SOAK FAILED")
        return "\n".join(lines)


# --- what the hub serves, read without mlsync --------------------------------------------------


def served_files(root: Path, dataset: str) -> dict[str, Path]:
    """Destination (relative to the dataset dir) → the file the hub serves for it."""
    files: dict[str, Path] = {}
    for item_json in sorted((root / dataset / "catalog").glob("*/*/*.json")):
        item = json.loads(item_json.read_text())
        if item.get("type") != "Feature":
            continue
        for key, asset in item["assets"].items():
            href = asset["href"].split("?", 1)[0]
            folder = "_common" if key in COMMON_KEYS else item["id"]
            dest = f"{item['collection']}/{folder}/{key}{Path(href).suffix}"
            files[dest] = (item_json.parent / href).resolve()
    return files


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _is_extraction_tmp(path: Path) -> bool:
    return path.name.startswith(".mlsync-") and path.suffix == ".tmp"


def _asset_files(dataset_dir: Path) -> set[str]:
    """Asset files under their final name (the catalog's JSON files excluded)."""
    if not dataset_dir.is_dir():
        return set()
    return {
        p.relative_to(dataset_dir).as_posix()
        for p in dataset_dir.glob("*/*/*")
        if p.is_file() and p.suffix not in (".json", ".part") and not _is_extraction_tmp(p)
    }


def _enlarge(root: Path, dataset: str, count: int, sizes: tuple[int, ...], seed: int) -> None:
    """Make the ``BIG_KEY`` file of ``count`` source items, spread evenly, ``sizes`` bytes
    long in turn (new random bytes; the item's ``file:size`` and ``file:checksum`` follow)."""
    items = sorted((root / dataset / "catalog" / f"{dataset}_source").glob("*/*.json"))
    if count <= 0 or not items:
        return
    rng = random.Random(seed)
    step = len(items) / min(count, len(items))
    for n in range(min(count, len(items))):
        item_json = items[int(n * step)]
        item = json.loads(item_json.read_text())
        asset = item["assets"][BIG_KEY]
        size = sizes[n % len(sizes)]
        data = rng.randbytes(size)
        (item_json.parent / asset["href"]).resolve().write_bytes(data)
        asset["file:size"] = size
        asset["file:checksum"] = "1220" + hashlib.sha256(data).hexdigest()
        item_json.write_text(json.dumps(item, sort_keys=True, separators=(",", ":")))


def _complete_records(dataset_dir: Path) -> dict[str, tuple[int, int]] | None:
    """rel_path → (size, mtime_ns) of the files the database records as complete; None when
    there is no database yet. Read-only, so a check never changes what the next run sees."""
    db = dataset_dir / DB_FILE
    if not db.is_file():
        return None
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if "files" not in tables:
            return {}
        rows = conn.execute("SELECT rel_path, size, mtime_ns FROM files WHERE state = 'complete'")
        return {rel: (int(size), int(mtime)) for rel, size, mtime in rows}
    finally:
        conn.close()


class Checker:
    """Checks a tree against what the hub serves; appends every discrepancy to ``problems``."""

    def __init__(self, root: Path, output_dir: Path, datasets: tuple[str, ...]) -> None:
        self.output_dir = output_dir
        self.expected = {ds: served_files(root, ds) for ds in datasets}
        self.digests = {
            ds: {rel: _sha256(path) for rel, path in files.items()}
            for ds, files in self.expected.items()
        }
        self.problems: list[str] = []
        self.deleted: set[tuple[str, str]] = set()
        """Files the soak deleted: their records may claim them until a run reconciles."""

    def for_output(self, output_dir: Path) -> Checker:
        """A checker of another tree of the same datasets (digests shared, no problems yet)."""
        other = Checker.__new__(Checker)
        other.output_dir = output_dir
        other.expected, other.digests = self.expected, self.digests
        other.problems, other.deleted = [], set()
        return other

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def after_kill(self, label: str) -> None:
        """What must hold whenever a run stops, however: no half file under a final name, and
        no database record of a complete file that is not there as recorded."""
        for ds, expected in self.expected.items():
            dataset_dir = self.output_dir / ds
            for rel in sorted(_asset_files(dataset_dir)):
                if rel not in expected:
                    self.problem(f"{label}: {ds}/{rel} is not an asset of the catalog")
                elif _sha256(dataset_dir / rel) != self.digests[ds][rel]:
                    self.problem(f"{label}: {ds}/{rel} is under its final name but not complete")
            try:
                records = _complete_records(dataset_dir)
            except sqlite3.Error as exc:
                self.problem(f"{label}: {ds}: the asset database cannot be read: {exc}")
                continue
            for rel, (size, mtime_ns) in sorted((records or {}).items()):
                try:
                    stat = (dataset_dir / rel).stat()
                except FileNotFoundError:
                    if (ds, rel) not in self.deleted:
                        self.problem(f"{label}: {ds}/{rel} recorded complete but missing")
                    continue
                if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
                    self.problem(f"{label}: {ds}/{rel} recorded complete with another size/mtime")

    def final(self, result: SoakResult) -> None:
        """The finished tree: complete, identical, recorded, clean."""
        parts = sorted(
            p.relative_to(self.output_dir).as_posix() for p in self.output_dir.rglob("*.part")
        )
        for part in parts:
            self.problem(f"final: {part} left behind")
        for ds, expected in self.expected.items():
            dataset_dir = self.output_dir / ds
            on_disk = _asset_files(dataset_dir)
            for rel, source in sorted(expected.items()):
                path = dataset_dir / rel
                if rel not in on_disk:
                    result.bytes_lost += source.stat().st_size
                    self.problem(f"final: {ds}/{rel} missing")
                elif _sha256(path) != self.digests[ds][rel]:
                    result.bytes_lost += source.stat().st_size
                    self.problem(f"final: {ds}/{rel} differs from the served file")
                else:
                    result.files_verified += 1
            for rel in sorted(on_disk - set(expected)):
                self.problem(f"final: {ds}/{rel} is not an asset of the catalog")
            records = _complete_records(dataset_dir) or {}
            if set(records) != set(expected):
                missing = sorted(set(expected) - set(records))
                extra = sorted(set(records) - set(expected))
                self.problem(
                    f"final: {ds}: database records {len(records):,} complete files for "
                    f"{len(expected):,} assets (not recorded: {missing[:3]}, extra: {extra[:3]})"
                )
            for rel, (size, mtime_ns) in sorted(records.items()):
                path = dataset_dir / rel
                if path.is_file():
                    stat = path.stat()
                    if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
                        self.problem(f"final: {ds}/{rel}: database and disk disagree")
            for leftover in (ERR_REPORT, LOCK_FILE):
                if (dataset_dir / leftover).exists():
                    self.problem(f"final: {ds}/{leftover} exists")
            result.stale_tmp_files += sum(
                1 for p in dataset_dir.rglob(".mlsync-*.tmp") if _is_extraction_tmp(p)
            )


# --- running apply -----------------------------------------------------------------------------


def _environment(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLHUB_")}
    env["MLHUB_HOME"] = str(workdir / "mlhub-home")
    env["COLUMNS"] = "200"
    env["PYTHONUNBUFFERED"] = "1"  # a killed run's log shows how far it got
    package_root = str(Path(mlsync.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


@contextmanager
def _process(
    command: list[str], log_path: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess with its output in ``log_path``; killed on the way out if still running."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _delete_some(checker: Checker, datasets: tuple[str, ...], rng: random.Random) -> int:
    """Delete a random half of the downloaded asset files (at least one)."""
    present = [
        (ds, rel) for ds in datasets for rel in sorted(_asset_files(checker.output_dir / ds))
    ]
    chosen = rng.sample(present, max(1, len(present) // 2)) if present else []
    for ds, rel in chosen:
        (checker.output_dir / ds / rel).unlink()
    checker.deleted = set(chosen)
    return len(chosen)


def _status_counts(command: list[str], env: dict[str, str]) -> dict[str, dict[str, int]]:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=True)
    document = json.loads(done.stdout)
    return {
        row["name"]: {
            "complete": row.get("files", {}).get("complete", -1),
            "selected": row.get("selected_assets", -2),
        }
        for row in document["datasets"]
    }


def _wait_for_first_request(hub: RunningHub, proc: subprocess.Popen[bytes]) -> None:
    seen = hub.stats["requests"]
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while proc.poll() is None and hub.stats["requests"] == seen and time.monotonic() < deadline:
        time.sleep(0.005)


def _used_bytes(path: Path) -> int:
    usage = os.statvfs(path)
    return (usage.f_blocks - usage.f_bfree) * usage.f_frsize


def _run_logged(
    command: list[str], log_path: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run to completion, stdout and stderr apart (and both in ``log_path``)."""
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=FINAL_RUN_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        done = subprocess.CompletedProcess(command, -1, out, err + "\n(timed out)")
    log_path.write_text(
        f"$ {' '.join(command)}\n--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
    )
    return done


def tiny_fs_phase(
    workdir: Path,
    checker: Checker,
    mlsync_cmd: list[str],
    root_url: str,
    env: dict[str, str],
    dataset_bytes: int,
    log: Log,
) -> TinyFsResult:
    """Apply onto a tmpfs of ``TINY_FS_SHARE`` of the dataset, then onto the grown tmpfs (see
    the module docstring). The tmpfs is mounted at ``checker.output_dir``; problems go to
    ``checker``."""
    tiny = TinyFsResult()
    if os.geteuid() != 0:
        tiny.skipped = "mounting a tmpfs needs root"
        log(f"tiny fs: phase skipped: {tiny.skipped}")
        return tiny
    mountpoint = checker.output_dir
    mountpoint.mkdir(parents=True, exist_ok=True)
    tiny.size = max(TINY_FS_MIN, -(-int(dataset_bytes * TINY_FS_SHARE) // 4096) * 4096)
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={tiny.size}", "tmpfs", str(mountpoint)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        tiny.skipped = f"mount -t tmpfs cannot run: {exc}"
    else:
        if mounted.returncode != 0:
            reason = (mounted.stderr or mounted.stdout).strip() or f"exit {mounted.returncode}"
            tiny.skipped = f"mount -t tmpfs failed: {reason}"
    if tiny.skipped is not None:
        log(f"tiny fs: phase skipped: {tiny.skipped}")
        return tiny
    try:
        manifest = workdir / "mlsync-tiny-fs.yaml"
        datasets = "".join(f"  - id: {ds}\n" for ds in checker.expected)
        manifest.write_text(f"version: 1\noutput_dir: {mountpoint}\ndatasets:\n{datasets}")
        command = [*mlsync_cmd, "apply", str(manifest), "--root-url", root_url]
        logs = workdir / "logs"
        log(f"tiny fs: apply onto a {tiny.size / 1e6:,.1f} MB tmpfs at {mountpoint}")
        full = _run_logged(command, logs / "tiny-fs-full.log", env)
        tiny.exit_when_full = full.returncode
        tiny.used_when_full = _used_bytes(mountpoint)
        tiny.files_when_full = sum(len(_asset_files(mountpoint / ds)) for ds in checker.expected)
        log(
            f"tiny fs: apply exited with {full.returncode}, {tiny.used_when_full / 1e6:,.1f} MB "
            f"used, {tiny.files_when_full:,} files under their final name"
        )
        if full.returncode != 1:
            checker.problem(f"full: apply exited with {full.returncode}, not 1")
        for phrase in ("the disk is full", "run apply again"):
            if phrase not in full.stderr:
                checker.problem(f"full: stderr does not say {phrase!r}")
        if "Traceback" in full.stderr + full.stdout:
            checker.problem("full: apply printed a traceback")
        if tiny.files_when_full >= sum(len(files) for files in checker.expected.values()):
            checker.problem("full: every file fit; the filesystem never filled")
        checker.after_kill("full")  # final names identical, the database's claims true

        tiny.grown_size = max(3 * dataset_bytes, dataset_bytes + 64 * 2**20)
        subprocess.run(
            ["mount", "-o", f"remount,size={tiny.grown_size}", str(mountpoint)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        grown = _run_logged(command, logs / "tiny-fs-grown.log", env)
        tiny.exit_when_grown = grown.returncode
        log(
            f"tiny fs: grown to {tiny.grown_size / 1e6:,.1f} MB, "
            f"apply exited with {grown.returncode}"
        )
        if grown.returncode != 0:
            checker.problem(f"grown: apply exited with {grown.returncode}, not 0")
        verified = SoakResult(assets=0, files=0, dataset_bytes=0)
        checker.final(verified)
        tiny.files_verified = verified.files_verified
        if verified.bytes_lost:
            checker.problem(f"grown: {verified.bytes_lost:,} bytes lost")
    except (OSError, subprocess.SubprocessError) as exc:
        checker.problem(f"the phase broke: {exc}")
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)
    return tiny


def _hub_counters(hub: RunningHub, result: SoakResult) -> None:
    stats = hub.stats
    result.faults = dict(stats["faults"])
    result.requests = stats["requests"]
    result.range_requests = sum(stats["range_requests"].values())
    result.bytes_served = stats["bytes_total"]


def run_soak(
    workdir: Path,
    *,
    assets: int = 3000,
    kills: int = 20,
    seed: int = 0,
    fault_rate: float = 0.10,
    big_files: int = 24,
    max_delay: float = 2.5,
    tiny_fs: bool = True,
    log: Log = print,
) -> SoakResult:
    """The whole soak in ``workdir`` (created if needed); see the module docstring."""
    started = time.monotonic()
    rng = random.Random(seed)
    root = workdir / "hub-root"
    output_dir = workdir / "out"
    logs = workdir / "logs"
    for folder in (root, output_dir, logs):
        folder.mkdir(parents=True, exist_ok=True)
    items = max(1, math.ceil(assets / ASSETS_PER_SMALL_ITEM))
    sample = make_sample(
        root, DATASET, items=items, assets_per_item=3, asset_size=SMALL_ASSET_SIZE, seed=seed,
        overwrite=True,
    )  # fmt: skip
    _enlarge(root, DATASET, big_files, BIG_ASSET_SIZES, seed)
    datasets = (DATASET,)
    manifest = workdir / "mlsync.yaml"
    manifest.write_text(f"version: 1\noutput_dir: out\ndatasets:\n  - id: {DATASET}\n")
    served = served_files(root, DATASET)
    result = SoakResult(
        assets=sample.assets,
        files=len(served),
        dataset_bytes=sum(p.stat().st_size for p in served.values()),
    )
    log(
        f"soak: {result.assets:,} assets ({result.files:,} files, "
        f"{result.dataset_bytes / 1e6:,.1f} MB, {big_files} of them "
        f"{' or '.join(f'{size / 2**20:.1f}' for size in BIG_ASSET_SIZES)} MiB); {kills} kills; "
        f"{fault_rate:.0%} faults; seed {seed}"
    )
    checker = Checker(root, output_dir, datasets)
    faults = FaultConfig(
        seed=seed,
        kinds=KINDS,
        stall_seconds=STALL_SECONDS,
        **{name: share * fault_rate for name, share in FAULT_SHARES.items()},  # type: ignore[arg-type]
    )
    env = _environment(workdir)
    mlsync_cmd = [sys.executable, "-m", "mlsync"]
    with running_hub(root, faults=faults, log_level="critical") as hub:
        apply_cmd = [*mlsync_cmd, "apply", str(manifest), "--root-url", hub.url]
        while result.kills < kills:
            result.runs += 1
            delay = rng.uniform(0.0, max_delay)
            with _process(apply_cmd, logs / f"run-{result.runs:03d}.log", env) as proc:
                _wait_for_first_request(hub, proc)
                try:
                    code = proc.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    code = None
            if code is None:
                result.kills += 1
                checker.after_kill(f"kill {result.kills} (run {result.runs}, {delay:.2f} s)")
                log(f"  run {result.runs:3d}: killed {delay:.2f} s after its first request")
                continue
            if code != 0:
                checker.problem(f"run {result.runs} exited with {code} (see its log)")
            result.finished_before_kill += 1
            deleted = _delete_some(checker, datasets, rng)
            result.refills += 1
            log(f"  run {result.runs:3d}: exit {code} before its kill; deleted {deleted:,} files")
        for label in ("final", "no-op"):
            result.runs += 1
            before = hub.stats["by_kind"]["asset"]
            with _process(apply_cmd, logs / f"run-{result.runs:03d}-{label}.log", env) as proc:
                try:
                    code = proc.wait(timeout=FINAL_RUN_TIMEOUT)
                except subprocess.TimeoutExpired:
                    code = None
            log(f"  run {result.runs:3d}: {label} apply exited with {code}")
            if code != 0:
                checker.problem(f"{label} apply exited with {code} (see its log)")
            if label == "no-op" and hub.stats["by_kind"]["asset"] != before:
                checker.problem("the apply after the final one requested asset files again")
        _hub_counters(hub, result)
        tiny_checker = checker.for_output(workdir / "tiny-fs")
        if tiny_fs:
            result.tiny_fs = tiny_fs_phase(
                workdir, tiny_checker, mlsync_cmd, hub.url, env, result.dataset_bytes, log
            )
        else:
            result.tiny_fs = TinyFsResult(skipped="--no-tiny-fs")
    status = _status_counts([*mlsync_cmd, "status", str(manifest), "--json"], env)
    for name, counts in status.items():
        if counts["complete"] != counts["selected"]:
            checker.problem(
                f"status: {name}: {counts['complete']} complete of {counts['selected']}"
            )
    checker.final(result)
    result.problems = checker.problems + [f"tiny fs: {p}" for p in tiny_checker.problems]
    result.seconds = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=int, default=3000, help="small assets (default 3000)")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to survive (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="data, faults and kill moments")
    parser.add_argument("--fault-rate", type=float, default=0.10, help="default 0.10")
    parser.add_argument("--big-files", type=int, default=24, help="multi-MiB files (default 24)")
    parser.add_argument(
        "--max-delay", type=float, default=2.5, help="latest kill moment, seconds (default 2.5)"
    )
    parser.add_argument(
        "--no-tiny-fs",
        dest="tiny_fs",
        action="store_false",
        help="skip the phase with the output on a tiny tmpfs that fills up",
    )
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    args = parser.parse_args(argv)
    if args.assets < 1 or args.kills < 0 or not 0 <= args.fault_rate <= 1:
        parser.error("--assets must be positive, --kills not negative, --fault-rate in [0, 1]")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mlsync-soak-"))
    result = run_soak(
        workdir,
        assets=args.assets,
        kills=args.kills,
        seed=args.seed,
        fault_rate=args.fault_rate,
        big_files=args.big_files,
        max_delay=args.max_delay,
        tiny_fs=args.tiny_fs,
        log=lambda text: print(text, flush=True),
    )
    print(result.summary())
    if result.ok and not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"workdir: {workdir}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
