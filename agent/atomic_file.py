"""Replacing a file so that a reader sees the old one or the new one, never half of either.

Three places write files this way (the certificate store, and the two start-up caches beside
the bytecode and in the state directory); they differ only in the new file's mode and in
whether it must survive a power cut (a certificate must, a cache that is lost is rebuilt).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def replace_file(path: Path, data: bytes, *, mode: int = 0o600, durable: bool = False,
                 prefix: str | None = None) -> None:
    """Write ``data`` to a temporary file beside ``path`` (created ``mode``: mkstemp's 0600
    unless widened), then rename it over ``path``.  ``durable``: the data and the rename are
    fsynced, so that after a power cut the file is the old or the new one, not empty.
    Raises OSError; the temporary file never outlives a failure."""
    import tempfile  # here: it pulls in random and shutil, which a start does not need

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix or f".{path.name}.",
                               suffix=".tmp")
    try:
        if mode != 0o600:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


__all__ = ["replace_file"]
