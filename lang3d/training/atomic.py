"""Writing files so that an interrupted run never leaves a half-written one: write to a temporary file beside the
target, then move it into place with one ``os.replace`` (atomic on POSIX file systems)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_write(path) as f: ...``: ``f`` is a temporary file in ``path``'s folder (created if needed);
    when the block ends normally it replaces ``path``, when it raises (or the process dies) ``path`` is untouched
    and the temporary file is removed (or, after a kill, left as a hidden ``.<name>.<pid>.tmp``)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write opens files for writing ('w' or 'wb'), got mode {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
