"""Atomic writes with backups (TrainingDataExportLib.files) on real files in tmp_path."""

from __future__ import annotations

import os
import stat

import pytest

from TrainingDataExportLib import files
from TrainingDataExportLib.files import backup_path, install_file, temporary_path, write_file_atomically


def read(path):
    with open(path, "rb") as file:
        return file.read()


def test_first_write_makes_no_backup_and_later_ones_keep_the_previous_version(tmp_path):
    path = str(tmp_path / "a.json")
    write_file_atomically(path, b"1")
    assert os.listdir(tmp_path) == ["a.json"]
    write_file_atomically(path, b"2")
    write_file_atomically(path, b"3")
    assert (read(path), read(backup_path(path))) == (b"3", b"2")


def test_without_backup_only_the_file_changes(tmp_path):
    path = str(tmp_path / "case.recovery.seg.nrrd")
    write_file_atomically(path, b"1", keep_backup=False)
    write_file_atomically(path, b"2", keep_backup=False)
    assert os.listdir(tmp_path) == ["case.recovery.seg.nrrd"] and read(path) == b"2"


def test_permissions_of_the_file_are_kept(tmp_path):
    path = str(tmp_path / "a.csv")
    write_file_atomically(path, b"1")
    os.chmod(path, 0o640)
    write_file_atomically(path, b"2")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(backup_path(path)).st_mode) == 0o640


def test_temporary_names_are_hidden_siblings_with_the_given_ending(tmp_path):
    path = str(tmp_path / "case.seg.nrrd")
    first, second = temporary_path(path, ".seg.nrrd"), temporary_path(path, ".seg.nrrd")
    assert first != second
    assert os.path.dirname(first) == str(tmp_path)
    assert os.path.basename(first).startswith(".case.seg.nrrd.") and first.endswith(".seg.nrrd")


def test_a_failed_rename_leaves_the_file_as_it_was_and_no_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / "case.seg.nrrd")
    write_file_atomically(path, b"old")
    temporary = temporary_path(path, ".seg.nrrd")
    with open(temporary, "wb") as file:
        file.write(b"new")
    real_replace = os.replace

    def failing_replace(source, target):
        if os.fspath(target) == path:
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError):
        install_file(temporary, path)
    assert read(path) == b"old"
    assert sorted(os.listdir(tmp_path)) == ["case.seg.nrrd", "case.seg.nrrd.bak"]
