"""Noticing that a file changed without reading it: the one test the edge uses for the files
it re-reads while running (its key after ``cairn-edge rotate-key``, a revocation list)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

__all__ = ["FileStamp", "file_stamp"]


class FileStamp(NamedTuple):
    """A version of a file: a different stamp means "read it again"."""

    inode: int
    """Changes when the file is replaced by a rename (atomic writes)."""
    mtime_ns: int
    size: int
    """Modification time and size change when the file is edited in place."""


def file_stamp(path: Path) -> FileStamp:
    """The stamp of ``path`` now; :class:`OSError` if it cannot be looked at."""
    st = path.stat()
    return FileStamp(st.st_ino, st.st_mtime_ns, st.st_size)
