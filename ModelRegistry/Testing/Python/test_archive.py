"""ModelRegistryLib.archive: good archives unpack exactly; malicious ones are refused and leave nothing behind."""

from __future__ import annotations

import hashlib
import io
import os
import random
import stat
import struct
import tarfile
import threading
import zipfile

import pytest

from ModelRegistryLib.archive import extract_archive, is_archive
from ModelRegistryLib.errors import CancelledError, RegistryError, UnsafeArchiveError

FILES = {
    "model/weights.pt": random.Random(0).randbytes(300_000),
    "model/labels.csv": b"1,liver\n2,spleen\n",
    "model/sub/deeper/config.json": b'{"spacing": [1, 1, 1]}',
    "README.txt": b"",
}


def tree(folder) -> dict:
    """Every file under ``folder`` by '/'-separated relative path, with its bytes."""
    found = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as file:
                found[os.path.relpath(path, folder).replace(os.sep, "/")] = file.read()
    return found


def make_zip(path, entries, compression=zipfile.ZIP_DEFLATED) -> str:
    """A zip of (name or ZipInfo, bytes) pairs."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return str(path)


def tar_entry(name: str, data: bytes = b"", **fields) -> tuple:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def make_tar(path, entries, mode="w:gz") -> str:
    """A tar of (TarInfo, bytes) pairs."""
    with tarfile.open(path, mode) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return str(path)


@pytest.fixture
def target(tmp_path):
    folder = tmp_path / "target"
    folder.mkdir()
    return folder


def refused(archive: str, target, tmp_path, match: str, **limits) -> None:
    """The archive raises UnsafeArchiveError, and neither target nor its surroundings gain a file."""
    before = tree(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=match):
        extract_archive(archive, str(target), **limits)
    assert os.listdir(target) == []
    assert tree(tmp_path) == before
    assert not os.path.exists(tmp_path.parent / "x")


# --- good archives ------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_zip_round_trip(tmp_path, target):
    archive = make_zip(tmp_path / "m.zip", [("model/", b""), *FILES.items()])
    assert extract_archive(archive, str(target)) == {name: sha256(data) for name, data in FILES.items()}
    assert tree(target) == FILES


@pytest.mark.parametrize("mode, name", [("w:gz", "m.tar.gz"), ("w", "m.tar"), ("w:gz", "m.tgz")])
def test_tar_round_trip(tmp_path, target, mode, name):
    entries = [tar_entry("./", type=tarfile.DIRTYPE), tar_entry("./model", type=tarfile.DIRTYPE)]
    entries += [tar_entry(path, data) for path, data in FILES.items()]
    archive = make_tar(tmp_path / name, entries, mode)
    assert extract_archive(archive, str(target)) == {name: sha256(data) for name, data in FILES.items()}
    assert tree(target) == FILES


def test_format_is_recognised_from_the_content_not_the_name(tmp_path, target):
    archive = make_tar(tmp_path / "download.tmp", [tar_entry("a.txt", b"a")])
    assert list(extract_archive(archive, str(target))) == ["a.txt"]


def test_is_archive():
    assert [is_archive(n) for n in ("a.zip", "a.TAR.GZ", "a.tgz", "a.tar", "a.pt", "a.gz", "zip")] == [
        True,
        True,
        True,
        True,
        False,
        False,
        False,
    ]


# --- malicious archives -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, match",
    [
        ("../x", r"outside the folder"),
        ("model/../../x", r"outside the folder"),
        ("/etc/x", r"absolute path"),
        ("..\\x", r"backslash"),
        ("C:/x", r"':'"),
        ("C:x", r"':'"),
    ],
)
def test_zip_with_a_path_out_of_the_target_is_refused(tmp_path, target, name, match):
    archive = make_zip(tmp_path / "m.zip", [("good.txt", b"fine"), (name, b"evil")])
    refused(archive, target, tmp_path, match)


@pytest.mark.parametrize("name", ["../x", "/etc/x", "a/../../x"])
def test_tar_with_a_path_out_of_the_target_is_refused(tmp_path, target, name):
    archive = make_tar(tmp_path / "m.tar.gz", [tar_entry("good.txt", b"fine"), tar_entry(name, b"evil")])
    refused(archive, target, tmp_path, r"outside the folder|absolute path")


@pytest.mark.parametrize(
    "entry, kind",
    [
        (tar_entry("link", type=tarfile.SYMTYPE, linkname="../../x"), "symbolic link"),
        (tar_entry("link", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "symbolic link"),
        (tar_entry("inside", type=tarfile.SYMTYPE, linkname="good.txt"), "symbolic link"),
        (tar_entry("hard", type=tarfile.LNKTYPE, linkname="/etc/passwd"), "hard link"),
        (tar_entry("hard", type=tarfile.LNKTYPE, linkname="good.txt"), "hard link"),
        (tar_entry("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3), "device file"),
        (tar_entry("pipe", type=tarfile.FIFOTYPE), "fifo"),
    ],
)
def test_tar_links_and_special_files_are_refused(tmp_path, target, entry, kind):
    archive = make_tar(tmp_path / "m.tar.gz", [tar_entry("good.txt", b"fine"), entry])
    refused(archive, target, tmp_path, kind)


def test_zip_symbolic_link_is_refused(tmp_path, target):
    link = zipfile.ZipInfo("link")
    link.create_system = 3  # Unix: the upper 16 bits of external_attr are a st_mode
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = make_zip(tmp_path / "m.zip", [("good.txt", b"fine"), (link, b"../../x")])
    refused(archive, target, tmp_path, "symbolic link")


def test_duplicate_and_conflicting_entries_are_refused(tmp_path, target):
    with pytest.warns(UserWarning, match="Duplicate name"):
        archive = make_zip(tmp_path / "twice.zip", [("a.txt", b"1"), ("a.txt", b"2")])
    refused(archive, target, tmp_path, "twice")
    archive = make_zip(tmp_path / "case.zip", [("Weights.pt", b"1"), ("weights.pt", b"2")])
    refused(archive, target, tmp_path, "twice")
    archive = make_zip(tmp_path / "conflict.zip", [("a", b"file"), ("a/b", b"inside a file")])
    refused(archive, target, tmp_path, "file 'a' as a folder")


def test_too_many_entries_are_refused(tmp_path, target):
    archive = make_tar(tmp_path / "m.tar.gz", [tar_entry(f"f{i}", b"x") for i in range(6)])
    refused(archive, target, tmp_path, "more than 5 entries", max_files=5)
    assert list(extract_archive(archive, str(target), max_files=6)) == [f"f{i}" for i in range(6)]


def test_declared_total_over_the_limit_is_refused(tmp_path, target):
    archive = make_zip(tmp_path / "m.zip", [(f"f{i}", b"x" * 1000) for i in range(3)])
    refused(archive, target, tmp_path, r"more than the limit of 2\.5 kB", max_total_bytes=2500)


def test_highly_compressible_entry_is_refused_from_its_declared_size(tmp_path, target):
    archive = make_zip(tmp_path / "bomb.zip", [("zeros.bin", bytes(50_000_000))])
    assert os.path.getsize(archive) < 100_000
    refused(archive, target, tmp_path, "more than the limit", max_total_bytes=1_000_000)


def lie_about_size(path: str, name: str, declared: int) -> None:
    """Rewrite the uncompressed size of entry ``name`` in its local header and in the central directory."""
    with open(path, "rb") as file:
        data = bytearray(file.read())
    # (signature, offset of the size field, offset of the name length, offset of the name)
    for signature, size_at, name_length_at, name_at in ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)):
        start = data.find(signature)
        while start != -1:
            (length,) = struct.unpack_from("<H", data, start + name_length_at)
            if data[start + name_at : start + name_at + length] == name.encode():
                struct.pack_into("<I", data, start + size_at, declared)
            start = data.find(signature, start + 4)
    with open(path, "wb") as file:
        file.write(data)


def test_entry_whose_declared_size_lies_is_refused_while_writing(tmp_path, target):
    archive = make_zip(tmp_path / "lying.zip", [("good.txt", b"fine"), ("zeros.bin", bytes(5_000_000))])
    lie_about_size(archive, "zeros.bin", 100)
    with zipfile.ZipFile(archive) as check:
        assert [info.file_size for info in check.infolist()] == [4, 100]
    refused(archive, target, tmp_path, "zeros.bin", max_total_bytes=1000)


def test_tar_truncated_after_its_member_list_is_refused(tmp_path, target):
    archive = make_tar(tmp_path / "m.tar", [tar_entry("a.bin", bytes(100_000)), tar_entry("b.bin", b"b")], "w")
    with open(archive, "r+b") as file:  # cut the first member's data short, keep the rest readable
        data = file.read()
        file.seek(0)
        file.write(data[: 512 + 1000] + data[512 + 100_352 :])
        file.truncate()
    with pytest.raises(RegistryError):
        extract_archive(archive, str(target))
    assert os.listdir(target) == []


# --- the target folder, cancel, unreadable archives ---------------------------------------------


def test_target_must_be_an_existing_empty_folder(tmp_path, target):
    archive = make_zip(tmp_path / "m.zip", [("a.txt", b"a")])
    with pytest.raises(RegistryError, match="not an existing folder"):
        extract_archive(archive, str(tmp_path / "absent"))
    (target / "old.txt").write_bytes(b"old")
    with pytest.raises(RegistryError, match="not empty"):
        extract_archive(archive, str(target))
    assert tree(target) == {"old.txt": b"old"}


def test_cancel_leaves_the_target_empty(tmp_path, target):
    archive = make_zip(tmp_path / "m.zip", list(FILES.items()))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        extract_archive(archive, str(target), cancel=cancel)
    assert os.listdir(target) == []


def test_unreadable_archive_says_so(tmp_path, target):
    (tmp_path / "m.zip").write_bytes(b"this is not an archive")
    with pytest.raises(RegistryError, match="not a readable zip or tar archive"):
        extract_archive(str(tmp_path / "m.zip"), str(target))
    with pytest.raises(RegistryError, match="archive not found"):
        extract_archive(str(tmp_path / "absent.zip"), str(target))
