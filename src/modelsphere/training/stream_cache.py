"""Model-ready tensors of streamed row groups, kept on disk between epochs.

Reading a row group of a split and transforming it (quantile-normal scaling,
category lookup) costs far more CPU than training on its rows for most models.
With `train.stream_cache=true` (the default) a streamed run that trains for
more than one epoch writes each row group's tensors, the first time the group
is read, to `<run dir>/stream_cache/<key>/`; later epochs read those bytes
back instead of the Parquet. The tensors are the transform's own output, so a
cached epoch trains on exactly what an uncached one would.

- The key is a digest of the split file and the fitted feature state: a cache
  written for other data or another transform is never read.
- A file is written to a temporary name, flushed to disk and renamed, so a
  killed write or a power loss leaves no half file under the final name; a
  file that cannot be read back all the same is a miss: the group is read
  again.
- A full disk (or any failure to write) turns the cache off for the rest of
  the run with one warning and removes what it held; the run goes on reading
  the Parquet.
- Each process caches only the row groups it reads; a completed run removes
  the whole cache once every process is done with it (an interrupted one keeps
  it for its resume).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from modelsphere.core.fileio import sha256_text
from modelsphere.features.tensors import SplitTensors

log = logging.getLogger(__name__)

CACHE_DIR = "stream_cache"
KEY_CHARS = 16  # of the digest naming a cache


def cache_key(split_sha256: str, feature_state: Any) -> str:
    """What the cached tensors depend on: the split's bytes and the transform."""
    state = json.dumps(feature_state, sort_keys=True, default=_plain)
    return sha256_text(f"{split_sha256}\n{state}")[:KEY_CHARS]


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


class GroupCache:
    """The cached tensors of one split's row groups (CPU tensors)."""

    def __init__(self, directory: Path, split: str):
        self.directory, self.split = Path(directory), split
        self.enabled = True
        self.touched: set = set()  # groups read or written by this process

    def path(self, group: int) -> Path:
        return self.directory / f"{self.split}-{group:06d}.safetensors"

    def holds(self, groups) -> bool:
        """Whether every one of `groups` is cached (read back, not transformed)."""
        return self.enabled and all(self.path(group).is_file() for group in groups)

    def get(self, group: int, make: Callable[[], SplitTensors]) -> SplitTensors:
        """The group's tensors from the cache, or made by `make` and cached."""
        if not self.enabled:
            return make()
        self.touched.add(group)
        cached = self._read(group)
        if cached is not None:
            return cached
        tensors = make()
        self._write(group, tensors)
        return tensors

    def _read(self, group: int) -> Optional[SplitTensors]:
        path = self.path(group)
        if not path.is_file():
            return None
        try:
            parts = load_file(path)
            return SplitTensors(parts["numeric"], parts["categorical"], parts["target"])
        except (OSError, SafetensorError, KeyError) as exc:
            log.warning(
                "stream cache: %s unreadable (%s); reading the split", path, exc
            )
            return None

    def _write(self, group: int, tensors: SplitTensors) -> None:
        final = self.path(group)
        tmp = None
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
            os.close(fd)
            parts = zip(("numeric", "categorical", "target"), tensors.parts())
            save_file({name: part.contiguous() for name, part in parts}, tmp)
            with open(tmp, "rb+") as handle:  # on disk before it has its name
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        except (OSError, SafetensorError) as exc:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            self.remove()  # what it holds, to give the disk back
            self.enabled = False
            log.warning(
                "stream cache: could not write %s (%s); later epochs read the "
                "split's Parquet again (train.stream_cache)",
                final,
                exc,
            )

    def remove(self) -> None:
        """The groups this process cached, and the cache folders once empty
        (the last process to finish removes them)."""
        for group in self.touched:
            self.path(group).unlink(missing_ok=True)
        for folder in (self.directory, self.directory.parent):
            try:
                folder.rmdir()
            except OSError:  # other processes' files, or never made
                break


def remove_stream_cache(run_dir: Path) -> None:
    """A completed run's whole stream cache, whoever wrote it: groups a resumed
    run never read again, and temporary files of a killed write, included."""
    shutil.rmtree(Path(run_dir) / CACHE_DIR, ignore_errors=True)


def split_cache(
    run_dir: Path, split: str, split_sha256: str, feature_state: Any
) -> GroupCache:
    key = cache_key(split_sha256, feature_state)
    return GroupCache(Path(run_dir) / CACHE_DIR / key, split)
