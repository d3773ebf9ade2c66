"""The one atomic write (ModelRegistryLib.files) on real files: full disks, read-only folders, umasks, links."""

from __future__ import annotations

import os
import stat

import pytest
from fault_injection import read_only, run_python

from ModelRegistryLib import files
from ModelRegistryLib.files import (
    atomic_target,
    backup_path,
    contained_path,
    install_file,
    is_temporary_name,
    make_temporary_folder,
    temporary_path,
    write_bytes_atomically,
    write_json_atomically,
)


def read(path):
    with open(path, "rb") as file:
        return file.read()


def test_first_write_makes_no_backup_and_later_ones_keep_the_previous_version(tmp_path):
    path = str(tmp_path / "a.json")
    write_bytes_atomically(path, b"1", keep_backup=True)
    assert os.listdir(tmp_path) == ["a.json"]
    write_bytes_atomically(path, b"2", keep_backup=True)
    write_bytes_atomically(path, b"3", keep_backup=True)
    assert (read(path), read(backup_path(path))) == (b"3", b"2")


def test_without_backup_only_the_file_changes(tmp_path):
    path = str(tmp_path / "case.recovery.seg.nrrd")
    write_bytes_atomically(path, b"1")
    write_bytes_atomically(path, b"2")
    assert os.listdir(tmp_path) == ["case.recovery.seg.nrrd"] and read(path) == b"2"


def test_permissions_of_a_replaced_file_are_kept(tmp_path):
    path = str(tmp_path / "a.csv")
    write_bytes_atomically(path, b"1")
    os.chmod(path, 0o640)
    write_bytes_atomically(path, b"2", keep_backup=True)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(backup_path(path)).st_mode) == 0o640


@pytest.mark.parametrize("umask", [0o002, 0o022])
def test_new_files_and_folders_follow_the_umask(tmp_path, umask):
    """A cache or export shared by a group: files 0664 and folders 0775 under umask 002 (not 0600/0700)."""
    previous = os.umask(umask)
    try:
        write_json_atomically(str(tmp_path / "new" / "index.json"), {"a": 1})
        with atomic_target(str(tmp_path / "label.nii.gz")) as temporary, open(temporary, "wb") as file:
            file.write(b"x")
        folder = make_temporary_folder(str(tmp_path), prefix="staging-")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "new" / "index.json").st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(tmp_path / "label.nii.gz").st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o777 & ~umask
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o777 & ~umask


def test_temporary_names_are_hidden_siblings_ending_with_the_target_name(tmp_path):
    path = str(tmp_path / "case.seg.nrrd")
    first, second = temporary_path(path), temporary_path(path)
    assert first != second and os.path.dirname(first) == str(tmp_path)
    assert is_temporary_name(first) and first.endswith("-case.seg.nrrd")
    long_name = "x" * 250 + ".nii.gz"
    assert len(os.path.basename(temporary_path(str(tmp_path / long_name)))) < 255
    assert temporary_path(str(tmp_path / long_name)).endswith("x.nii.gz")


def test_an_error_in_the_writer_leaves_the_file_as_it_was_and_no_temporary(tmp_path):
    path = str(tmp_path / "result.json")
    write_bytes_atomically(path, b"old")
    with pytest.raises(RuntimeError), atomic_target(path) as temporary:
        with open(temporary, "wb") as file:
            file.write(b"half")
        raise RuntimeError("writer failed")
    assert read(path) == b"old" and os.listdir(tmp_path) == ["result.json"]


def test_a_failed_rename_leaves_the_file_as_it_was_and_no_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / "case.seg.nrrd")
    write_bytes_atomically(path, b"old")
    temporary = temporary_path(path)
    with open(temporary, "wb") as file:
        file.write(b"new")
    real_replace = os.replace

    def failing_replace(source, target):
        if os.fspath(target) == path:
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError):
        install_file(temporary, path, keep_backup=True)
    assert read(path) == b"old"
    assert sorted(os.listdir(tmp_path)) == ["case.seg.nrrd", "case.seg.nrrd.bak"]


def test_a_full_disk_raises_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"previous")
    result = run_python(
        "from ModelRegistryLib.files import write_bytes_atomically\n"
        f"write_bytes_atomically({str(path)!r}, bytes(1 << 20))",
        file_size_limit=64 * 1024,
    )
    assert result.returncode == 1 and "OSError: [Errno 27] File too large" in result.stderr
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["weights.bin"]


def test_a_read_only_folder_raises_and_keeps_the_previous_file(tmp_path):
    folder = tmp_path / "outputs"
    folder.mkdir()
    (folder / "a.json").write_bytes(b"previous")
    with read_only(folder), pytest.raises(OSError):
        write_json_atomically(str(folder / "a.json"), {"new": True})
    assert (folder / "a.json").read_bytes() == b"previous" and os.listdir(folder) == ["a.json"]


@pytest.mark.parametrize(
    "relative",
    ["../outside.txt", "/etc/passwd", "a/../../b", "", ".", "a//b", "a/./b", "a\\..\\b", "x\x00y", "linked/file"],
)
def test_contained_path_refuses_whatever_leads_outside(tmp_path, relative):
    root = tmp_path / "root"
    root.mkdir()
    (root / "linked").symlink_to(tmp_path)
    with pytest.raises(ValueError):
        contained_path(str(root), relative)


def test_contained_path_accepts_plain_relative_paths(tmp_path):
    assert contained_path(str(tmp_path), "labelsTr/c1.nii.gz") == os.path.join(str(tmp_path), "labelsTr", "c1.nii.gz")
    assert contained_path(str(tmp_path), "..hidden") == os.path.join(str(tmp_path), "..hidden")
