"""The one input layer: every value that comes from outside capcalc (a flag, a profile,
a calibration file, a config.json, a safetensors header or index, a Hub revision) is
checked here before a calculation sees it.

The rules (``docs/reliability.md`` records how they are tested):

* numbers are finite; whole numbers are written with ASCII digits, and each count is
  within the bound of :data:`BOUNDS`, which states why it is what it is;
* a string where a value is expected is not empty, holds no control character, and no
  part of it is longer than a file name may be (255 bytes);
* only regular files are read (never a FIFO, a device or a directory; a dangling link or
  a link loop is refused), each no larger than its kind allows, and as UTF-8;
* YAML is parsed with the safe loader, then refused when it nests too deep, repeats a
  key, or expands through aliases to more values than a profile could hold ("billion
  laughs"), before anything walks it; JSON is refused when it nests too deep;
* a shard name from an index stays inside its folder, and a Hub revision is a git ref
  name or a commit;
* a refusal is one line naming the source (flag, or file and field), a bounded excerpt
  of the value (:func:`excerpt`: never a whole value, never a file's contents) and what
  is allowed.
"""

from __future__ import annotations

import math
import os
import re
import reprlib
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capcalc.core.errors import CapcalcError, ProfileError

# --------------------------------------------------------------------------- excerpts

_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = 48
_REPR.maxother = 48
_REPR.maxlong = 24
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
#: the longest excerpt of a value an error message carries
EXCERPT_CHARS = 64


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A bounded repr of ``value`` for an error message: at most ``limit`` characters,
    whatever its size or nesting (a shared, alias-expanded YAML value included)."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a repr that fails is still not worth a traceback
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- bounds


@dataclass(frozen=True)
class Bound:
    """The allowed range of one kind of count, and why."""

    low: int
    high: int
    reason: str


#: counts a model, a GPU or a request may have. The upper bounds are far above any
#: published model or deployment, and low enough that per-layer lists stay small and
#: every product of them stays a finite float (far below 1e308).
BOUNDS: dict[str, Bound] = {
    "layers": Bound(1, 65_536, "2^16, over 500x the deepest published LLM (126 layers)"),
    "hidden_size": Bound(1, 1_048_576, "2^20, over 50x the widest published LLM (18,432)"),
    "intermediate_size": Bound(1, 4_194_304, "2^22, over 50x the widest published MLP"),
    "heads": Bound(1, 65_536, "2^16, over 500x the most attention heads published (128)"),
    "head_dim": Bound(1, 65_536, "2^16, over 100x the largest published head (576)"),
    "vocab": Bound(1, 16_777_216, "2^24, over 60x the largest published vocabulary (262,144)"),
    "experts": Bound(1, 65_536, "2^16, over 200x the most experts published (256)"),
    "context": Bound(1, 1_073_741_824, "2^30 tokens, over 100x the longest published context (10M)"),
    "batch": Bound(1, 16_777_216, "2^24 sequences, over 1,000x any serving batch"),
    "tokens": Bound(1, 1_073_741_824, "2^30 tokens, the context bound"),
    "tp": Bound(1, 4_096, "more GPUs than any tensor-parallel group"),
    "pp": Bound(1, 4_096, "more stages than any pipeline"),
    "gpus": Bound(1, 1_048_576, "2^20 GPUs, more than any cluster"),
    "group_size": Bound(1, 1_048_576, "2^20 weights per quantisation group"),
    "block_size": Bound(1, 1_048_576, "2^20 tokens per KV block"),
    "repeats": Bound(1, 100_000, "timed repeats per point"),
    "count": Bound(0, 2**53, "2^53, the largest whole number a float holds exactly"),
}

#: the most characters a flag value, name or path may have (PATH_MAX on Linux)
MAX_TEXT = 4096
#: the longest file name (one path component) the common file systems allow
MAX_NAME = 255
#: digits a whole number may have before it is parsed (2^53 has 16)
_MAX_DIGITS = 20

_ASCII_INT = re.compile(r"^[-+]?[0-9](?:_?[0-9])*$")
_ASCII_FLOAT = re.compile(
    r"^[-+]?(?:[0-9](?:_?[0-9])*(?:\.(?:[0-9](?:_?[0-9])*)?)?|\.[0-9](?:_?[0-9])*)(?:[eE][-+]?[0-9]+)?$"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_count(value: Any, where: str, kind: str = "count", low: int | None = None) -> int:
    """``value`` as a whole number within :data:`BOUNDS` [kind] (``low`` overrides its lower end)."""
    bound = BOUNDS[kind]
    low = bound.low if low is None else low
    if isinstance(value, bool) or not isinstance(value, int):
        raise CapcalcError(f"{where}: expected a whole number, got {excerpt(value)}")
    if value < low:
        raise CapcalcError(f"{where} must be at least {low}, got {excerpt(value)}")
    if value > bound.high:
        raise CapcalcError(f"{where}: {excerpt(value)} is above the bound {bound.high:,} ({bound.reason})")
    return value


def check_number(value: Any, where: str, *, positive: bool = False, minimum: float | None = None) -> float:
    """``value`` (an int or float, never a bool) as a finite float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CapcalcError(f"{where}: expected a number, got {excerpt(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise CapcalcError(f"{where}: expected a finite number, got {excerpt(value)}")
    if positive and not number > 0:
        raise CapcalcError(f"{where}: must be positive, got {excerpt(value)}")
    if minimum is not None and number < minimum:
        raise CapcalcError(f"{where}: must be at least {minimum:g}, got {excerpt(value)}")
    return number


def parse_int(text: Any, where: str, kind: str = "count", low: int | None = None) -> int:
    """A whole number from ``text`` written in ASCII digits ('²' and '٣' are refused), within its bound."""
    if isinstance(text, int) and not isinstance(text, bool):
        return check_count(text, where, kind, low)
    raw = str(text).strip()
    if len(raw) > MAX_TEXT or not _ASCII_INT.match(raw):
        raise CapcalcError(f"{where}: expected a whole number in ASCII digits, got {excerpt(raw)}")
    if len(raw.replace("_", "").lstrip("+-")) > _MAX_DIGITS:  # never parse a 400-digit number
        bound = BOUNDS[kind]
        raise CapcalcError(f"{where}: {excerpt(raw)} is above the bound {bound.high:,} ({bound.reason})")
    return check_count(int(raw.replace("_", "")), where, kind, low)


def parse_float(text: Any, where: str, *, positive: bool = False, minimum: float | None = None) -> float:
    """A finite number from ``text`` written in ASCII ('inf', 'nan' and '1e309' are refused)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return check_number(text, where, positive=positive, minimum=minimum)
    raw = str(text).strip()
    if not _ASCII_FLOAT.match(raw) or len(raw) > 64:
        raise CapcalcError(f"{where}: expected a finite number in ASCII digits, got {excerpt(raw)}")
    return check_number(float(raw.replace("_", "")), where, positive=positive, minimum=minimum)


def check_text(value: Any, where: str, *, what: str = "a value") -> str:
    """A non-empty string without control characters, at most :data:`MAX_TEXT` characters,
    none of its '/'-separated parts longer than :data:`MAX_NAME` bytes."""
    if not isinstance(value, str):
        raise CapcalcError(f"{where}: expected {what}, got {excerpt(value)}")
    if not value.strip():
        raise CapcalcError(f"{where}: expected {what}, got an empty string")
    if _CONTROL.search(value):
        raise CapcalcError(f"{where}: control characters are not allowed, got {excerpt(value)}")
    if len(value) > MAX_TEXT:
        raise CapcalcError(f"{where}: longer than {MAX_TEXT} characters, got {excerpt(value)}")
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME for part in value.split("/")):
        raise CapcalcError(
            f"{where}: a name longer than {MAX_NAME} bytes (the longest file name allowed), got {excerpt(value)}"
        )
    return value


# --------------------------------------------------------------------------- files

#: the largest file of each kind capcalc reads, and why
MAX_BYTES = {
    "profile": 4 << 20,  # a profile is a few KB; an explicit 65,536-layer list is ~700 KB
    "calibration": 4 << 20,  # one entry per GPU of a few hundred bytes
    "config": 16 << 20,  # a transformers config.json is tens of KB
    "index": 256 << 20,  # a safetensors index lists every tensor: a few MB for the largest models
    "ref": 4096,  # a Hub cache refs/ file holds one commit hash
    "cache": 64 << 20,  # capcalc's own parsed-profile cache: tens of KB per profile file
    "results": 64 << 20,  # benchmark results (JSON, JSONL, CSV): a row per request of a long run
}


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def open_regular(path: str | os.PathLike) -> tuple[int, int]:
    """(file descriptor, size) of ``path`` opened for reading, a regular file only.

    A FIFO, device, socket or directory is refused without opening it; should one be
    swapped in after the check, the non-blocking open cannot hang and ``fstat`` refuses
    it. A dangling link, a link loop or a too-long name is one line."""
    refused = "not a regular file (capcalc reads only regular files, not a FIFO, device or directory)"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise CapcalcError(f"{path}: {refused}")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise CapcalcError(f"{excerpt(str(path), 200)}: cannot read: {_why(exc)}") from None
    except ValueError:  # an embedded NUL
        raise CapcalcError(f"{excerpt(str(path), 200)}: not a valid file name") from None
    try:
        opened = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise CapcalcError(f"{path}: cannot read: {_why(exc)}") from None
    if not stat.S_ISREG(opened.st_mode):
        os.close(fd)
        raise CapcalcError(f"{path}: {refused}")
    return fd, opened.st_size


def read_exact(fd: int, count: int) -> bytes:
    """Up to ``count`` bytes from ``fd`` (fewer only at the end of the file)."""
    chunks, size = [], 0
    while size < count:
        chunk = os.read(fd, min(1 << 20, count - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def read_bytes(path: str | os.PathLike, kind: str) -> bytes:
    """The bytes of ``path``, a regular file (:func:`open_regular`) of at most
    :data:`MAX_BYTES` [kind] bytes."""
    path = Path(path)
    limit = MAX_BYTES[kind]
    fd, size = open_regular(path)
    try:
        if size > limit:
            raise CapcalcError(f"{path}: {size:,} bytes, above the {limit:,} a {kind} file may have")
        data = read_exact(fd, limit + 1)  # the file may have grown since fstat
    except OSError as exc:
        raise CapcalcError(f"{path}: cannot read: {_why(exc)}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise CapcalcError(f"{path}: above the {limit:,} bytes a {kind} file may have")
    return data


def decode_text(data: bytes, path: str | os.PathLike) -> str:
    """``data`` as UTF-8 text, or one line naming the file and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CapcalcError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from None


def read_text(path: str | os.PathLike, kind: str) -> str:
    """:func:`read_bytes` decoded as UTF-8."""
    return decode_text(read_bytes(path, kind), path)


def is_regular(path: str | os.PathLike) -> bool:
    """``path`` exists (through links) and is a regular file; never raises."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------- YAML

#: YAML limits: the deepest nesting, the most values after alias expansion and the most
#: alias uses a profile or calibration file may have (a profile has ~100 values; an
#: explicit 65,536-layer list ~65,600)
YAML_MAX_DEPTH = 64
YAML_MAX_VALUES = 200_000
YAML_MAX_ALIASES = 1_000


def load_yaml(path: str | os.PathLike, kind: str = "profile") -> Any:
    """Parse the YAML file ``path`` (safe loader only) within the limits above.

    Errors are :class:`ProfileError` lines naming the file, the line (and the key on it)
    and the problem; a duplicate key is an error, as is an alias bomb."""
    path = Path(path)
    return parse_yaml(read_text(path, kind), path)


def parse_yaml(text: str, path: str | os.PathLike) -> Any:
    """Parse YAML ``text`` read from ``path`` within the limits of :func:`load_yaml`."""
    import yaml

    path = Path(path)
    loader_class = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, path, text) from None
    except RecursionError:
        raise ProfileError(path, "", f"nested deeper than {YAML_MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def _yaml_error(exc, path: Path, text: str) -> ProfileError:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}" if mark else "(parse)"
    if mark is not None:  # name the key on that line too, when there is one
        lines = text.splitlines()
        line = lines[mark.line] if mark.line < len(lines) else ""
        key = re.match(r"\s*-?\s*([A-Za-z_][\w.-]{0,63})\s*:", line[:200])
        if key:
            where = f"{key.group(1)} (line {mark.line + 1})"
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    problem = problem if len(problem) <= 160 else problem[:157] + "..."
    return ProfileError(path, where, f"invalid YAML: {problem}")


def _check_nodes(root, path: Path) -> None:
    """Walk the composed node graph once (shared nodes once): depth, duplicate keys,
    recursive aliases, and the size the document would have once aliases are expanded."""
    import yaml

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    aliases = 0
    stack = [(root, 0, False)]
    while stack:
        node, depth, closing = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        pairs = node.value
        children = [n for pair in pairs for n in pair] if isinstance(node, yaml.MappingNode) else pairs
        if closing:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > YAML_MAX_VALUES:
                line = node.start_mark.line + 1
                raise ProfileError(
                    path, f"line {line}", f"expands to more than {YAML_MAX_VALUES:,} values (YAML aliases?)"
                )
            continue
        if depth > YAML_MAX_DEPTH:
            raise ProfileError(
                path, f"line {node.start_mark.line + 1}", f"nested deeper than {YAML_MAX_DEPTH} levels"
            )
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, _value in pairs:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        raise ProfileError(
                            path,
                            f"{excerpt(key_node.value, 40).strip(chr(39))} (line {key_node.start_mark.line + 1})",
                            "duplicate key (the later value would silently win)",
                        )
                    seen.add(key_node.value)
        open_nodes.add(key)
        stack.append((node, depth, True))
        for child in children:
            if id(child) in open_nodes:
                raise ProfileError(path, f"line {child.start_mark.line + 1}", "recursive YAML alias")
            if id(child) in sizes:
                aliases += 1
                if aliases > YAML_MAX_ALIASES:
                    raise ProfileError(path, "", f"more than {YAML_MAX_ALIASES:,} YAML alias uses")
            else:
                stack.append((child, depth + 1, False))


# --------------------------------------------------------------------------- JSON

#: a config.json or safetensors header nests a few levels; 64 is far beyond any
JSON_MAX_DEPTH = 64


def parse_json(text: str | bytes, path: str | os.PathLike, what: str = "JSON") -> Any:
    """Parse ``text`` (from ``path``) as JSON no deeper than :data:`JSON_MAX_DEPTH`."""
    import json

    try:
        if isinstance(text, bytes):
            text = decode_text(text, path)
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        subject = "not" if what == "JSON" else f"{what} is not"
        raise CapcalcError(f"{path}: {subject} valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise CapcalcError(f"{path}: {what} nested deeper than {JSON_MAX_DEPTH} levels") from None
    _check_depth(value, path, what)
    return value


def _check_depth(value: Any, path, what: str) -> None:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > JSON_MAX_DEPTH:
            raise CapcalcError(f"{path}: {what} nested deeper than {JSON_MAX_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))


def load_json(path: str | os.PathLike, kind: str, what: str = "JSON") -> Any:
    """:func:`read_bytes` then :func:`parse_json`."""
    return parse_json(read_bytes(path, kind), path, what)


# --------------------------------------------------------------------------- names inside folders

_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def check_revision(revision: str, where: str = "revision") -> str:
    """A Hub revision, checked like a git ref name (``git check-ref-format``): a branch,
    tag, ``refs/pr/N`` or commit. '..', '@{', a leading '/' or '-', an empty part, a part
    starting with '.' or ending with '.lock', spaces and ``~^:?*[\\`` are refused, so a
    revision can never name a path outside the repository's cache folder."""
    text = str(revision)
    parts = text.split("/")
    if (
        not text
        or len(text) > MAX_NAME
        or _REF_FORBIDDEN.search(text)
        or ".." in text
        or "@{" in text
        or text == "@"
        or text.startswith(("-", "/"))
        or text.endswith((".", "/"))
        or any(not p or p.startswith(".") or p.endswith(".lock") for p in parts)
    ):
        raise CapcalcError(
            f"{where}: {excerpt(text)} is not a valid revision (a branch, tag, refs/pr/N or commit hash)"
        )
    return text


def confined(folder: str | os.PathLike, name: Any, where: str) -> Path:
    """``folder / name`` for a file name read from a file (a shard of an index): a plain
    relative name, with no '..' part, no absolute path and no drive, that stays in ``folder``."""
    if not isinstance(name, str) or not name or _CONTROL.search(name) or len(name) > MAX_TEXT:
        raise CapcalcError(f"{where}: expected a file name, got {excerpt(name)}")
    parts = name.replace("\\", "/").split("/")
    if (
        name.startswith(("/", "\\"))
        or os.path.isabs(name)
        or ":" in parts[0]
        or any(p in ("", ".", "..") for p in parts)
        or any(len(p.encode("utf-8", "surrogateescape")) > MAX_NAME for p in parts)
    ):
        raise CapcalcError(
            f"{where}: {excerpt(name)} is not a file name inside {folder} (no '..', no absolute path)"
        )
    return Path(folder) / name


# --------------------------------------------------------------------------- benchmark result files

#: the most rows a benchmark result file may have
MAX_RECORDS = 1_000_000


def check_record(record: Any, where: str) -> dict:
    """One benchmark result row: a mapping of string keys whose numbers are finite, and
    whose sizes (a key naming ``bytes``) and times (``*_s``) are not negative."""
    if not isinstance(record, dict):
        raise CapcalcError(f"{where}: expected a record (a mapping), got {excerpt(record)}")
    for key, value in record.items():
        if not isinstance(key, str):
            raise CapcalcError(f"{where}: expected field names, got {excerpt(key)}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            minimum = 0 if ("bytes" in key or key.endswith("_s")) else None
            check_number(value, f"{where}: {excerpt(key, 48)}", minimum=minimum)
    return record


def load_records(path: str | os.PathLike) -> list[dict]:
    """The rows of a benchmark result file (``.json``: a list or one record; ``.jsonl``;
    ``.csv`` with a header, numbers parsed where they read as finite numbers), each
    through :func:`check_record`: the checker of the coming ``calibrate`` command."""
    import csv
    import io

    path = Path(path)
    text = read_text(path, "results")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = [
            parse_json(line, f"{path} line {i}")
            for i, line in enumerate(text.splitlines(), 1)
            if line.strip()
        ]
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        rows = [{k: _csv_value(v) for k, v in row.items()} for row in reader]
    else:
        data = parse_json(text, path)
        rows = data if isinstance(data, list) else [data]
    if len(rows) > MAX_RECORDS:
        raise CapcalcError(f"{path}: {len(rows):,} records, above the {MAX_RECORDS:,} allowed")
    return [check_record(row, f"{path}: record {i}") for i, row in enumerate(rows, 1)]


def _csv_value(text: Any) -> Any:
    if isinstance(text, str) and _ASCII_FLOAT.match(text.strip()):
        return float(text.replace("_", ""))
    return text
