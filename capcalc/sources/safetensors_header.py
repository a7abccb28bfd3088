"""Exact parameter counts of a checkpoint from its safetensors headers, without
loading a tensor.

A ``.safetensors`` file is::

    8 bytes    N, the header length (unsigned 64-bit little-endian)
    N bytes    JSON: {tensor name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}
    the rest   the tensors' bytes

so a tensor's element count is the product of its ``shape``, read from the
first ``8 + N`` bytes of the file; the data is never read. A sharded checkpoint
lists its files in ``model.safetensors.index.json`` (``weight_map``: tensor name
-> file); recent transformers also write ``metadata.total_parameters`` there,
which is used when the shards themselves are absent.

Assumption: an element is a parameter. That holds for 16/32-bit and fp8
checkpoints; packed quantised formats (GPTQ/AWQ ``qweight`` int32 holding eight
4-bit weights, mxfp4 ``blocks``) store several weights per element, so callers
do not use header counts for them (see :mod:`capcalc.sources.hfconfig`).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from capcalc.core.errors import CapcalcError
from capcalc.core.inputs import confined, excerpt, is_regular, load_json, open_regular, parse_json, read_exact

INDEX_NAME = "model.safetensors.index.json"
#: safetensors refuses headers above 100 MB; so do we (a corrupt length would otherwise allocate)
MAX_HEADER_BYTES = 100_000_000
#: a tensor has a few dimensions, each below 2^53 (a count a float holds exactly)
MAX_DIMS, MAX_DIM = 16, 2**53


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Checkpoint:
    """What a folder's safetensors say about its tensors.

    ``tensors`` is empty when only the index's ``total_parameters`` is known."""

    tensors: tuple[TensorInfo, ...]
    files: tuple[str, ...]
    #: 'safetensors headers' or 'safetensors index metadata'
    method: str
    index_total_parameters: int | None = None

    @property
    def total(self) -> int:
        if not self.tensors and self.index_total_parameters is not None:
            return self.index_total_parameters
        return sum(t.numel for t in self.tensors)


def read_header(path: str | Path) -> list[TensorInfo]:
    """The tensors listed in one safetensors file's header (reads 8 + N bytes only)."""
    path = Path(path)
    fd, size = open_regular(path)  # a FIFO named model.safetensors would block a plain open
    try:
        head = read_exact(fd, 8)
        if len(head) < 8:
            raise CapcalcError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise CapcalcError(
                f"{path}: not a safetensors file (header length {length} does not fit in {size} bytes)"
            )
        raw = read_exact(fd, length)
    except OSError as exc:
        raise CapcalcError(f"{path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    header = parse_json(raw, path, "safetensors header")
    if not isinstance(header, dict):
        raise CapcalcError(f"{path}: safetensors header is not a JSON object")
    tensors = []
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and 0 <= o <= size for o in offsets)
        ):
            raise CapcalcError(
                f"{path}: tensor {excerpt(name)} has no valid shape and data_offsets in the header"
            )
        end = max(end, offsets[1])
        tensors.append(TensorInfo(name, str(entry.get("dtype", "")), tuple(shape)))
    if 8 + length + end > size:
        raise CapcalcError(
            f"{path}: truncated: the header promises {end} data bytes, the file is {size} bytes"
        )
    return tensors


def read_checkpoint(folder: str | Path) -> Checkpoint | None:
    """Tensor shapes of the safetensors checkpoint in ``folder``, or None when it has none.

    With an index, every shard it names must be present to count from headers;
    otherwise the index's ``metadata.total_parameters`` is used if it has one,
    else None (the caller computes the count from the architecture)."""
    folder = Path(folder)
    index_path = folder / INDEX_NAME
    if index_path.exists() or index_path.is_symlink():
        index = load_json(index_path, "index", "safetensors index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise CapcalcError(f"{index_path}: no 'weight_map' mapping tensor names to files")
        shards = sorted(set(weight_map.values()), key=str)
        for shard in shards:  # a shard is a file of this folder: never '../..', never '/etc/...'
            confined(folder, shard, f"{index_path}: weight_map")
        if shards and all(is_regular(folder / shard) for shard in shards):
            tensors = [t for shard in shards for t in read_header(folder / shard)]
            return Checkpoint(tuple(tensors), tuple(shards), "safetensors headers")
        metadata = index.get("metadata") or {}
        total = metadata.get("total_parameters") if isinstance(metadata, dict) else None
        if isinstance(total, int) and not isinstance(total, bool) and 0 < total <= MAX_DIM:
            return Checkpoint((), (INDEX_NAME,), "safetensors index metadata", index_total_parameters=total)
        return None
    files = sorted(p.name for p in folder.glob("*.safetensors"))
    # Mistral repos ship the same weights twice (model*.safetensors and consolidated.safetensors)
    files = [f for f in files if f.startswith("model")] or files
    if not files:
        return None
    tensors = [t for name in files for t in read_header(folder / name)]
    return Checkpoint(tuple(tensors), tuple(files), "safetensors headers")
