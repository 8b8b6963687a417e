"""Atomic file writes: a crash never leaves a half-written checkpoint, engine or event."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from edgeas.errors import StreamError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; rename it over `path` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def writable_folder(path: str | os.PathLike, what: str, flag: str) -> Path:
    """Create the folder a station writes into, or a StreamError that names it and the
    option (`flag`) that chooses another: `what` is "events folder", "queue folder"..."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StreamError(f"cannot create the {what} {folder}: {exc.strerror}",
                          hint=f"choose a writable {flag}") from exc
    if not os.access(folder, os.W_OK):
        raise StreamError(f"{what} {folder} is not writable",
                          hint=f"fix its permissions or choose another {flag}")
    return folder
