"""Files capcalc writes are written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from capcalc.core.errors import CapcalcError


def _umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, content: str | bytes, exclusive: bool = False) -> Path:
    """Write ``content`` (text, or bytes such as an image) to ``path`` through a
    temporary file in the same directory and an atomic rename, so a reader never
    sees half a file and a failure leaves the old file (or none) in place.

    The file gets the mode a plain ``open`` would give it (0666 less the umask), not the
    temporary file's 0600. With ``exclusive`` the file is created only if ``path`` does not
    exist (a hard link, which fails if it does, in place of the rename): two writers can
    never both report the file as theirs; the loser gets :class:`FileExistsError`. Any
    other failure to write is one :class:`CapcalcError` line naming the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:200]}.", suffix=".tmp")
    except OSError as exc:
        raise CapcalcError(f"{path}: cannot write: {exc.strerror or type(exc).__name__}") from None
    binary = isinstance(content, bytes)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp, path)
            Path(tmp).unlink()
        else:
            os.replace(tmp, path)
    except FileExistsError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CapcalcError(f"{path}: cannot write: {exc.strerror or type(exc).__name__}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
