"""Atomic output directories: build in a temporary sibling, fsync, then rename into place.

A crash or Ctrl-C leaves the old output (or nothing) and never a half-written store. The
temporary sibling sits next to the target so the final rename stays on one filesystem.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gristmill.errors import ConfigError


def check_output(out: Path, *, overwrite: bool) -> None:
    """Refuse an existing output unless `overwrite`; refuse a file where a directory goes."""
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: output already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory; choose another --out")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_directory(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` only if the block completes.

    Example:
        >>> with atomic_directory(Path("store"), overwrite=False) as tmp:  # doctest: +SKIP
        ...     (tmp / "manifest.json").write_text("{}")
    """
    out = Path(out)
    check_output(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tmp = out.parent / f".{out.name}.tmp-{token}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        if out.exists():
            # Move the old output aside first: rename onto a non-empty directory fails.
            trash = out.parent / f".{out.name}.old-{token}"
            out.rename(trash)
            tmp.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out)
        _fsync_dir(out.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
