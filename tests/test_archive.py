"""Catalog archive extraction: hostile members refused, nothing written outside, limits kept."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from mlsync.archive import ExtractStats, extract_catalog
from mlsync.errors import CatalogError, LocalWriteError, UnsafePathError
from mlsync.stacdoc import without_links

DS = "ds"
Member = tuple[tarfile.TarInfo, bytes | None]


def reg(name: str, data: bytes = b"{}", **attrs: object) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_600_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def directory(name: str) -> Member:
    return special(name, tarfile.DIRTYPE)


def tar_bytes(
    members: Iterable[Member], *, fmt: int = tarfile.PAX_FORMAT, encoding: str = "utf-8"
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding=encoding) as tar:
        for info, data in members:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buf.getvalue()


CATALOG = json.dumps({"type": "Catalog", "id": DS}).encode()
ITEM = json.dumps({"type": "Feature", "id": "i1", "collection": "col", "assets": {}}).encode()


def good_members() -> list[Member]:
    return [
        directory(f"{DS}/"),
        reg(f"{DS}/catalog.json", CATALOG),
        directory(f"{DS}/col"),
        reg(f"{DS}/col/collection.json", b'{"type": "Collection", "id": "col"}'),
        reg(f"{DS}/col/i1/i1.json", ITEM),  # its folder has no member of its own
    ]


class Tree:
    """A work dir: the archive, the output dir, and a victim file an attack would overwrite."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.archive = root / f"{DS}.tar.gz"
        self.out = root / "out"
        self.victim = root / "victim.txt"
        self.victim.write_text("precious")
        self.outside = root / "outside"
        self.outside.mkdir()
        self.out.mkdir()

    def write(self, raw_tar: bytes) -> Path:
        self.archive.write_bytes(gzip.compress(raw_tar))
        return self.archive

    def snapshot(self) -> dict[str, tuple[str, int, int]]:
        """Every path outside ``out/ds`` (links not followed) with its type, size and mtime."""
        found: dict[str, tuple[str, int, int]] = {}
        dataset = self.out / DS
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                path = Path(dirpath, name)
                if path == dataset or dataset in path.parents:
                    continue
                st = path.lstat()
                kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
                # A directory's entries are listed here; its own mtime changes when out/ds appears.
                if kind == "dir":
                    found[str(path.relative_to(self.root))] = (kind, 0, 0)
                else:
                    found[str(path.relative_to(self.root))] = (kind, st.st_size, st.st_mtime_ns)
        return found

    def extract(self, **kwargs: object) -> ExtractStats:
        return extract_catalog(self.archive, self.out, DS, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


def refused(
    tree: Tree,
    members: list[Member],
    error: type[Exception] = UnsafePathError,
    match: str | None = None,
) -> str:
    """Extract an archive that must be refused; check nothing outside ``out/ds`` changed."""
    tree.write(tar_bytes(members))
    before = tree.snapshot()
    with pytest.raises(error, match=match) as info:
        tree.extract()
    assert tree.snapshot() == before
    assert tree.victim.read_text() == "precious"
    assert list(tree.outside.iterdir()) == []
    leftovers = list((tree.out / DS).rglob(".mlsync-*")) if (tree.out / DS).exists() else []
    assert leftovers == []
    return str(info.value)


# --- the normal case -----------------------------------------------------------------------------


def test_normal_archive(tree: Tree) -> None:
    tree.write(tar_bytes([*good_members(), reg(f"{DS}/col/i1/thumb.png", b"PNG")]))
    seen: list[tuple[str, bytes]] = []
    progress: list[tuple[int, int]] = []
    before = tree.snapshot()
    stats = tree.extract(
        on_member=lambda name, data: seen.append((name, data)),
        progress=lambda n, b: progress.append((n, b)),
    )
    assert stats == ExtractStats(members=6, files=3, bytes=len(CATALOG) + 35 + len(ITEM), skipped=1)
    assert [name for name, _ in seen] == ["catalog.json", "col/collection.json", "col/i1/i1.json"]
    assert seen[0][1] == CATALOG
    dataset = tree.out / DS
    assert (dataset / "catalog.json").read_bytes() == CATALOG
    assert (dataset / "col/i1/i1.json").read_bytes() == ITEM
    assert os.stat(dataset / "col/i1/i1.json").st_mtime == 1_600_000_000
    assert not (dataset / "col/i1/thumb.png").exists()  # only JSON is written
    assert progress == [(6, tree.archive.stat().st_size)]  # at the end, at least
    assert tree.snapshot() == before  # only out/ds is new
    assert not list(dataset.rglob(".mlsync-*"))


def test_read_only_mode_reads_every_member_and_writes_nothing(tree: Tree) -> None:
    """``write=False`` (how plan indexes): the same members and stats, and no file at all."""
    tree.write(tar_bytes([*good_members(), reg(f"{DS}/col/i1/thumb.png", b"PNG")]))
    before = tree.snapshot()
    seen: list[tuple[str, bytes]] = []
    stats = tree.extract(on_member=lambda name, data: seen.append((name, data)), write=False)
    assert stats == ExtractStats(members=6, files=3, bytes=len(CATALOG) + 35 + len(ITEM), skipped=1)
    assert [name for name, _ in seen] == ["catalog.json", "col/collection.json", "col/i1/i1.json"]
    assert tree.snapshot() == before
    assert not tree.out.exists() or list(tree.out.iterdir()) == []


@pytest.mark.parametrize(
    "members",
    [
        [reg(f"{DS}/catalog.json"), reg(f"{DS}/../victim.txt", b"pwned")],
        [reg("/etc/x.json")],
        [reg("other/x.json")],
        [special(f"{DS}/col", tarfile.SYMTYPE, "../outside")],
        [special(f"{DS}/hard.json", tarfile.LNKTYPE, f"{DS}/catalog.json")],
        [special(f"{DS}/dev", tarfile.CHRTYPE)],
    ],
)
def test_read_only_mode_refuses_what_extraction_refuses(tree: Tree, members: list[Member]) -> None:
    tree.write(tar_bytes(members))
    before = tree.snapshot()
    with pytest.raises(UnsafePathError) as read_only:
        tree.extract(write=False)
    assert tree.snapshot() == before
    assert str(read_only.value) == refused(tree, members)


def test_reextraction_rewrites_files(tree: Tree) -> None:
    tree.write(tar_bytes(good_members()))
    tree.extract()
    tree.write(tar_bytes([reg(f"{DS}/catalog.json", b'{"v": 2}')]))
    tree.extract()
    assert (tree.out / DS / "catalog.json").read_bytes() == b'{"v": 2}'
    assert (tree.out / DS / "col/i1/i1.json").read_bytes() == ITEM  # not removed


def test_a_member_repeated_ends_as_its_last_copy(tree: Tree) -> None:
    """Writes run in threads, but one folder's writes keep the archive's order."""
    copies = [reg(f"{DS}/col/i{n % 7}/i.json", b'{"copy": %d}' % n) for n in range(200)]
    tree.write(tar_bytes([*good_members(), *copies]))
    tree.extract()
    for item in range(7):
        last = max(n for n in range(200) if n % 7 == item)
        assert (tree.out / DS / f"col/i{item}/i.json").read_bytes() == b'{"copy": %d}' % last


def test_names_are_normalised(tree: Tree) -> None:
    tree.write(tar_bytes([reg(f"./{DS}//col/./a.json"), directory(f"{DS}/x/")]))
    names: list[str] = []
    tree.extract(on_member=lambda name, data: names.append(name))
    assert names == ["col/a.json"]
    assert (tree.out / DS / "x").is_dir()


def test_on_member_error_stops_the_extraction(tree: Tree) -> None:
    tree.write(tar_bytes(good_members()))

    def boom(name: str, data: bytes) -> None:
        raise KeyError(name)

    with pytest.raises(KeyError, match=r"catalog\.json"):
        tree.extract(on_member=boom)
    assert not (tree.out / DS / "col").exists()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_formats(tree: Tree, fmt: int) -> None:
    # ustar: a 155-character prefix plus a 100-character name; GNU and pax: no limit.
    last = "j" * (90 if fmt == tarfile.USTAR_FORMAT else 240)
    long_name = f"{DS}/col/{'i' * 100}/{last}.json"
    tree.write(tar_bytes([reg(f"{DS}/catalog.json"), reg(long_name)], fmt=fmt))
    assert tree.extract().files == 2
    assert (tree.out / long_name).is_file()


def test_localhub_archive_round_trip(tmp_path: Path) -> None:
    from mlsync.localhub.archive import build_archive

    catalog = tmp_path / "root" / DS / "catalog"
    (catalog / "col" / "i1").mkdir(parents=True)
    (catalog / "catalog.json").write_bytes(CATALOG)
    item = {"type": "Feature", "id": "i1", "assets": {"a": {"href": "../../../a.tif"}}}
    (catalog / "col" / "i1" / "i1.json").write_text(json.dumps(item))
    archive = tmp_path / f"{DS}.tar.gz"
    build_archive(DS, tmp_path / "root" / DS, "http://hub/blob", archive)
    seen: dict[str, bytes] = {}
    stats = extract_catalog(
        archive, tmp_path / "out", DS, on_member=lambda n, d: seen.__setitem__(n, d)
    )
    assert stats.files == 2
    assert json.loads(seen["col/i1/i1.json"])["assets"]["a"]["href"] == "http://hub/blob/ds/a.tif"


# --- hostile members: refused, nothing outside touched -----------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        f"{DS}/../victim.txt",
        f"{DS}/col/../../victim.txt",
        "../victim.txt",
        f"{DS}/a\\..\\..\\victim.txt",
        f"{DS}/C:victim.json",
        f"{DS}/col/CON.json",
        f"{DS}/col/trailing.json.",
        f"{DS}/col/bad\nname.json",
        f"{DS}/{'x' * 256}.json",
    ],
)
def test_unsafe_names(tree: Tree, name: str) -> None:
    refused(tree, [reg(f"{DS}/catalog.json"), reg(name, b"pwned")])


def test_absolute_member(tree: Tree) -> None:
    message = refused(tree, [reg(str(tree.victim), b"pwned")], match="absolute")
    assert "victim.txt" in message


def test_windows_absolute_member(tree: Tree) -> None:
    refused(tree, [reg("C:/Windows/x.json")], match="absolute")


@pytest.mark.parametrize("name", ["other/x.json", f"{DS}x/x.json", f"{DS}.json", "x.json"])
def test_members_outside_the_dataset_folder(tree: Tree, name: str) -> None:
    refused(tree, [reg(f"{DS}/catalog.json"), reg(name)], match=f"not under {DS}/")


def test_file_where_the_dataset_folder_goes(tree: Tree) -> None:
    refused(tree, [reg(DS)], match="dataset folder")


def test_non_utf8_name(tree: Tree) -> None:
    raw = tar_bytes([reg(f"{DS}/caf\u00e9.json")], fmt=tarfile.GNU_FORMAT, encoding="latin-1")
    tree.write(raw)
    with pytest.raises(UnsafePathError, match="surrogate"):
        tree.extract()


@pytest.mark.parametrize(
    ("member", "kind"),
    [
        (special(f"{DS}/col", tarfile.SYMTYPE, "../outside"), "symbolic link"),
        (special(f"{DS}/evil.json", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (special(f"{DS}/inside.json", tarfile.SYMTYPE, "catalog.json"), "symbolic link"),
        (special(f"{DS}/hard.json", tarfile.LNKTYPE, f"{DS}/catalog.json"), "hard link"),
        (special(f"{DS}/hard2.json", tarfile.LNKTYPE, "victim.txt"), "hard link"),
        (special(f"{DS}/fifo", tarfile.FIFOTYPE), "FIFO"),
        (special(f"{DS}/dev", tarfile.CHRTYPE), "device"),
        (special(f"{DS}/blk", tarfile.BLKTYPE), "device"),
    ],
)
def test_links_devices_and_fifos(tree: Tree, member: Member, kind: str) -> None:
    # The symlink member comes before a member that would write through it.
    members = [reg(f"{DS}/catalog.json"), member, reg(f"{DS}/col/x.json", b"pwned")]
    message = refused(tree, members, match=kind)
    assert "refusing to extract" in message


def test_symlink_on_disk_pointing_outside(tree: Tree) -> None:
    (tree.out / DS).mkdir()
    (tree.out / DS / "col").symlink_to(tree.outside)
    refused(tree, [reg(f"{DS}/col/i1/i1.json", b"pwned")], match="outside|symbolic link")
    refused(tree, [directory(f"{DS}/col/sub")], match="outside|symbolic link")


def test_dataset_folder_symlinked_outside(tree: Tree) -> None:
    (tree.out / DS).symlink_to(tree.outside)
    refused(tree, [reg(f"{DS}/catalog.json", b"pwned")], match="outside|symbolic link")


def test_symlinks_on_disk_that_stay_inside_are_followed(tree: Tree) -> None:
    real = tree.out / "real"
    (real / "col").mkdir(parents=True)
    (tree.out / DS).symlink_to(real)
    (real / "alias").symlink_to(real / "col")
    tree.write(tar_bytes([reg(f"{DS}/catalog.json"), reg(f"{DS}/alias/x.json")]))
    assert tree.extract().files == 2
    assert (real / "col" / "x.json").is_file()


def test_file_symlink_at_the_target_pointing_outside(tree: Tree) -> None:
    (tree.out / DS).mkdir()
    (tree.out / DS / "catalog.json").symlink_to(tree.victim)
    refused(tree, [reg(f"{DS}/catalog.json", b"pwned")], match="outside")


def test_file_symlink_at_the_target_inside_is_replaced_not_followed(tree: Tree) -> None:
    (tree.out / DS).mkdir()
    other = tree.out / DS / "other.json"
    other.write_text("kept")
    (tree.out / DS / "catalog.json").symlink_to(other)
    tree.write(tar_bytes([reg(f"{DS}/catalog.json", b"new")]))
    tree.extract()
    assert other.read_text() == "kept"
    target = tree.out / DS / "catalog.json"
    assert not target.is_symlink() and target.read_bytes() == b"new"


def test_file_over_a_directory(tree: Tree) -> None:
    refused(tree, [directory(f"{DS}/a.json"), reg(f"{DS}/a.json")], match="is a directory")


def test_directory_over_a_file(tree: Tree) -> None:
    # The two members' folders may go to two writer threads: whichever lands first, the
    # other is refused (the file where a directory is needed, or the reverse).
    refused(
        tree,
        [reg(f"{DS}/a.json"), reg(f"{DS}/a.json/b.json")],
        match="it is a file|is a file where .* is a directory",
    )


# --- corrupt and truncated archives --------------------------------------------------------------


def corrupt(tree: Tree, payload: bytes, match: str | None = None) -> str:
    tree.archive.write_bytes(payload)
    before = tree.snapshot()
    with pytest.raises(CatalogError, match=match) as info:
        tree.extract()
    assert not isinstance(info.value, UnsafePathError)
    assert tree.snapshot() == before
    return str(info.value)


def big_members() -> list[Member]:
    # Incompressible enough that a cut in the gzip stream lands inside a member.
    return [reg(f"{DS}/c/{n}/{n}.json", os.urandom(3000)) for n in range(20)]


def test_truncated_gzip(tree: Tree) -> None:
    full = gzip.compress(tar_bytes(big_members()))
    for cut in (10, len(full) // 2, len(full) - 4):
        corrupt(tree, full[:cut], match="corrupt or truncated")


def test_corrupt_gzip_data_and_crc(tree: Tree) -> None:
    full = bytearray(gzip.compress(tar_bytes(big_members())))
    middle = bytearray(full)
    middle[len(middle) // 2] ^= 0xFF
    corrupt(tree, bytes(middle), match="corrupt")
    bad_crc = bytearray(full)
    bad_crc[-8] ^= 0xFF
    corrupt(tree, bytes(bad_crc), match="CRC")


def test_not_gzip_and_empty(tree: Tree) -> None:
    corrupt(tree, tar_bytes(good_members()), match="corrupt")
    corrupt(tree, b"", match="corrupt")
    corrupt(tree, gzip.compress(b""), match="corrupt")
    corrupt(tree, gzip.compress(b"not a tar archive at all" * 100), match="corrupt")


def test_missing_archive(tree: Tree) -> None:
    with pytest.raises(CatalogError, match="cannot open"):
        tree.extract()


def test_garbled_header_after_the_first_member(tree: Tree) -> None:
    raw = bytearray(tar_bytes(good_members(), fmt=tarfile.GNU_FORMAT))
    offset = raw.find(f"{DS}/col/i1/i1.json".encode())
    assert offset % 512 == 0
    raw[offset + 148 : offset + 156] = b"0000000\x00"  # wrong header checksum
    message = corrupt(tree, gzip.compress(bytes(raw)), match="invalid tar header")
    assert "delete it" in message


def test_tar_cut_inside_a_complete_gzip(tree: Tree) -> None:
    raw = tar_bytes(good_members())
    end = len(raw.rstrip(b"\x00"))
    end += -end % 512  # cut at a block boundary, before the end-of-archive marker
    corrupt(tree, gzip.compress(raw[:end]), match="end-of-archive marker")
    corrupt(tree, gzip.compress(raw[: end - 700]), match="corrupt|truncated")


def test_data_after_the_end_of_the_tar(tree: Tree) -> None:
    first = tar_bytes([reg(f"{DS}/catalog.json")])
    second = tar_bytes([reg(f"{DS}/col/i1/i1.json", b"hidden")])
    corrupt(tree, gzip.compress(first + second), match="data after the end")
    corrupt(tree, gzip.compress(first + b"garbage"), match="data after the end")
    tree.archive.write_bytes(gzip.compress(first + bytes(100_000)))  # zeros are padding
    assert tree.extract().files == 1


def test_hostile_mtime_is_ignored(tree: Tree) -> None:
    for mtime in ("1e300", "-1e300", "nan", "inf"):
        info, data = reg(f"{DS}/catalog.json")
        info.pax_headers = {"mtime": mtime}
        tree.write(tar_bytes([(info, data)]))
        assert tree.extract().files == 1


def test_negative_size(tree: Tree) -> None:
    info, _ = reg(f"{DS}/x.json", b"")
    info.pax_headers = {"size": "-4096"}
    tree.write(tar_bytes([(info, b""), reg(f"{DS}/catalog.json")]))
    with pytest.raises(CatalogError, match="negative size"):
        tree.extract()


def test_chain_of_long_name_headers(tree: Tree) -> None:
    chain = bytearray()
    name = f"{DS}/catalog.json".encode() + b"\x00"
    for _ in range(3000):
        header = tarfile.TarInfo("././@LongLink")
        header.type = tarfile.GNUTYPE_LONGNAME
        header.size = len(name)
        chain += header.tobuf(tarfile.GNU_FORMAT) + name + bytes(-len(name) % 512)
    chain += tar_bytes([reg(f"{DS}/catalog.json")], fmt=tarfile.GNU_FORMAT)
    corrupt(tree, gzip.compress(bytes(chain)), match="extended headers")


# --- limits ------------------------------------------------------------------------------------


def test_member_size_limit(tree: Tree) -> None:
    tree.write(tar_bytes([reg(f"{DS}/catalog.json", b"x" * 100)]))
    assert tree.extract(max_member_bytes=100).files == 1
    with pytest.raises(CatalogError, match="limit"):
        tree.extract(max_member_bytes=99)


def test_member_size_limit_applies_to_skipped_files(tree: Tree) -> None:
    tree.write(tar_bytes([reg(f"{DS}/big.bin", b"x" * 100)]))
    with pytest.raises(CatalogError, match="limit"):
        tree.extract(max_member_bytes=99)


def test_extended_header_limit(tree: Tree) -> None:
    info, data = reg(f"{DS}/catalog.json")
    info.pax_headers = {"comment": "x" * 5000}
    tree.write(tar_bytes([(info, data)]))
    with pytest.raises(CatalogError, match="extended header"):
        tree.extract(max_member_bytes=1000)
    assert tree.extract(max_member_bytes=10_000).files == 1


def test_member_count_limit(tree: Tree) -> None:
    tree.write(tar_bytes(good_members()))  # 5 members
    assert tree.extract(max_members=5).members == 5
    with pytest.raises(CatalogError, match="more than 4 members"):
        tree.extract(max_members=4)


def test_total_size_limit(tree: Tree) -> None:
    members = [reg(f"{DS}/{n}.json", b"x" * 1000) for n in range(5)]
    tree.write(tar_bytes(members))
    with pytest.raises(CatalogError, match="decompression bomb"):
        tree.extract(max_total_bytes=4500)
    # The zero padding after the tar counts too (tarfile pads to 10 KiB records).
    assert tree.extract(max_total_bytes=20_000).bytes == 5000


def test_total_limit_counts_trailing_zeros(tree: Tree) -> None:
    tree.archive.write_bytes(gzip.compress(tar_bytes([reg(f"{DS}/a.json")]) + bytes(1 << 20)))
    with pytest.raises(CatalogError, match="decompression bomb"):
        tree.extract(max_total_bytes=500_000)


def test_unsafe_dataset_id(tree: Tree) -> None:
    tree.write(tar_bytes(good_members()))
    for bad in ("..", "a/b", ""):
        with pytest.raises(UnsafePathError):
            extract_catalog(tree.archive, tree.out, bad)


def test_write_failure_is_a_local_write_error(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    tree.write(tar_bytes(good_members()))

    def disk_full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("mlsync.archive.os.write", disk_full)  # os.write, briefly
    try:
        with pytest.raises(LocalWriteError, match="No space left"):
            tree.extract()
    finally:
        monkeypatch.undo()
    assert not list((tree.out / DS).rglob(".mlsync-*"))  # the temporary file is gone


# --- the header fast path ------------------------------------------------------------------------


def test_plain_and_extended_headers_read_as_tarfile_reads_them(tree: Tree) -> None:
    """Plain ustar headers are decoded without tarfile; any other header goes through it. A
    mix of both (a global pax header, a long name, a skipped file, data across the reader's
    chunks) yields exactly the members and bytes tarfile itself lists."""
    big = json.dumps({"type": "Catalog", "pad": "x" * 1_500_000}).encode()
    members = [
        directory(f"{DS}/"),
        reg(f"{DS}/catalog.json", CATALOG),
        reg(f"{DS}/col/{'i' * 120}/long.json", b'{"a": 1}'),  # pax: a long name
        reg(f"{DS}/col/notes.txt", b"not json" * 100),  # skipped, its data too
        reg(f"{DS}/col/big.json", big),  # spans the reader's 1 MiB chunks
        reg(f"{DS}/col/i1/i1.json", ITEM),
    ]
    plain = tar_bytes(members, fmt=tarfile.USTAR_FORMAT)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"c": "x"}):
        pass  # an archive that starts with a global pax header: every member after it is slow
    for raw in (plain, tar_bytes(members), buf.getvalue()[:1024] + plain):
        tree.write(raw)
        seen: list[tuple[str, bytes]] = []

        def on_member(name: str, data: bytes, seen: list[tuple[str, bytes]] = seen) -> None:
            seen.append((name, data))

        stats = tree.extract(on_member=on_member, write=False)
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            expected = [
                (m.name.split("/", 1)[1], tar.extractfile(m).read())  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isreg() and m.name.endswith(".json")
            ]
        assert seen == expected
        assert (stats.files, stats.skipped) == (4, 1)
        assert (tree.out / DS).exists() is False


def test_member_data_cut_in_its_padding(tree: Tree) -> None:
    raw = tar_bytes([reg(f"{DS}/catalog.json", CATALOG), reg(f"{DS}/col/i1/i1.json", ITEM)])
    offset = raw.find(ITEM) + len(ITEM)
    corrupt(tree, gzip.compress(raw[: offset + 10]), match="corrupt or truncated")
    corrupt(tree, gzip.compress(raw[: offset - 1]), match="corrupt or truncated")


# --- the name checks on the fast path (no tarfile filter, no realpath per member) ----------------


def _only_plain_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any header but the end-of-archive block leaves the fast path."""
    from mlsync import archive

    original = archive._StrictTarInfo.from_block.__func__  # type: ignore[attr-defined]

    def from_block(cls: type, buf: bytes, stream: object) -> object:
        assert not buf.strip(b"\0"), "a member header left the ustar fast path"
        return original(cls, buf, stream)

    monkeypatch.setattr(archive._StrictTarInfo, "from_block", classmethod(from_block))


@pytest.mark.parametrize(
    "name",
    [
        f"{DS}/../victim.txt",
        f"{DS}/col/../../victim.json",
        "../victim.txt",
        f"/{DS}/victim.json",
        f"{DS}/a\\..\\..\\victim.txt",
        f"{DS}/C:victim.json",
        f"{DS}/col/CON.json",
        f"{DS}/col/trailing.json.",
        f"{DS}/col/bad\nname.json",
        f"{DS}/col/nul\x00.json",
        f"other/{DS}/x.json",
    ],
)
def test_hostile_names_on_the_fast_path_are_refused(
    tree: Tree, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # Plain ustar headers, decoded without tarfile: the name checks alone keep them out.
    _only_plain_headers(monkeypatch)
    members = [reg(f"{DS}/catalog.json"), reg(name, b"pwned")]
    refused(tree, members, match="refusing to extract")
    assert not (tree.root / "victim.json").exists()


def test_fast_path_writes_with_no_realpath_per_member(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh tree: its folders are made here, so no member needs a resolve on disk.
    _only_plain_headers(monkeypatch)
    calls: list[str] = []
    real = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))
    members = [reg(f"{DS}/catalog.json")] + [reg(f"{DS}/col/i{n}/i{n}.json") for n in range(50)]
    tree.write(tar_bytes(members))
    assert tree.extract().files == 51
    assert calls == []


def test_file_symlink_outside_in_a_folder_already_verified(tree: Tree) -> None:
    # The folder exists (not made by this run) and passed its check for an earlier member:
    # the file's own name is still checked, so the link out is refused, not replaced.
    (tree.out / DS / "col").mkdir(parents=True)
    (tree.out / DS / "col" / "b.json").symlink_to(tree.victim)
    members = [reg(f"{DS}/catalog.json"), reg(f"{DS}/col/a.json"), reg(f"{DS}/col/b.json", b"x")]
    refused(tree, members, match="points outside")
    assert (tree.out / DS / "col" / "b.json").is_symlink()


# --- large members, streamed (issue 14 (d)) ------------------------------------------------------


def collection(links: int, *, extra_link: str = "") -> bytes:
    """A collection linking ``links`` items (random hrefs: a gzip cut lands inside it)."""
    hrefs = [f"./{os.urandom(8).hex()}/item.json" for _ in range(links)]
    body = ",\n".join(f'  {{"rel": "item", "href": "{h}", "type": "a\\"b"}}' for h in hrefs)
    return (
        b'{"type": "Collection", "id": "col", "links": [\n'
        + (body + extra_link).encode()
        + b'\n], "extent": {"spatial": {"bbox": [[0, 0, 1, 1]]}}}'
    )


@pytest.fixture
def streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Members over 1,000 bytes are streamed, in pieces of 256 bytes (the gzip stream read
    512 bytes ahead, not 1 MiB: a cut in the archive is met inside the member)."""
    monkeypatch.setattr("mlsync.archive.STREAMED_MEMBER_BYTES", 1000)
    monkeypatch.setattr("mlsync.archive._COPY_CHUNK", 256)
    monkeypatch.setattr("mlsync.archive._READ_CHUNK", 512)


@pytest.mark.usefixtures("streamed")
@pytest.mark.parametrize("write", [True, False])
def test_a_member_over_the_whole_member_limit_is_streamed(tree: Tree, write: bool) -> None:
    big = collection(300)
    members = [*good_members()[:3], reg(f"{DS}/col/collection.json", big), reg(f"{DS}/col/x.json")]
    tree.write(tar_bytes(members))
    seen: dict[str, bytes] = {}
    stats = tree.extract(
        max_member_bytes=5000, write=write, on_member=lambda n, d: seen.setdefault(n, d)
    )
    assert stats.files == 3 and stats.bytes == len(CATALOG) + len(big) + 2
    assert seen["col/collection.json"] == without_links(big) != big
    assert json.loads(seen["col/collection.json"])["links"] == []
    on_disk = tree.out / DS / "col" / "collection.json"
    if write:
        assert on_disk.read_bytes() == big  # the file keeps its links
        assert on_disk.stat().st_mtime == 1_600_000_000
        assert (tree.out / DS / "col" / "x.json").read_bytes() == b"{}"
    else:
        assert not (tree.out / DS).exists()


@pytest.mark.usefixtures("streamed")
def test_the_streamed_member_limit(tree: Tree) -> None:
    big = collection(50)
    tree.write(tar_bytes([reg(f"{DS}/col/collection.json", big)]))
    with pytest.raises(CatalogError, match="limit for a catalog file"):
        tree.extract(max_member_bytes=100, max_streamed_member_bytes=len(big) - 1)
    assert tree.extract(max_member_bytes=100, max_streamed_member_bytes=len(big)).files == 1


@pytest.mark.usefixtures("streamed")
def test_a_repeated_member_ends_as_its_last_copy_streamed_or_not(tree: Tree) -> None:
    big = collection(40)
    name = f"{DS}/col/collection.json"
    for copies in ([reg(name, b"{}"), reg(name, big)], [reg(name, big), reg(name, b"{}")]):
        others = [reg(f"{DS}/col/{n}.json", b"[]") for n in range(50)]  # keep the queue busy
        tree.write(tar_bytes([*others, *copies]))
        tree.extract(max_member_bytes=1000)
        assert (tree.out / DS / "col" / "collection.json").read_bytes() == copies[-1][1]


@pytest.mark.usefixtures("streamed")
def test_an_archive_cut_or_corrupt_inside_a_streamed_member_leaves_no_file(tree: Tree) -> None:
    raw = tar_bytes([*good_members()[:3], reg(f"{DS}/col/collection.json", collection(300))])
    full = gzip.compress(raw)
    flipped = bytearray(full)
    flipped[len(full) * 3 // 4] ^= 0xFF
    for payload, cut_short in ((full[: len(full) * 3 // 4], True), (bytes(flipped), False)):
        tree.archive.write_bytes(payload)
        # The flipped bit shows as a zlib or CRC error, or, when the bad bytes still inflate,
        # as a tar header whose checksum is wrong (the hrefs are random, so is the spot): either
        # is "corrupt".
        with pytest.raises(CatalogError, match=r"is corrupt( or truncated)?: ") as info:
            tree.extract(max_member_bytes=5000)
        assert not isinstance(info.value, UnsafePathError)
        assert not list((tree.out / DS).rglob(".mlsync-*"))
        # A flipped bit may only show at the CRC check, after the member (as for any member).
        if cut_short:
            assert not (tree.out / DS / "col" / "collection.json").exists()


@pytest.mark.usefixtures("streamed")
def test_a_disk_full_while_streaming_is_a_local_write_error(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree.write(tar_bytes([reg(f"{DS}/col/collection.json", collection(100))]))
    real_write = os.write
    calls: list[int] = []

    def full_at_the_third_piece(fd: int, data: object) -> int:
        calls.append(fd)  # os.write is patched for every thread: count this file's only
        if calls.count(fd) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr("mlsync.archive.os.write", full_at_the_third_piece)
    try:
        with pytest.raises(LocalWriteError, match="No space left"):
            tree.extract(max_member_bytes=5000)
    finally:
        monkeypatch.undo()
    assert 3 in {calls.count(fd) for fd in calls}  # two pieces were written before
    assert not list((tree.out / DS).rglob("*.json")) and not list((tree.out / DS).rglob(".ml*"))


@pytest.mark.usefixtures("streamed")
def test_links_that_cannot_be_cut_are_given_as_they_are(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mlsync.archive._HOLD_BYTES", 500)  # given up long before the end
    big = collection(100, extra_link=',\n  {"rel": "x", "href": "y", "body": {"a": [1]}}')
    tree.write(tar_bytes([*good_members()[:2], reg(f"{DS}/col/collection.json", big)]))
    seen: dict[str, bytes] = {}
    tree.extract(max_member_bytes=len(big), on_member=lambda n, d: seen.setdefault(n, d))
    assert seen["col/collection.json"] == big  # read again from the archive
    with pytest.raises(CatalogError, match="links are not plain objects"):
        tree.extract(max_member_bytes=len(big) - 1, on_member=lambda n, d: None)
    assert tree.extract(max_member_bytes=len(big) - 1).files == 2  # no on_member: no cut


@pytest.mark.usefixtures("streamed")
def test_a_large_member_without_links_is_held_whole_only_within_the_limit(tree: Tree) -> None:
    big = json.dumps({"type": "Feature", "id": "i", "coords": list(range(2000))}).encode()
    tree.write(tar_bytes([reg(f"{DS}/col/i/i.json", big)]))
    seen: dict[str, bytes] = {}
    tree.extract(max_member_bytes=len(big), on_member=lambda n, d: seen.setdefault(n, d))
    assert seen["col/i/i.json"] == big
    with pytest.raises(CatalogError, match="no top-level links to cut"):
        tree.extract(max_member_bytes=len(big) - 1, on_member=lambda n, d: None)
    assert not list((tree.out / DS).rglob(".mlsync-*"))
    assert tree.extract(max_member_bytes=len(big) - 1).files == 1  # no on_member: streamed
