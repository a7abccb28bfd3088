"""Tensor- and pipeline-parallel layouts: which degrees are valid, and how heads split.

vLLM requires the tensor-parallel degree to divide the attention heads, and
either to divide the KV heads or be a multiple of them (then each KV head is
replicated on tp / kv_heads GPUs); an MLA latent is replicated on every rank; a
recurrent layer needs tp to divide its heads (each layer kind's spec,
:mod:`capcalc.model.layers`, says which degrees it takes).
"""

from __future__ import annotations

from capcalc.core.errors import CapcalcError
from capcalc.model.layers import attention_spec, spec_counts
from capcalc.schema.profiles import ModelProfile

#: the largest tensor-parallel degree considered (``valid_tp_degrees``, ``fit --tp auto``)
MAX_TP = 64


def tp_is_valid(model: ModelProfile, tp: int) -> bool:
    if tp < 1 or model.num_attention_heads % tp:
        return False
    return attention_spec(model).tp_valid(tp) and all(spec.tp_valid(tp) for spec, _ in spec_counts(model))


def valid_tp_degrees(model: ModelProfile, limit: int = MAX_TP) -> list[int]:
    return [tp for tp in range(1, limit + 1) if tp_is_valid(model, tp)]


def check_tp(model: ModelProfile, tp: int) -> int:
    """Return ``tp`` or raise a usage error listing the valid degrees."""
    if tp_is_valid(model, tp):
        return tp
    degrees = ", ".join(str(d) for d in valid_tp_degrees(model))
    # a template without fields: the message reads the same on the command line
    raise CapcalcError(
        parameter="tp",
        template=f"tp={tp} is not valid for {model.name} ({model.num_attention_heads} attention heads, "
        f"{model.num_kv_heads} KV heads): valid tp degrees are {degrees}",
    )


def kv_heads_per_gpu(model: ModelProfile, tp: int) -> int:
    """KV heads each GPU holds: kv_heads / tp, or 1 (replicated) once tp exceeds them
    (MLA: 1, the latent)."""
    return attention_spec(model).kv_heads_per_gpu(tp)


def kv_replication_factor(model: ModelProfile, tp: int) -> float:
    """How many copies of each KV head exist across the tp GPUs (1 = no replication)."""
    return attention_spec(model).replication(tp)


def pp_layer_ranges(num_layers: int, pp: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` layer range of each pipeline stage, split as vLLM's
    ``get_pp_indices`` (vllm/distributed/utils.py) splits them: ``num_layers // pp``
    layers each, and the remainder one extra layer apiece on the stages just
    before the last (27 layers on pp=2 -> 14 + 13; a DeepSeek-V2-Lite tp=2 pp=2 log
    in vLLM PR 20665 shows the 14-layer first stage bounding the KV blocks)."""
    if pp < 1:
        raise CapcalcError(f"pp must be at least 1, got {pp}", parameter="pp")
    if pp > num_layers:
        raise CapcalcError(f"pp {pp} exceeds the model's {num_layers} layers", parameter="pp")
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    ranges, start = [], 0
    for n in parts:
        ranges.append((start, start + n))
        start += n
    return ranges
