"""Secret files (command keys, stethoscope keys, broker passwords), read with the mode of the
very file read, so swapping the file cannot race the "others may read it" check. Standard
library only, so every package may import it; each caller words its own error."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

OTHERS = stat.S_IRWXG | stat.S_IRWXO  # a secret file with any of these bits is refused


def read_private(path: str | Path, encoding: str) -> tuple[str, int]:
    """(text, permission bits) of ``path``, both from one open file."""
    with open(path, "rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        data = handle.read()
    return data.decode(encoding), mode


def others_may_read(mode: int) -> bool:
    return bool(mode & OTHERS)


def private_umask() -> int:
    """Group and others get no bits on what this process creates (patient data); the old umask."""
    before = os.umask(0o077)
    os.umask(before | 0o077)
    return before


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, mode 0600, atomically and durably; a link planted at
    the temporary name is removed, never written through."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def create_private(path: Path) -> None:
    """Create ``path`` 0600 if it is not there (before SQLite opens it: its -wal and -shm
    files take its mode); a link there is refused, a file others may read tightened."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        if os.fstat(fd).st_mode & OTHERS:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
