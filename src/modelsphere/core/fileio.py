"""Atomic file writes, hashing and locking.

Every file the pipeline writes goes through `atomic_write`: the bytes land in a
temporary file in the destination folder, are fsync'ed, then renamed over the
destination. A crash or a full disk therefore leaves either the old file or the
new one, never half of one. The temporary file's name carries the writer's
process id, so a later write of the same file removes what a killed writer left.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, List

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.redaction import redact_written, redact_written_data

log = logging.getLogger(__name__)

HASH_CHUNK_BYTES = 1 << 20
TEMP_SUFFIX = ".tmp"
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would give; mkstemp's default is 0600


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _describe_os_error(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return f"no space left on device while writing {path}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: permission denied (is the folder writable?)"
    return f"cannot write {path}: {exc.strerror or exc}"


def remove_stale_temp_files(directory: str | os.PathLike) -> List[Path]:
    """Delete the temporary files `atomic_path` leaves when its process is killed
    mid-write (the file it was replacing is intact); returns what was removed."""
    stale = sorted(Path(directory).glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def remove_stale_temps(path: Path) -> List[Path]:
    """Remove the temporary files of `path` left by writers that died (SIGKILL,
    power loss): `.<name>.<pid>.<random>.tmp` whose process no longer runs. A
    live writer's file, or any other file, is left alone. Returns the removed."""
    removed = []
    prefix = f".{path.name}."
    for candidate in path.parent.glob(f"{glob.escape(prefix)}*{TEMP_SUFFIX}"):
        pid = candidate.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            candidate.unlink(missing_ok=True)
            log.info(
                "removed %s, left by process %s that no longer runs", candidate, pid
            )
            removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` on success.

    The caller writes the temporary file by any means (pyarrow, matplotlib, ...).
    On an exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent
        )
        os.close(fd)
    except OSError as exc:
        raise ModelSphereError(_describe_os_error(path, exc)) from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelSphereError(_describe_os_error(path, exc)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode="wb"):
    """Write a file atomically; `write` receives an open file handle."""
    with atomic_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as handle:
            write(handle)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data), mode="wb")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically; values the config took from the environment are
    replaced by their `${oc.env:NAME}` (core.redaction)."""
    _write_text(path, redact_written(text))


def _write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text), mode="w")


def _json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON: they become null (e.g. an undefined AUC)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def atomic_write_json(path: str | os.PathLike, payload: Any) -> None:
    payload = redact_written_data(_json_safe(payload))
    text = json.dumps(payload, indent=2, allow_nan=False)
    _write_text(path, text + "\n")


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file, turning every failure into a message naming the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError as exc:
        raise ModelSphereError(f"{what} not found: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelSphereError(f"{what} {path} is not valid JSON: {exc}") from exc
    except OSError as exc:
        raise ModelSphereError(f"cannot read {what} {path}: {exc}") from exc


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def file_lock(guarded: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock on `guarded` (a file or folder), so parallel sweep
    jobs do not race on it. The lock file lives in a hidden `.locks/` beside it."""
    guarded = Path(guarded)
    path = guarded.parent / ".locks" / f"{guarded.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def replace_symlink(link: str | os.PathLike, target: str) -> None:
    """Point `link` at `target` atomically (new link under a temp name + rename)."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
