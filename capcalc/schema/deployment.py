"""How a model is deployed: the dtypes it is stored and run in and how it is split.

One value travels from the front end (CLI flags, :class:`capcalc.api.Session`
keywords) to every calculation that depends on it: the weights one GPU holds
(:func:`capcalc.model.weights.gpu_weights`), a step's FLOPs and bytes
(:func:`capcalc.model.flops.step_cost`), its time (:mod:`capcalc.perf.latency`),
vLLM's memory fit (:func:`capcalc.serving.fit.fit`) and the plan's candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from capcalc.core.dtypes import COMPUTE_DTYPES, KV_DTYPES, WEIGHT_DTYPES, canonical_dtype
from capcalc.core.errors import CapcalcError


@dataclass(frozen=True)
class Deployment:
    """The dtypes and parallel layout of one deployment; checked when made.

    Dtype names are normalised (``bfloat16`` -> ``bf16``); ``auto`` is resolved
    against a model where it is used, since it depends on the checkpoint."""

    #: weight storage dtype; ``auto``: the checkpoint's (fp32 checkpoints served in fp16)
    weight_dtype: str = "auto"
    #: KV cache dtype; ``auto``: the serving activation dtype
    kv_dtype: str = "auto"
    #: the dtype whose peak FLOP/s bounds the matrix products; ``auto``: from the weights
    compute_dtype: str = "auto"
    #: tensor-parallel GPUs: heads, weights and FLOPs split across them
    tp: int = 1
    #: pipeline-parallel stages: layers split across them (memory fit only)
    pp: int = 1
    #: weights per 16-bit scale of int4/int8 quantisation (ignored by other dtypes)
    group_size: int = 128
    #: quantise the embedding table and LM head too (else they stay 16-bit)
    quantize_embeddings: bool = False
    #: dtype of the recurrent (SSM / linear-attention) state of hybrid models, vLLM's
    #: ``--mamba-ssm-cache-dtype``; ``auto``: the checkpoint's ``mamba_ssm_dtype``, else
    #: the conv state's (the serving dtype)
    mamba_ssm_cache_dtype: str = "auto"

    def __post_init__(self) -> None:
        for name, allowed, what in (
            ("weight_dtype", WEIGHT_DTYPES, "weight dtype"),
            ("kv_dtype", KV_DTYPES, "KV dtype"),
            ("compute_dtype", COMPUTE_DTYPES, "compute dtype"),
            ("mamba_ssm_cache_dtype", KV_DTYPES, "mamba SSM cache dtype"),
        ):
            value = getattr(self, name)
            if value not in allowed:
                object.__setattr__(self, name, canonical_dtype(value, allowed, what, name))
        for name in ("tp", "pp", "group_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise CapcalcError(f"{name} must be a whole number, got {value!r}", parameter=name)
            if value < 1:
                raise CapcalcError(f"{name} must be at least 1, got {value}", parameter=name)
        if not isinstance(self.quantize_embeddings, bool):
            raise CapcalcError(
                f"quantize_embeddings must be true or false, got {self.quantize_embeddings!r}",
                parameter="quantize_embeddings",
            )

    @classmethod
    def of(cls, deployment: Deployment | None = None, **changes) -> Deployment:
        """``deployment`` (default: every field at its default) with ``changes`` applied:
        what every function taking a deployment accepts, so that ``decode_cost(m, 1,
        1024, tp=2)`` and ``decode_cost(m, 1, 1024, Deployment(tp=2))`` are one call."""
        unknown = set(changes) - FIELDS
        if unknown:
            raise TypeError(f"unknown deployment field(s): {', '.join(sorted(unknown))}")
        if deployment is None:
            return cls(**changes)
        if not isinstance(deployment, Deployment):
            raise TypeError(f"expected a Deployment, got {deployment!r}")
        return replace(deployment, **changes) if changes else deployment

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: the field names, which functions taking a deployment also accept as keywords
FIELDS = frozenset(f.name for f in fields(Deployment))
