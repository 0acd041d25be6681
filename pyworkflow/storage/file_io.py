"""Low-level file helpers of the file backend: whole reads and writes, quiet unlinks,
directory flushes. No rules about what the files mean live here."""

from __future__ import annotations

import os
from collections.abc import Callable

O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_CHUNK = 1 << 16

# What the file backend creates is private to its owner, whatever the umask: runs hold
# their arguments and results. What exists already keeps its mode, so to share a store
# with a group, create its directory first with the mode you want (e.g. 2770).
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private_dirs(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)``, but every directory it creates (not only the
    last, as ``os.makedirs`` does) gets :data:`PRIVATE_DIR_MODE`; existing ones are left
    as they are."""
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise


def read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    try:
        return pread_to_end(fd)
    finally:
        os.close(fd)


def pread_to_end(fd: int, offset: int = 0) -> bytes:
    chunk = os.pread(fd, _CHUNK, offset)
    if len(chunk) < _CHUNK:
        return chunk  # short read of a regular file: the end (one call for small files)
    chunks = [chunk]
    while chunk:
        offset += len(chunk)
        chunk = os.pread(fd, _CHUNK, offset)
        chunks.append(chunk)
    return b"".join(chunks)


def pread_all(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes from ``offset``, fewer only at the end of the file."""
    data = os.pread(fd, size, offset)
    if len(data) == size:
        return data
    chunks = [data]
    got = len(data)
    while got < size:
        chunk = os.pread(fd, size - got, offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def sync_dir(path: str) -> None:
    """Flush a directory's entries (new and removed names) to disk."""
    fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Flushes a file's data (and what is needed to read it back). Looked up at call time
#: (``file_io.fdatasync``), so tests can count the flushes.
fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)
