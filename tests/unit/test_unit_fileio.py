"""Atomic writes, hashing, JSON reading, locks and symlinks."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest

from modelsphere.core import fileio
from modelsphere.core.errors import ModelSphereError
from modelsphere.core.fileio import (
    atomic_path,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_lock,
    read_json,
    replace_symlink,
    sha256_file,
    sha256_text,
)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def entries(folder: Path):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_bytes_text_and_json(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01binary")
    atomic_write_text(tmp_path / "b.txt", "héllo\nwörld\n")
    atomic_write_json(tmp_path / "c.json", {"x": [1, 2.5, None], "y": "z"})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01binary"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo\nwörld\n"
    assert json.loads((tmp_path / "c.json").read_text()) == {
        "x": [1, 2.5, None],
        "y": "z",
    }
    assert (tmp_path / "c.json").read_text().endswith("}\n")
    assert entries(tmp_path) == ["a.bin", "b.txt", "c.json"]


def test_atomic_write_replaces_content_and_creates_parents(tmp_path):
    path = tmp_path / "deep" / "er" / "f.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert entries(path.parent) == ["f.txt"]


def test_atomic_write_json_rejects_non_json_without_touching_the_file(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": {1, 2}})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert entries(tmp_path) == ["m.json"]


def test_writer_failing_midway_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old content")

    def writer(handle):
        handle.write(b"new, partial")
        handle.flush()
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError, match="writer crashed"):
        atomic_write(path, writer)
    assert path.read_bytes() == b"old content"
    assert entries(tmp_path) == ["data.bin"]


def test_disk_full_while_writing_is_a_clear_error(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old content")

    def writer(handle):
        handle.write(b"some")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ModelSphereError) as err:
        atomic_write(path, writer)
    assert "no space left on device" in str(err.value)
    assert str(path) in str(err.value)
    assert path.read_bytes() == b"old content"
    assert entries(tmp_path) == ["data.bin"]


def test_disk_full_at_rename_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "model.json"
    path.write_text("old")

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(ModelSphereError) as err:
        atomic_write_text(path, "new")
    assert "no space" in str(err.value).lower()
    assert str(path) in str(err.value)
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert entries(tmp_path) == ["model.json"]


def test_unwritable_folder_is_a_permission_error_message(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(ModelSphereError) as err:
        atomic_write_text(path, "x")
    assert "permission denied" in str(err.value)
    assert str(path) in str(err.value)
    assert not path.exists()


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root ignores directory permissions; covered by the mkstemp simulation",
)
def test_chmod_readonly_folder_keeps_the_old_file(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "f.txt"
    path.write_text("old")
    folder.chmod(0o500)
    try:
        with pytest.raises(ModelSphereError, match="permission denied"):
            atomic_write_text(path, "new")
    finally:
        folder.chmod(0o700)
    assert path.read_text() == "old"
    assert entries(folder) == ["f.txt"]


def test_other_os_errors_are_described(tmp_path, monkeypatch):
    def broken(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(ModelSphereError, match="cannot write .*Input/output error"):
        atomic_write_text(tmp_path / "f.txt", "x")


def test_atomic_path_lets_any_writer_fill_the_temp_file(tmp_path):
    path = tmp_path / "plot.png"
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path
        assert tmp != path
        assert not path.exists()
        tmp.write_bytes(b"PNG")
    assert path.read_bytes() == b"PNG"
    assert entries(tmp_path) == ["plot.png"]


def test_new_files_respect_the_umask_not_0600(tmp_path):
    path = tmp_path / "f.txt"
    old = tmp_path / "old.txt"
    old.write_text("x")
    old.chmod(0o600)
    atomic_write_text(path, "x")
    atomic_write_text(old, "y")
    expected = 0o666 & ~current_umask()
    assert stat.S_IMODE(path.stat().st_mode) == expected
    assert stat.S_IMODE(old.stat().st_mode) == expected
    assert expected != 0o600
    assert fileio.FILE_MODE == expected


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    data = os.urandom(fileio.HASH_CHUNK_BYTES * 2 + 12345)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()
    assert sha256_text("héllo") == hashlib.sha256("héllo".encode()).hexdigest()


def test_read_json_errors_name_the_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"a": 1}')
    assert read_json(good, "thing") == {"a": 1}
    with pytest.raises(ModelSphereError, match=r"thing not found: .*missing\.json"):
        read_json(tmp_path / "missing.json", "thing")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": ')
    with pytest.raises(ModelSphereError) as err:
        read_json(bad, "thing")
    assert str(bad) in str(err.value) and "not valid JSON" in str(err.value)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ModelSphereError, match="not valid JSON"):
        read_json(binary, "thing")
    with pytest.raises(ModelSphereError, match="cannot read thing"):
        read_json(tmp_path, "thing")  # a directory


def test_replace_symlink_points_and_repoints(tmp_path):
    (tmp_path / "run1").mkdir()
    (tmp_path / "run2").mkdir()
    link = tmp_path / "latest"
    replace_symlink(link, "run1")
    assert link.is_symlink() and os.readlink(link) == "run1"
    assert link.resolve() == (tmp_path / "run1").resolve()
    replace_symlink(link, "run2")
    assert os.readlink(link) == "run2"
    assert entries(tmp_path) == ["latest", "run1", "run2"]


def test_replace_symlink_over_a_stale_temp_link(tmp_path):
    link = tmp_path / "latest"
    stale = tmp_path / f".latest.{os.getpid()}.tmp"
    os.symlink("nowhere", stale)
    replace_symlink(link, "run9")
    assert os.readlink(link) == "run9"
    assert not os.path.lexists(stale)


def test_file_lock_excludes_a_second_holder(tmp_path):
    guarded = tmp_path / "processed" / "telco"
    events = []
    held = threading.Event()

    def holder():
        with file_lock(guarded):
            events.append("first in")
            held.set()
            time.sleep(0.2)
            events.append("first out")

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(5)
    with file_lock(guarded):
        events.append("second in")
    thread.join(5)
    assert events == ["first in", "first out", "second in"]
    with file_lock(guarded):  # released again: can be taken at once
        pass


def test_atomic_write_json_writes_undefined_numbers_as_null(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"roc_auc": float("nan"), "x": [1.5, float("inf")]})
    assert json.loads(path.read_text()) == {"roc_auc": None, "x": [1.5, None]}


def test_a_write_removes_the_temporary_files_dead_writers_left(tmp_path, caplog):
    target = tmp_path / "scored.parquet"
    dead = tmp_path / ".scored.parquet.4194305.k1ll3d.tmp"  # above Linux's pid_max
    alive = tmp_path / f".scored.parquet.{os.getppid()}.writing.tmp"
    unnumbered = tmp_path / ".scored.parquet.abcdefgh.tmp"  # not one of ours
    other = tmp_path / ".other.parquet.4194305.x.tmp"  # another file's
    for path in (dead, alive, unnumbered, other):
        path.write_bytes(b"partial")
    caplog.set_level("INFO", logger="modelsphere")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert not dead.exists()
    assert alive.exists() and unnumbered.exists() and other.exists()
    assert "left by process 4194305 that no longer runs" in caplog.text


def test_the_temporary_file_names_its_writer(tmp_path):
    with fileio.atomic_path(tmp_path / "model.json") as tmp:
        assert tmp.name.startswith(f".model.json.{os.getpid()}.")
        assert tmp.name.endswith(".tmp")
        tmp.write_text("{}")
