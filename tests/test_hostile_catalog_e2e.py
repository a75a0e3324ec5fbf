"""Hostile catalogs end to end: the real local hub serves them, ``mlsync apply`` syncs them.

A sample hub ROOT (``make_sample``) is edited *before* its hub starts (the hub caches its
archive under ``ROOT/.mlsync`` by a fingerprint of the catalog, and a fresh hub on a fresh
ROOT always builds from the edited files). The edits give some items hostile ``id`` fields
and some assets hostile keys — ``..``, ``/``, ``\\``, NUL, 300-byte names, Windows device
names, a trailing dot, an absolute path into a canary folder — plus an asset whose href is
``file:///etc/passwd`` and one on a closed port, next to normal items that must still sync.
The item *folders* keep their sample names, so the archive itself is well formed and each
hostile value reaches the client's ingest, which must refuse that asset alone.

A folder name the hub can store but a client must not extract (``..\\..\\escape``, ``CON``,
``trail.``) makes the hub serve a hostile *archive*: the client refuses it whole. Names with
``/`` or NUL cannot be folder names, so the hub cannot build such an archive at all.

The main property, for every drawn catalog: nothing is created or changed anywhere outside
the output directory (a snapshot of the whole ``tmp_path`` tree, the hub ROOT and the output
directory left out, and a sweep of every ancestor of the output directory for the escape
marker), a canary directory next to the output directory stays empty, and mlsync's
``mlsync.lock`` next to the manifest is the only file written beside it.

Values that once broke the output or the ingest have their own tests at the end (rich markup
and emoji codes in catalog values, a lone surrogate in an item id).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import itertools
import json
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from mlsync.cli import sync_cmd
from mlsync.hub.http import HubSession, RetryPolicy
from mlsync.localhub import make_sample, running_hub
from mlsync.sources.base import MAX_PROBLEM_NOTICES
from tests.conftest import CliResult, isolate_cli

DS = "hostile_v1"
SOURCE = f"{DS}_source"
LABELS = f"{DS}_labels"
ITEMS = 4
BANDS = ("B02", "B03")
ASSET_SIZE = 300
MARKER = "mlsync-escape"
"""Every escaping name of the strategies ends in this, so a write that escaped far (out of
``tmp_path``) is still found by :func:`marker_sweep`."""
CANARY_TOKEN = "@canary@"
"""Stands for the example's canary directory in a drawn name (absolute paths into it)."""
FAST = RetryPolicy(attempts=2, backoff_initial=0.001, backoff_max=0.002)
PASSWD_HREF = "file:///etc/passwd"
TRACEBACK = "Traceback (most recent call last)"
_example_numbers = itertools.count()


# --- hostile names ------------------------------------------------------------------------

_word = st.text(alphabet="abcXYZ019._-~ é€[]:", max_size=8)  # markup and emoji codes too
_separators = st.sampled_from(["/", "\\", "\x00", "/../", "\\..\\", "/./"])

hostile_names = st.one_of(
    st.sampled_from(
        [
            ".",
            "..",
            f"../../{MARKER}",
            f"../../../../../../../../../../{MARKER}",
            f"..\\..\\{MARKER}",
            f"a/../../{MARKER}",
            f"/{MARKER}",
            f"{CANARY_TOKEN}/{MARKER}",  # an absolute path into the canary directory
            f"nul\x00{MARKER}",
            "\x00",
            "x" * 300,
            "é" * 150,  # 300 bytes in 150 characters
            "€" * 100,  # 300 bytes in 100 characters
            "CON",
            "nul.txt",
            "COM1",
            "trailing.",
            "trailing ",
            f"C:{MARKER}",
        ]
    ),
    st.builds(lambda a, sep, b: f"{a}{sep}{b}", _word, _separators, _word),
    st.builds(
        lambda device, ext: device + ext,
        st.sampled_from(["CON", "con", "Nul", "COM1", "lpt9", "AUX", "PRN"]),
        st.sampled_from(["", ".txt", ".tif.json"]),
    ),
    st.builds(lambda w, end: w + end, _word, st.sampled_from([".", " "])),
)


@dataclass
class Hostile:
    item_ids: list[str]
    asset_keys: list[str]
    closed_port: bool


hostile_catalogs = st.builds(
    Hostile,
    item_ids=st.lists(hostile_names, min_size=1, max_size=2),
    asset_keys=st.lists(hostile_names, min_size=0, max_size=2, unique=True),
    closed_port=st.booleans(),
)


def shown(name: str) -> str:
    """How a refusal quotes a name: its repr, cut at 60 characters for long names."""
    return repr(name[:60])


# --- the hub ROOT -------------------------------------------------------------------------


def _item_json(root: Path, collection: str, item: str) -> Path:
    return root / DS / "catalog" / collection / item / f"{item}.json"


def _item_name(collection: str, index: int) -> str:
    return f"{collection}_{index:06d}"


@dataclass
class HostileRoot:
    """A ROOT with hostile values, and what a correct sync makes of it."""

    root: Path
    expected: dict[str, Path] = field(default_factory=dict)
    """Output path (relative to the dataset dir) of each normal asset -> the served file."""
    forbidden: dict[str, str] = field(default_factory=dict)
    """sha256 -> what it is: bytes that must never be copied out of the hub ROOT."""
    refusals: list[str] = field(default_factory=list)
    """Texts stderr must contain: one refusal naming each hostile value."""
    unreachable: str | None = None
    """Output path of the asset on a closed port, if any."""


def closed_port() -> int:
    """A port nothing listens on (bound, then closed: the kernel refuses connections)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_root(base: Path, hostile: Hostile, canary: Path) -> HostileRoot:
    root = base / "root"
    make_sample(root, DS, items=ITEMS, assets_per_item=len(BANDS), asset_size=ASSET_SIZE, seed=7)
    files = root / DS / "files"
    result = HostileRoot(root)
    for index in range(ITEMS):  # the sample as made: every asset is normal
        item = _item_name(SOURCE, index)
        for band in BANDS:
            result.expected[f"{SOURCE}/{item}/{band}.tif"] = files / SOURCE / item / f"{band}.tif"
        label = _item_name(LABELS, index)
        result.expected[f"{LABELS}/{label}/labels.geojson"] = (
            files / LABELS / label / "labels.geojson"
        )
    result.expected[f"{LABELS}/_common/documentation.pdf"] = files / LABELS / "documentation.pdf"

    def edit(item: str, change: Callable[[dict[str, Any]], None]) -> None:
        path = _item_json(root, SOURCE, item)
        data = json.loads(path.read_bytes())
        change(data)
        path.write_text(json.dumps(data))  # ensure_ascii: NUL is written as \u0000

    # Items 0 and 1: hostile ids, one asset each (one refusal each). Their bytes must stay put.
    for index, raw_id in enumerate(hostile.item_ids):
        item_id = raw_id.replace(CANARY_TOKEN, str(canary))
        item = _item_name(SOURCE, index)

        def set_id(data: dict[str, Any], item_id: str = item_id) -> None:
            data["id"] = item_id
            data["assets"] = {"B02": data["assets"]["B02"]}

        edit(item, set_id)
        for band in BANDS:
            del result.expected[f"{SOURCE}/{item}/{band}.tif"]
        served = files / SOURCE / item / "B02.tif"
        result.forbidden[_sha(served.read_bytes())] = f"asset of hostile item {item_id!r}"
        result.refusals.append(f"unsafe item id {shown(item_id)}")

    # Item 2: hostile asset keys, each on a file of its own that must never be copied.
    keyed = _item_name(SOURCE, 2)
    extra = files / "extra"
    extra.mkdir()
    hostile_assets = {}
    for number, raw_key in enumerate(hostile.asset_keys):
        key = raw_key.replace(CANARY_TOKEN, str(canary))
        data = hashlib.sha256(f"hostile key {number}".encode()).digest() * 8
        (extra / f"key{number}.bin").write_bytes(data)
        result.forbidden[_sha(data)] = f"asset under the hostile key {key!r}"
        hostile_assets[key] = {"href": f"../../../files/extra/key{number}.bin"}
        result.refusals.append(f"unsafe asset key {shown(key)}")
    edit(keyed, lambda data: data["assets"].update(hostile_assets))

    # Item 3: a file:// href (refused at ingest) and maybe an asset on a closed port.
    other = _item_name(SOURCE, 3)
    odd = {"passwd": {"href": PASSWD_HREF}}
    if hostile.closed_port:
        odd["unreachable"] = {"href": f"http://127.0.0.1:{closed_port()}/x"}
        result.unreachable = f"{SOURCE}/{other}/unreachable"
    edit(other, lambda data: data["assets"].update(odd))
    result.refusals.append(f"refused asset 'passwd' of item {other!r}")
    with contextlib.suppress(OSError):
        result.forbidden[_sha(Path("/etc/passwd").read_bytes())] = "/etc/passwd"

    problems = len(hostile.item_ids) + len(hostile.asset_keys) + 1
    assert problems <= MAX_PROBLEM_NOTICES, "more problems than the ingest shows by name"
    return result


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- what is on disk ----------------------------------------------------------------------


def snapshot(top: Path, exclude: set[Path]) -> dict[str, tuple[object, ...]]:
    """Every entry under ``top`` (``exclude`` left out) with its kind, size and content hash;
    symbolic links are recorded, never followed."""
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        folder = Path(dirpath)
        dirnames[:] = [name for name in dirnames if folder / name not in exclude]
        for name in [*dirnames, *filenames]:
            path = folder / name
            if path in exclude:
                continue
            st = os.lstat(path)
            rel = path.relative_to(top).as_posix()
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                found[rel] = ("file", st.st_size, st.st_mtime_ns, _sha(path.read_bytes()))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir",)
            else:
                found[rel] = ("other", stat.S_IFMT(st.st_mode))
    return found


def marker_sweep(out: Path) -> list[Path]:
    """Entries named after :data:`MARKER` in any ancestor of ``out`` (up to ``/``): where a
    ``../`` chain of any depth from inside the output directory would have written."""
    hits = []
    for ancestor in [out, *out.parents]:
        with contextlib.suppress(OSError):
            hits += [ancestor / name for name in os.listdir(ancestor) if MARKER in name]
    return hits


def files_in(folder: Path) -> dict[Path, str]:
    return {
        path: _sha(path.read_bytes())
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


def err_report(dataset_dir: Path) -> list[dict[str, str]]:
    with open(dataset_dir / "err_report.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# --- running the CLI ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No user profile or key; fast retries (the closed port); logging restored after."""
    isolate_cli(monkeypatch, tmp_path)
    monkeypatch.setattr(sync_cmd, "HubSession", functools.partial(HubSession, retry=FAST))
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("mlsync").level
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("mlsync").setLevel(saved[2])


@dataclass
class Example:
    """One example's folders: ``base/{root, work/{mlsync.yaml, out, canary}, cwd}``."""

    base: Path
    work: Path
    out: Path
    canary: Path
    cwd: Path

    @classmethod
    def make(cls, tmp_path: Path) -> Example:
        base = tmp_path / f"ex{next(_example_numbers)}"
        work = base / "work"
        ex = cls(base, work, work / "out", work / "canary", base / "cwd")
        for folder in (ex.canary, ex.cwd):
            folder.mkdir(parents=True)
        return ex

    @property
    def dataset_dir(self) -> Path:
        return self.out / DS


@dataclass
class Outcome:
    result: CliResult
    outside_changes: dict[str, tuple[object, ...] | None]


def apply_isolated(
    cli: Callable[..., CliResult], tmp_path: Path, ex: Example, root: Path
) -> Outcome:
    """``mlsync apply`` on a hub serving ``root``, run from ``ex.cwd`` (so a write relative
    to the working directory is seen too); what changed in ``tmp_path`` outside the output
    directory and the hub ROOT, besides the lock file."""
    manifest = ex.work / "mlsync.yaml"
    manifest.write_text(f"version: 1\noutput_dir: out\ndatasets:\n  - id: {DS}\n")
    exclude = {root, ex.out}
    before = snapshot(tmp_path, exclude)
    with running_hub(root) as hub, contextlib.chdir(ex.cwd):
        result = cli("apply", manifest, "--root-url", hub.url)
    after = snapshot(tmp_path, exclude)
    lock = (ex.work / "mlsync.lock").relative_to(tmp_path).as_posix()
    changes = {
        rel: after.get(rel)
        for rel in before.keys() | after.keys()
        if before.get(rel) != after.get(rel) and rel != lock
    }
    return Outcome(result, changes)


def assert_nothing_escaped(outcome: Outcome, ex: Example, forbidden: dict[str, str]) -> None:
    assert outcome.outside_changes == {}, "created or changed outside the output directory"
    assert list(ex.canary.iterdir()) == []
    assert marker_sweep(ex.out) == []
    copied = {
        path: forbidden[digest]
        for path, digest in files_in(ex.base).items()
        if digest in forbidden and ex.base / "root" not in path.parents
    }
    assert copied == {}, "bytes of a refused asset were copied"


def asset_files(dataset_dir: Path) -> set[str]:
    """Downloaded files (relative to the dataset dir): everything in a collection folder
    but the catalog's JSON."""
    return {
        path.relative_to(dataset_dir).as_posix()
        for collection in (SOURCE, LABELS)
        for path in (dataset_dir / collection).rglob("*")
        if path.is_file() and path.suffix != ".json"
    }


# --- the property -------------------------------------------------------------------------


@settings(
    max_examples=8,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples on every run: a red CI run can be re-run as it was
    phases=[Phase.explicit, Phase.generate],  # each example runs a hub: no shrinking
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(hostile=Hostile([f"../../{MARKER}", f"nul\x00{MARKER}"], ["..\\x", "x" * 300], True))
@example(hostile=Hostile(["a\\[b]", "c\\"], ["k\\[/]"], False))  # once shown mangled
@example(hostile=Hostile(["CON", "trailing."], ["nul.txt", "COM1"], False))
@given(hostile=hostile_catalogs)
def test_hostile_items_and_assets_are_refused_one_by_one_and_nothing_escapes(
    hostile: Hostile, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    ex = Example.make(tmp_path)
    hub_root = build_root(ex.base, hostile, ex.canary)

    outcome = apply_isolated(cli, tmp_path, ex, hub_root.root)
    result = outcome.result

    assert TRACEBACK not in result.err
    assert result.code == (1 if hostile.closed_port else 0), result.err
    for refusal in hub_root.refusals:
        assert refusal in result.err, f"no refusal naming {refusal!r}:\n{result.err}"
    assert "'file:///etc/passwd' has the scheme 'file'" in result.err

    # Every normal asset is there, byte for byte what the hub serves; nothing else is.
    assert asset_files(ex.dataset_dir) == set(hub_root.expected)
    for rel, served in hub_root.expected.items():
        assert (ex.dataset_dir / rel).read_bytes() == served.read_bytes(), rel

    if hub_root.unreachable is not None:
        assert f"failed {DS}/{hub_root.unreachable}: " in result.err
        assert [row["rel_path"] for row in err_report(ex.dataset_dir)] == [hub_root.unreachable]
    else:
        assert not (ex.dataset_dir / "err_report.csv").exists()

    assert_nothing_escaped(outcome, ex, hub_root.forbidden)


# --- deterministic cases ------------------------------------------------------------------


def test_dot_dot_item_id_is_refused_and_the_rest_syncs(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    """The brief's classic: an item whose id is ``../../escape`` (its folder is harmless)."""
    ex = Example.make(tmp_path)
    item_id = f"../../{MARKER}"
    hub_root = build_root(ex.base, Hostile([item_id], [], closed_port=False), ex.canary)

    outcome = apply_isolated(cli, tmp_path, ex, hub_root.root)

    assert outcome.result.code == 0, outcome.result.err
    assert TRACEBACK not in outcome.result.err
    item = _item_name(SOURCE, 0)
    assert (
        f"refused an asset of {SOURCE}/{item}/{item}.json: unsafe item id "
        f"'../../{MARKER}': it contains a path separator"
    ) in outcome.result.err
    assert asset_files(ex.dataset_dir) == set(hub_root.expected)
    assert not (ex.dataset_dir / SOURCE / item / "B02.tif").exists()
    assert_nothing_escaped(outcome, ex, hub_root.forbidden)


@pytest.mark.parametrize(
    ("folder", "why"),
    [
        (f"..\\..\\{MARKER}", "has a NUL or backslash in its name"),
        ("CON", "has an unsafe name (unsafe archive member component 'CON': it is a reserved"),
        ("trail.", "has an unsafe name (unsafe archive member component 'trail.': it ends"),
    ],
    ids=["backslashes", "device-name", "trailing-dot"],
)
def test_hostile_archive_member_from_the_hub_is_refused_whole(
    folder: str, why: str, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    """An item *folder* with a name Linux allows but a client must not extract: the hub
    archives it as it is, and the client refuses the whole archive, naming the member."""
    ex = Example.make(tmp_path)
    hub_root = build_root(ex.base, Hostile([], [], closed_port=False), ex.canary)
    item = _item_name(SOURCE, 1)
    item_dir = hub_root.root / DS / "catalog" / SOURCE / item
    (item_dir / f"{item}.json").rename(item_dir / f"{folder}.json")
    item_dir.rename(item_dir.with_name(folder))

    outcome = apply_isolated(cli, tmp_path, ex, hub_root.root)

    err = outcome.result.err
    assert outcome.result.code == 1, err
    assert TRACEBACK not in err
    member = f"{DS}/{SOURCE}/{folder}/{folder}.json"
    assert f"error: catalog archive {DS}.tar.gz: member {member!r} {why}" in err
    assert "refusing to extract the archive" in err
    assert asset_files(ex.dataset_dir) == set(), "an asset was fetched from a refused catalog"
    assert [p for p in ex.base.rglob("*") if folder in p.name and ex.out in p.parents] == []
    assert_nothing_escaped(outcome, ex, hub_root.forbidden)


# --- values that once broke the console or the ingest -----------------------------------------


def _apply_with_item_id(
    item_id: str, tmp_path: Path, cli: Callable[..., CliResult]
) -> tuple[Outcome, Example]:
    ex = Example.make(tmp_path)
    hub_root = build_root(ex.base, Hostile([item_id], [], closed_port=False), ex.canary)
    return apply_isolated(cli, tmp_path, ex, hub_root.root), ex


def test_rich_markup_in_a_refused_item_id_does_not_crash_apply(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    outcome, _ex = _apply_with_item_id("x[/]y", tmp_path, cli)
    assert outcome.result.code == 0
    assert "unsafe item id 'x[/]y'" in outcome.result.err


def test_refusal_shows_markup_and_emoji_codes_verbatim(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    outcome, _ex = _apply_with_item_id("[red]a/b:smile:", tmp_path, cli)
    assert outcome.result.code == 0
    assert "unsafe item id '[red]a/b:smile:'" in outcome.result.err


def test_lone_surrogate_in_an_item_id_is_refused_not_a_crash(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    outcome, _ex = _apply_with_item_id("a\ud800b", tmp_path, cli)
    assert outcome.result.code == 0
    assert TRACEBACK not in outcome.result.err
