"""Parsed profile YAML kept between runs, so that a run need not parse 60-odd files.

Every capcalc run reads every shipped profile (the registry resolves names and aliases
across all of them), and parsing YAML is most of that cost. This cache keeps, for each
file read by the last registry load, the parsed data under the file's identity: path,
inode, size, modification and change time (nanoseconds). A file whose identity differs
is parsed again; nothing else decides. As in git's index, a file modified within
:data:`RACY_S` of being cached is not cached, since a rewrite within the filesystem's
timestamp granularity could keep every field of its identity.

The cache lives at ``$CAPCALC_CACHE_DIR`` or ``$XDG_CACHE_HOME/capcalc`` (default
``~/.cache/capcalc``); ``CAPCALC_NO_CACHE=1`` turns it off. A cache that cannot be read
or written is ignored: it only ever saves time. It is JSON (data, never code: a planted
file can at worst make a run parse its profiles again), read only when it is a regular
file, and written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capcalc.core.fileio import write_atomic
from capcalc.core.inputs import read_bytes

#: bump when what is stored changes meaning
FORMAT = 2
#: seconds: files modified this recently are parsed but not cached
RACY_S = 2.0

_Identity = tuple[int, int, int, int]


def cache_path() -> Path | None:
    """The cache file, or None when caching is off (``CAPCALC_NO_CACHE``)."""
    if os.environ.get("CAPCALC_NO_CACHE", "") not in ("", "0"):
        return None
    base = os.environ.get("CAPCALC_CACHE_DIR")
    if base:
        return Path(base) / f"profiles-v{FORMAT}.json"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "capcalc" / f"profiles-v{FORMAT}.json"


def _identity(stat: os.stat_result) -> _Identity:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class YamlCache:
    """One registry load's view of the cache: :meth:`parse` each file, then :meth:`save`."""

    def __init__(self, path: Path | None = None):
        self.path = path if path is not None else cache_path()
        self._old: dict[str, tuple[_Identity, str]] = {}
        self._new: dict[str, tuple[_Identity, str]] = {}
        if self.path is not None:
            try:
                stored = json.loads(read_bytes(self.path, "cache"))
                self._old = {
                    key: (tuple(identity), text)
                    for key, (identity, text) in stored.items()
                    if isinstance(text, str) and len(identity) == 4
                }
            except Exception:  # absent, unreadable or from something else: start afresh
                self._old = {}

    def parse(self, path: Path, read: Callable[[Path], str], parse: Callable[[str], Any]) -> Any:
        """``parse(read(path))``, or the data cached for this very file."""
        try:
            key = str(path.resolve())
            identity = _identity(path.stat())
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop, on Python < 3.13
            return parse(read(path))  # let read() say what is wrong with the file
        hit = self._old.get(key)
        if hit is not None and hit[0] == identity:
            self._new[key] = hit
            return json.loads(hit[1])  # a fresh copy each time
        data = parse(read(path))
        if self.path is not None and identity[2] < time.time_ns() - int(RACY_S * 1e9):
            with contextlib.suppress(TypeError, ValueError):  # a value JSON cannot hold: not cached
                text = json.dumps(data)
                if json.loads(text) == data:  # e.g. integer keys would come back as strings
                    self._new[key] = (identity, text)
        return data

    def save(self) -> None:
        """Write the entries of the files parsed through this cache, if any changed."""
        if self.path is None or self._new == self._old:
            return
        with contextlib.suppress(OSError):  # a read-only home: the next run parses again
            write_atomic(self.path, json.dumps(self._new).encode())
