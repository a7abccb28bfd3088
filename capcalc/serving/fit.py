"""Serving capacity as vLLM computes it: does the model fit, how many sequences at once,
and the numbers vLLM prints when it does not.

Everything here is per GPU and follows vLLM's V1 engine as read from its source at
commit 001cabc (2026; ``vllm/v1/core/kv_cache_utils.py``,
``vllm/v1/kv_cache_interface.py``) and ``vllm/v1/worker/gpu_worker.py``
``determine_available_memory``.

Memory budget (one GPU of pipeline stage s)::

    usable      = memory x gpu_memory_utilization          (of the total, not of the free memory)
    kv_budget_s = usable - weights_s - activation - overhead - cudagraph

``memory`` is what the driver reports when the GPU profile records it
(``memory_reported``: vLLM budgets from ``torch.cuda.mem_get_info()``'s total),
else the datasheet size. ``--kv-cache-memory`` replaces ``kv_budget`` outright, as
vLLM's ``kv_cache_memory_bytes`` does. CUDA-graph memory is 0 by default: vLLM up to
at least 0.11 captures graphs after the KV cache is sized, outside the budget; newer
versions that profile graph memory first can be matched with ``cudagraph_bytes``.

Activation peak (vLLM profiles one dummy forward of ``max_num_batched_tokens``
tokens, then one sampler pass over ``min(max_num_seqs, max_num_batched_tokens)``
sequences; the forward's intermediates are freed before sampling, so the peak is
the larger of the two)::

    forward    = T x act_bytes x (2 x hidden + max(attention_width, mlp_width))
    sampler    = min(S, T) x vocab x SAMPLER_BYTES_PER_LOGIT
    activation = max(forward, sampler)

with T = ``max_num_batched_tokens``, S = ``max_num_seqs``, attention_width the q,
k, v and attention-output columns one GPU holds for a token, and mlp_width the
gate/up output plus the activated product (dense: ``3 x intermediate / tp``
gated, ``2 x`` plain; MoE: the same for each of the ``experts_per_token``
experts, plus their ``hidden``-wide outputs, plus the shared experts). The
logits are gathered on every tensor-parallel rank, so ``sampler`` does not shrink
with tp. ``SAMPLER_BYTES_PER_LOGIT`` is fitted to vLLM 0.11's own profile of
four models on an H100 with 1024 sequences (see the constant).

Non-torch overhead (CUDA context, NCCL buffers) defaults to the same
measurements: 0.13 GiB alone, 0.55 GiB with tensor parallelism.

KV cache (``get_kv_cache_groups`` and ``get_kv_cache_config_from_groups``): every
attention layer's page is ``block_size x 2 x kv_heads_per_gpu x head_dim x
dtype_bytes`` (MLA: ``block_size x (kv_lora_rank + qk_rope_head_dim) x
dtype_bytes``, the same latent on every tp rank). A model with one kind of layer
is one group holding every layer. A model mixing sliding-window and full layers
is split by the hybrid KV cache manager into groups of equal size ``g`` (the
smaller kind's layer count, or the larger's when it is under 1.5 times the
smaller), padding the last group of a kind; each group keeps its own block table
and the groups share one pool of blocks::

    num_blocks      = kv_budget // page // g
    kv_cache_tokens = num_blocks // num_groups x block_size      ("GPU KV cache size")

One request at ``max_model_len`` needs, per group, ``cdiv(max_model_len,
block_size)`` blocks (full attention) or ``cdiv(min(window - 1 +
max_num_batched_tokens, max_model_len), block_size) + 1`` (sliding window:
``SlidingWindowSpec.max_memory_usage_bytes``). So a window saves memory only when
``window - 1 + max_num_batched_tokens < max_model_len``::

    blocks_per_request = sum over groups of the blocks above
    max_concurrency    = num_blocks / blocks_per_request     ("Maximum concurrency ...: %.2fx")
    kv_needed          = g x page x blocks_per_request

When ``kv_needed > kv_budget`` vLLM refuses to start with "To serve at least one
request with the models's max seq len (L), (N GiB KV cache is needed, which is
larger than the available KV cache memory (A GiB). Based on the available memory,
the estimated maximum model length is M." -- M is the largest length whose
``kv_needed`` fits, found by the same binary search. With pipeline parallelism
each stage sizes its own budget and groups (projected onto its layers) and every
stage then uses the smallest ``num_blocks``.

Hybrid models with recurrent layers (Mamba2, Gated DeltaNet; vLLM's ``MambaSpec``): each
sequence holds one fixed state page per recurrent layer (``state_bytes`` of the layer's
spec, conv state in the serving dtype, recurrent state in ``mamba_ssm_cache_dtype``).
All groups share one pool of equal pages, so vLLM raises the attention block size until
one attention page covers a state page, then pads the state page to it
(``_align_hybrid_block_size``, vllm/platforms/interface.py; earlier
``HybridAttentionMambaModelConfig.verify_and_update_config``)::

    block_size = max(block_size, 16 x cdiv(state_page, 16 x attention_bytes_per_token))
    page       = block_size x attention_bytes_per_token      (the state page padded to it)

("Setting attention block size to N tokens to ensure that attention page size is >=
mamba page size"; "Padding mamba page size by P%"). A recurrent group needs one block
per running request; and since vLLM PR 38270 (2026) the engine refuses to start when
``max_num_seqs`` exceeds the pool's blocks ("max_num_seqs (S) exceeds available Mamba
cache blocks (B)"), where earlier versions capped the CUDA-graph sizes silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from capcalc.core.dtypes import DTYPE_BYTES, resolve_kv_dtype, serving_dtype
from capcalc.core.errors import CapcalcError, Note
from capcalc.core.records import flat_record
from capcalc.core.search import largest_true
from capcalc.model.draft import Draft
from capcalc.model.kv import kv_bytes_per_token_per_layer, state_dtypes
from capcalc.model.layers import (
    CrossAttentionSpec,
    LayerSpec,
    ParallelHybridSpec,
    StateSpec,
    attention_spec,
    cdiv,
    layer_specs,
    parallel_layers,
    state_spec,
)
from capcalc.model.parallel import MAX_TP, check_tp, kv_heads_per_gpu, kv_replication_factor, valid_tp_degrees
from capcalc.model.weights import resolve_weight_dtype, weight_bytes_per_gpu
from capcalc.schema.deployment import FIELDS as DEPLOYMENT_FIELDS
from capcalc.schema.deployment import Deployment
from capcalc.schema.profiles import HardwareProfile, ModelProfile

GIB = 2**30

#: Bytes of sampler working memory per logit (one sequence x one vocabulary entry).
#: vLLM 0.11 on an H100 (79.18 GiB), max_num_seqs 1024, logged "torch peak memory
#: increase" of 4.76 GiB (Llama-3.1-8B, vocab 128256), 5.56 GiB (Qwen3-0.6B, vocab
#: 151936), 5.64 GiB (Qwen3-32B, 151936) and 7.38 GiB (gpt-oss-20b, 201088): 38.9,
#: 38.4, 38.9 and 38.5 bytes per logit. The forward pass of those runs is smaller.
#: Source: the "vLLM Empirical Memory Profiling Results" table of the llm-d
#: capacity planner (measured with vllm/vllm-openai:v0.11.0).
SAMPLER_BYTES_PER_LOGIT = 38.5

#: Memory outside torch's allocator during the profile run (CUDA context, NCCL):
#: 0.13 GiB at tp=1 and 0.54-0.55 GiB at tp=2 in the same vLLM 0.11 measurements.
OVERHEAD_BYTES_SINGLE = 0.13 * GIB
OVERHEAD_BYTES_TP = 0.55 * GIB

DEFAULT_UTILIZATION = 0.9
DEFAULT_BLOCK_SIZE = 16


def default_batch_limits(memory_bytes: float, gpu_name: str = "") -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) that ``vllm serve`` picks when not told:
    1024 and 8192 on a GPU of at least 70 GiB that is not an A100, else 256 and 2048
    (``EngineArgs.get_batch_defaults``, vllm/engine/arg_utils.py)."""
    if memory_bytes >= 70 * GIB and "a100" not in gpu_name.lower():
        return 1024, 8192
    return 256, 2048


#: attention kernels take block sizes in multiples of 16: the hybrid block size is
#: rounded up to one (vLLM ``kernel_block_alignment_size``, FlashAttention)
HYBRID_BLOCK_ALIGNMENT = 16


# --------------------------------------------------------------------------- KV groups


@dataclass(frozen=True)
class KVGroup:
    """One KV cache group: layers of one kind (one spec) sharing one block table."""

    kind: str  # 'full' | 'sliding' | 'mamba' | 'linear'
    layers: tuple[int, ...]
    spec: LayerSpec | None = None


def kv_cache_groups(
    model: ModelProfile, hybrid: bool = True, draft: tuple[LayerSpec, ...] = ()
) -> list[KVGroup]:
    """vLLM's grouping of the layers (``_get_kv_cache_groups_uniform_page_size``).

    One kind of layer (or ``hybrid=False``, vLLM's ``--disable-hybrid-kv-cache-manager``,
    which treats sliding layers as full): one group of every layer. Otherwise the
    kinds in order of first appearance, each cut into ``cdiv(n, g)`` groups of
    ``layers[i::num_groups]``. Recurrent layers need the hybrid manager. A speculative
    draft's KV layers (``draft``, numbered after the target's) are grouped with the
    target's layers of their kind (:mod:`capcalc.model.draft`).

    A parallel hybrid layer (Falcon-H1) is two cache layers in vLLM: its attention
    (``model.layers.i.self_attn.attn``) and its Mamba2 mixer (registered under layer index
    ``num_hidden_layers + i``: "In V1 all attention/ssm layers must have different index in
    prefix", ``FalconH1ParallelHybrid``, vllm/model_executor/models/falcon_h1.py of the V1
    engine; the model came in with vLLM PR 18406, and its model card asks for vllm >= 0.9.0). So it is
    listed in a 'full' group and in a 'mamba' group, under its own index i both times (the
    index places it in its pipeline stage)."""
    full = attention_spec(model)
    kinds: dict[str, list[int]] = {}
    specs: dict[str, LayerSpec] = {}
    for i, layer in enumerate((*layer_specs(model), *draft)):
        # a parallel hybrid layer is two cache layers: its attention and its Mamba2 state
        parts = (layer.attention_part(), layer.mamba) if isinstance(layer, ParallelHybridSpec) else (layer,)
        for spec in parts:
            if not spec.caches and not isinstance(spec, (StateSpec, CrossAttentionSpec)):
                continue  # a layer with no mixer, or one sharing another's KV, caches nothing
            if not hybrid and spec.caches:
                spec = full
            kinds.setdefault(spec.kind, []).append(i)
            specs[spec.kind] = spec
    if not hybrid and any(not spec.attends for spec in specs.values()):
        raise CapcalcError(
            f"{model.name} has recurrent (Mamba / linear-attention) layers, which need vLLM's hybrid KV "
            "cache manager: hybrid=False cannot hold them",
            parameter="hybrid",
        )
    if len(kinds) == 1:
        ((kind, layers),) = kinds.items()
        return [KVGroup(kind, tuple(layers), specs[kind])]
    smallest = min(len(v) for v in kinds.values())
    largest = max(len(v) for v in kinds.values())
    size = largest if largest < smallest * 1.5 else smallest
    groups = []
    for kind, layers in kinds.items():
        n = cdiv(len(layers), size)
        groups.extend(KVGroup(kind, tuple(layers[i::n]), specs[kind]) for i in range(n))
    return groups


def request_blocks(
    model: ModelProfile,
    groups: list[KVGroup],
    max_model_len: int,
    block_size: int,
    max_num_batched_tokens: int,
    encoder_tokens: int | None = None,
    spec_tokens: int = 0,
) -> int:
    """Blocks one request at ``max_model_len`` holds, summed over the groups (each group's
    spec says how many: :meth:`capcalc.model.layers.LayerSpec.blocks_per_request`); a
    cross-attention group's are those of ``encoder_tokens`` (vLLM's
    ``max_num_encoder_input_tokens``; None: ``max_num_batched_tokens``, its default). With
    ``spec_tokens`` = K speculative tokens a recurrent group keeps 1 + K state blocks per
    request (vLLM ``MambaSpec.max_memory_usage_bytes``: ``page x (1 + num_speculative_blocks)``,
    ``num_speculative_blocks = num_speculative_tokens``, vllm/model_executor/layers/mamba/abstract.py)."""
    full = attention_spec(model)
    total = 0
    for g in groups:
        spec = g.spec or full
        tokens = max_num_batched_tokens
        if isinstance(spec, CrossAttentionSpec) and encoder_tokens is not None:
            tokens = encoder_tokens
        total += spec.blocks_per_request(max_model_len, block_size, tokens)
        if isinstance(spec, StateSpec):
            total += spec_tokens
    return total


@dataclass(frozen=True)
class HybridPages:
    """The page layout of a model with recurrent layers (module docstring)."""

    block_size: int  # the attention block size, raised to cover a state page
    state_page_bytes: float  # one recurrent layer's state for one sequence, unpadded
    padding_pct: float  # how much the state page is padded to the attention page
    raised: bool  # whether the block size was raised


def hybrid_pages(
    model: ModelProfile, kv_dtype: str, tp: int, block_size: int, state_dtype: str = "auto"
) -> HybridPages | None:
    """vLLM's alignment of the attention and state pages (None without recurrent layers):
    ``block = max(block_size, 16 x cdiv(state_page, 16 x attention bytes per token))``."""
    spec = state_spec(model)
    if spec is None:
        return None
    conv, ssm = (DTYPE_BYTES[d] for d in state_dtypes(model, state_dtype))
    state = spec.state_bytes(tp, conv, ssm)
    per_token = kv_bytes_per_token_per_layer(model, kv_dtype, tp)
    align = HYBRID_BLOCK_ALIGNMENT
    needed = align * cdiv(int(state), int(align * per_token)) if per_token >= 1 else block_size
    raised = block_size < needed
    bs = max(block_size, needed)
    return HybridPages(bs, state, 100.0 * (bs * per_token - state) / state, raised)


# --------------------------------------------------------------------------- activation


def activation_bytes(model: ModelProfile, tp: int, max_num_batched_tokens: int, max_num_seqs: int) -> float:
    """Peak activation memory of vLLM's profile run on one GPU (module docstring)."""
    act = DTYPE_BYTES[serving_dtype(model.native_dtype)]
    h = model.hidden_size
    # the widest mixer: attention's q, k, v and output columns, or a recurrent layer's
    attention = attention_spec(model).activation_width(tp)
    recurrent = state_spec(model)
    if recurrent is not None and parallel_layers(model):  # both mixers of one layer at once (Falcon-H1)
        attention = attention + recurrent.activation_width(tp)
    elif recurrent is not None:
        attention = max(attention, recurrent.activation_width(tp))
    per_width = 3 if model.mlp == "gated" else 2
    mlp = per_width * model.intermediate_size / tp
    if model.moe is not None:
        e = model.moe
        moe = e.experts_per_token * (per_width * e.expert_intermediate_size / tp + h)
        moe += e.num_shared_experts * per_width * e.shared_expert_intermediate_size / tp
        mlp = max(mlp, moe) if model.num_dense_layers else moe
    forward = max_num_batched_tokens * act * (2 * h + max(attention, mlp))
    sampler = min(max_num_seqs, max_num_batched_tokens) * model.vocab_size * SAMPLER_BYTES_PER_LOGIT
    return max(forward, sampler)


def overhead_bytes(tp: int) -> float:
    return OVERHEAD_BYTES_TP if tp > 1 else OVERHEAD_BYTES_SINGLE


# --------------------------------------------------------------------------- the fit


@dataclass(frozen=True)
class FitRequest:
    """Everything `fit` needs besides the model; ``None`` means vLLM's default."""

    memory_bytes: float
    memory_source: str  # 'reported' | 'datasheet' | 'flag'
    gpu: str = ""
    deployment: Deployment = field(default_factory=Deployment)
    gpu_memory_utilization: float = DEFAULT_UTILIZATION
    max_model_len: int | None = None
    block_size: int = DEFAULT_BLOCK_SIZE
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    activation_bytes: float | None = None
    overhead_bytes: float | None = None
    cudagraph_bytes: float = 0.0
    kv_cache_memory: float | None = None
    hybrid: bool = True
    n_gpus: int | None = None
    #: the speculative draft (:func:`capcalc.model.draft.make_draft`): its weights and KV layers
    draft: Draft | None = None
    #: speculative tokens per step (vLLM's num_speculative_tokens): a recurrent layer keeps
    #: 1 + spec_tokens state blocks per request
    spec_tokens: int = 0
    #: image (encoder) tokens a request's cross-attention layers reserve, vLLM's
    #: ``max_num_encoder_input_tokens``; None: ``max_num_batched_tokens`` (vLLM's default)
    image_tokens: int | None = None

    @property
    def tp(self) -> int:
        return self.deployment.tp

    @property
    def pp(self) -> int:
        return self.deployment.pp

    def changed(self, **changes) -> FitRequest:
        """This request with ``changes``, deployment fields (``tp``, ``kv_dtype``...) included."""
        moved = {k: changes.pop(k) for k in list(changes) if k in DEPLOYMENT_FIELDS}
        if moved:
            changes["deployment"] = replace(self.deployment, **moved)
        return replace(self, **changes)


@dataclass(frozen=True)
class FitResult:
    model: str
    gpu: str
    memory_bytes: float
    memory_source: str
    tp: int
    pp: int
    n_gpus: int | None
    replicas: int | None
    weight_dtype: str
    kv_dtype: str
    gpu_memory_utilization: float
    max_model_len: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    hybrid_kv_cache_manager: bool
    usable_bytes_per_gpu: float
    weights_bytes_per_gpu: float
    activation_bytes_per_gpu: float
    overhead_bytes_per_gpu: float
    cudagraph_bytes_per_gpu: float
    kv_cache_bytes_per_gpu: float  # never negative: a budget below zero is the shortfall below
    kv_cache_shortfall_bytes_per_gpu: float  # how far the rest leaves the KV cache below zero
    kv_cache_memory_source: str  # 'budget' | 'flag'
    kv_bytes_per_token_per_gpu: float
    kv_heads_per_gpu: int
    kv_replicated: bool
    kv_cache_groups: int
    layers_per_group: int
    page_bytes: float  # one block of one layer
    num_blocks: int
    kv_cache_tokens: int
    blocks_per_request: int
    kv_needed_bytes: float  # one request at max_model_len, on the bounding GPU
    max_concurrency: float
    total_max_concurrency: float | None
    fits: bool
    weights_fit: bool
    weights_shortfall_bytes: float
    max_model_len_that_fits: int
    binding_stage: int
    state_layers: int = 0  # recurrent layers (Mamba2, Gated DeltaNet)
    state_page_bytes: float = 0.0  # one recurrent layer's state of one sequence, before padding
    state_page_padding_pct: float = 0.0  # padding of the state page to the attention page
    block_size_raised: bool = False  # vLLM raised the attention block size to cover a state page
    mamba_ssm_cache_dtype: str | None = None
    max_num_seqs_over_state_blocks: bool = False  # vLLM refuses: more sequences than blocks
    draft_model: str | None = None  # the speculative draft (None: no speculation)
    draft_method: str | None = None  # 'draft_model' | 'mtp'
    draft_weights_bytes_per_gpu: float = 0.0  # in weights_bytes_per_gpu (0: the target's profile holds them)
    draft_kv_layers: int = 0  # the draft's attention layers, in the KV groups
    spec_tokens: int = 0  # speculative tokens per step (recurrent layers: 1 + spec_tokens state blocks)
    cross_attention_layers: int = 0  # layers whose KV holds a request's image tokens (mllama)
    image_tokens: int | None = None  # the image tokens each request reserves in them (None: no such layers)
    #: changes that would make it fit, each checked by fitting again: (parameter, value)
    #: pairs of :class:`FitRequest` or its deployment, e.g. ``("max_model_len", 43696)``
    suggestions: tuple[tuple[str, Any], ...] = ()

    def record(self) -> dict:
        """The flat output record (``schema_version`` first), as the CLI's JSON prints it."""
        return flat_record(self)

    def vllm_error(self) -> str | None:
        """The message vLLM would stop with, or None when it starts."""
        if self.kv_cache_bytes_per_gpu <= 0:
            return "No available memory for the cache blocks. Try increasing `gpu_memory_utilization`."
        if self.max_num_seqs_over_state_blocks and self.kv_needed_bytes <= self.kv_cache_bytes_per_gpu:
            return (
                f"max_num_seqs ({self.max_num_seqs}) exceeds available Mamba cache blocks ({self.num_blocks}). "
                "Each decode sequence requires one Mamba cache block, so CUDA graph capture cannot proceed. "
                f"Please lower max_num_seqs to at most {self.num_blocks} or increase gpu_memory_utilization."
            )
        if self.kv_needed_bytes <= self.kv_cache_bytes_per_gpu:
            return None
        estimate = (
            f"Based on the available memory, the estimated maximum model length is "
            f"{self.max_model_len_that_fits}. "
            if self.max_model_len_that_fits > 0
            else ""
        )
        return (
            f"To serve at least one request with the models's max seq len ({self.max_model_len}), "
            f"({self.kv_needed_bytes / GIB:.2f} GiB KV cache is needed, which is larger than the available "
            f"KV cache memory ({self.kv_cache_bytes_per_gpu / GIB:.2f} GiB). {estimate}"
        ).rstrip()


def memory_of(gpu: HardwareProfile) -> tuple[float, str]:
    """The memory vLLM budgets from: the driver-reported total when the profile has it."""
    if gpu.memory_reported_bytes:
        return gpu.memory_reported_bytes, "reported"
    return gpu.memory_bytes, "datasheet"


def check_request(req: FitRequest, model: ModelProfile) -> None:
    """Raise a usage error for a setting no GPU or tp could make valid: the ranges of
    the request's fields and the dtypes. The tensor-parallel degree is checked by
    :func:`fit` (``plan`` rejects an invalid tp per candidate)."""
    if not req.memory_bytes > 0:
        raise CapcalcError(
            f"memory_bytes must be positive, got {req.memory_bytes:g} bytes", parameter="memory_bytes"
        )
    if not 0 < req.gpu_memory_utilization <= 1:
        raise CapcalcError(
            f"gpu_memory_utilization must be in (0, 1], got {req.gpu_memory_utilization:g}",
            parameter="gpu_memory_utilization",
        )
    if req.max_model_len is not None:
        if req.max_model_len < 1:
            raise CapcalcError(
                f"max_model_len must be at least 1, got {req.max_model_len}", parameter="max_model_len"
            )
        if req.max_model_len > model.max_context:
            raise CapcalcError(
                f"max_model_len {req.max_model_len} exceeds {model.name}'s maximum context of "
                f"{model.max_context} tokens",
                parameter="max_model_len",
            )
    for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "n_gpus", "image_tokens"):
        value = getattr(req, name)
        if value is not None and value < 1:
            raise CapcalcError(f"{name} must be at least 1, got {value}", parameter=name)
    if isinstance(req.spec_tokens, bool) or not isinstance(req.spec_tokens, int) or req.spec_tokens < 0:
        raise CapcalcError(
            f"spec_tokens must be a whole number of at least 0, got {req.spec_tokens!r}",
            parameter="spec_tokens",
        )
    for name in ("activation_bytes", "overhead_bytes", "cudagraph_bytes"):
        value = getattr(req, name)
        if value is not None and value < 0:
            raise CapcalcError(f"{name} must not be negative, got {value:g}", parameter=name)
    if req.kv_cache_memory is not None and not req.kv_cache_memory > 0:
        raise CapcalcError(
            f"kv_cache_memory must be positive, got {req.kv_cache_memory:g}", parameter="kv_cache_memory"
        )
    resolve_kv_dtype(req.deployment.kv_dtype, model.native_dtype)
    resolve_weight_dtype(req.deployment.weight_dtype, model)


def _check(req: FitRequest, model: ModelProfile) -> None:
    check_request(req, model)
    check_tp(model, req.tp)
    if req.n_gpus is not None and req.tp * req.pp > req.n_gpus:
        raise CapcalcError(
            f"tp={req.tp} x pp={req.pp} needs {req.tp * req.pp} GPUs, more than n_gpus {req.n_gpus}",
            parameter="n_gpus",
        )


def fit(model: ModelProfile, req: FitRequest, suggest: bool = True) -> FitResult:
    """Size vLLM's KV cache for ``model`` on one GPU under ``req`` and give the verdict."""
    _check(req, model)
    max_model_len = req.max_model_len or model.max_context
    default_seqs, default_tokens = default_batch_limits(req.memory_bytes, req.gpu)
    max_num_batched_tokens = req.max_num_batched_tokens or default_tokens
    max_num_seqs = req.max_num_seqs or min(default_seqs, max_num_batched_tokens)
    kv_dtype = resolve_kv_dtype(req.deployment.kv_dtype, model.native_dtype)
    weight_dtype = resolve_weight_dtype(req.deployment.weight_dtype, model)
    bs = req.block_size

    stages = weight_bytes_per_gpu(model, req.deployment)
    usable = req.memory_bytes * req.gpu_memory_utilization
    activation = (
        req.activation_bytes
        if req.activation_bytes is not None
        else activation_bytes(model, req.tp, max_num_batched_tokens, max_num_seqs)
    )
    overhead = req.overhead_bytes if req.overhead_bytes is not None else overhead_bytes(req.tp)
    draft = req.draft
    draft_kv = draft.kv_layers() if draft is not None else ()
    _check_draft_page(model, draft, draft_kv, kv_dtype, req.tp)
    groups = kv_cache_groups(model, req.hybrid, draft_kv)
    # the drafter runs on the last pipeline stage, with the LM head
    draft_bytes = draft.weight_bytes_per_gpu(model, req.deployment) if draft is not None else 0.0
    stage_bytes = {st.stage: st.bytes + (draft_bytes if st.holds_lm_head else 0.0) for st in stages}

    def stage_end(st) -> int:
        return st.end_layer + (len(draft_kv) if st.holds_lm_head else 0)

    state_dtype = req.deployment.mamba_ssm_cache_dtype
    pages = hybrid_pages(model, kv_dtype, req.tp, bs, state_dtype)
    if pages is not None:
        bs = pages.block_size
    page = bs * kv_bytes_per_token_per_layer(model, kv_dtype, req.tp)
    specs = layer_specs(model)
    cross = sum(1 for spec in specs if isinstance(spec, CrossAttentionSpec))

    def blocks_for(length: int) -> int:
        return request_blocks(
            model, groups, length, bs, max_num_batched_tokens, req.image_tokens, req.spec_tokens
        )

    per_stage = []  # (stage, budget, g_stage, num_blocks)
    for st in stages:
        g_stage = max(sum(1 for i in g.layers if st.first_layer <= i < stage_end(st)) for g in groups)
        budget = (
            req.kv_cache_memory
            if req.kv_cache_memory is not None
            else usable - stage_bytes[st.stage] - activation - overhead - req.cudagraph_bytes
        )
        num_blocks = max(0, int(budget // page // g_stage))
        per_stage.append((st, budget, g_stage, num_blocks))
    num_blocks = min(n for *_, n in per_stage)
    # the stage that bounds: fewest blocks, and among those the smallest budget
    st, budget, g_stage, _ = min(per_stage, key=lambda s: (s[3], s[1]))
    per_request = blocks_for(max_model_len)

    def fits_len(length: int) -> bool:
        return all(b > 0 and g * page * blocks_for(length) <= b for _, b, g, _ in per_stage)

    # vLLM's estimate_max_model_len: a binary search for the longest length that fits
    if fits_len(max_model_len):
        longest = largest_true(fits_len, max_model_len + 1, model.max_context)
    else:
        longest = largest_true(fits_len, 1, max_model_len)
    if req.kv_cache_memory is None:
        weights_fit = all(b > 0 for _, b, _, _ in per_stage)
        shortfall = max(0.0, max(-b for _, b, _, _ in per_stage))
    else:  # the flag bypasses the budget; the card must still hold it all
        peak = max(stage_bytes.values()) + activation + overhead + req.cudagraph_bytes + req.kv_cache_memory
        weights_fit = peak <= req.memory_bytes
        shortfall = max(0.0, peak - req.memory_bytes)
    # one state block per running sequence: vLLM refuses more sequences than blocks
    over_state = pages is not None and max_num_seqs > num_blocks
    fits = weights_fit and fits_len(max_model_len) and not over_state
    concurrency = num_blocks / per_request
    replicas = req.n_gpus // (req.tp * req.pp) if req.n_gpus else None
    result = FitResult(
        model=model.name,
        gpu=req.gpu,
        memory_bytes=req.memory_bytes,
        memory_source=req.memory_source,
        tp=req.tp,
        pp=req.pp,
        n_gpus=req.n_gpus,
        replicas=replicas,
        weight_dtype=weight_dtype,
        kv_dtype=kv_dtype,
        gpu_memory_utilization=req.gpu_memory_utilization,
        max_model_len=max_model_len,
        block_size=bs,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        hybrid_kv_cache_manager=req.hybrid,
        usable_bytes_per_gpu=usable,
        weights_bytes_per_gpu=stage_bytes[st.stage],
        activation_bytes_per_gpu=activation,
        overhead_bytes_per_gpu=overhead,
        cudagraph_bytes_per_gpu=req.cudagraph_bytes,
        kv_cache_bytes_per_gpu=max(budget, 0.0),
        kv_cache_shortfall_bytes_per_gpu=max(-budget, 0.0),
        kv_cache_memory_source="flag" if req.kv_cache_memory is not None else "budget",
        kv_bytes_per_token_per_gpu=page
        / bs
        * (
            sum(1 for i in range(st.first_layer, st.end_layer) if specs[i].caches)
            + (len(draft_kv) if st.holds_lm_head else 0)
        ),
        kv_heads_per_gpu=kv_heads_per_gpu(model, req.tp),
        kv_replicated=kv_replication_factor(model, req.tp) > 1,
        kv_cache_groups=len(groups),
        layers_per_group=g_stage,
        page_bytes=page,
        num_blocks=num_blocks,
        kv_cache_tokens=num_blocks // len(groups) * bs,
        blocks_per_request=per_request,
        kv_needed_bytes=g_stage * page * per_request,
        max_concurrency=concurrency,
        total_max_concurrency=concurrency * replicas if replicas else None,
        fits=fits,
        weights_fit=weights_fit,
        weights_shortfall_bytes=shortfall,
        max_model_len_that_fits=longest,
        binding_stage=st.stage,
        state_layers=sum(1 for spec in specs if spec.state_part() is not None),
        state_page_bytes=pages.state_page_bytes if pages else 0.0,
        state_page_padding_pct=pages.padding_pct if pages else 0.0,
        block_size_raised=pages.raised if pages else False,
        mamba_ssm_cache_dtype=state_dtypes(model, state_dtype)[1] if pages else None,
        max_num_seqs_over_state_blocks=over_state,
        draft_model=draft.name if draft is not None else None,
        draft_method=draft.method if draft is not None else None,
        draft_weights_bytes_per_gpu=draft_bytes,
        draft_kv_layers=len(draft_kv),
        spec_tokens=req.spec_tokens,
        cross_attention_layers=cross,
        image_tokens=(req.image_tokens or max_num_batched_tokens) if cross else None,
    )
    if suggest and not fits:
        result = replace(result, suggestions=_suggestions(model, req, result))
    return result


def _check_draft_page(
    model: ModelProfile, draft: Draft | None, layers: tuple[LayerSpec, ...], kv_dtype: str, tp: int
) -> None:
    """The draft's KV layers share the target's pool of equal pages: refuse a draft whose
    layer caches another number of bytes per token on one GPU."""
    if draft is None or not layers:
        return
    ours = kv_bytes_per_token_per_layer(model, kv_dtype, tp)
    theirs = layers[0].cache_bytes_per_token(DTYPE_BYTES[kv_dtype], tp)
    if ours != theirs:
        raise CapcalcError(
            f"draft {draft.name} caches {theirs:g} bytes per token per layer at tp={tp}, {model.name} "
            f"{ours:g}: capcalc models a draft whose KV page equals the target's (EAGLE and MTP heads)",
            parameter="draft_model",
        )


def _suggestions(model: ModelProfile, req: FitRequest, r: FitResult) -> tuple[tuple[str, Any], ...]:
    """(parameter, value) changes that would make it fit, each checked by fitting again."""
    out: list[tuple[str, Any]] = []

    def works(**changes) -> bool:
        try:
            return fit(model, req.changed(**changes), suggest=False).fits
        except CapcalcError:
            return False

    if r.weights_fit and 0 < r.max_model_len_that_fits < r.max_model_len:
        out.append(("max_model_len", r.max_model_len_that_fits))
    if r.max_num_seqs_over_state_blocks and r.num_blocks > 0 and works(max_num_seqs=r.num_blocks):
        out.append(("max_num_seqs", r.num_blocks))
    if req.kv_cache_memory is None:
        non_kv = r.usable_bytes_per_gpu - r.kv_cache_bytes_per_gpu + r.kv_cache_shortfall_bytes_per_gpu
        util = math.ceil((non_kv + r.kv_needed_bytes) / r.memory_bytes * 100) / 100
        if util <= 1 and works(gpu_memory_utilization=util):
            out.append(("gpu_memory_utilization", util))
    if r.kv_dtype != "fp8" and works(kv_dtype="fp8"):
        out.append(("kv_dtype", "fp8"))
    for dtype in ("fp8", "int4"):
        if r.weight_dtype not in ("fp8", "int4", "mxfp4", "nvfp4") and works(weight_dtype=dtype):
            out.append(("weight_dtype", dtype))
            break
    for tp in valid_tp_degrees(model):
        if tp > req.tp and (req.n_gpus is None or tp * req.pp <= req.n_gpus) and works(tp=tp):
            out.append(("tp", tp))
            break
    return tuple(out)


def search_tp(
    model: ModelProfile, req: FitRequest, concurrency: float | None = None
) -> tuple[FitResult, bool]:
    """The smallest valid tp (up to ``req.n_gpus / pp`` GPUs, else ``MAX_TP``) that fits, and
    with ``concurrency`` also serves that many sequences at max_model_len. Returns the
    result and whether the search succeeded (else the largest tp tried, with suggestions)."""
    limit = (req.n_gpus // req.pp) if req.n_gpus else MAX_TP
    degrees = [tp for tp in valid_tp_degrees(model) if tp <= limit]
    if not degrees:
        raise CapcalcError(
            f"no valid tp degree for {model.name} fits in {req.n_gpus} GPUs with pp={req.pp}",
            parameter="n_gpus",
        )
    for tp in degrees:
        result = fit(model, req.changed(tp=tp), suggest=False)
        if result.fits and (concurrency is None or result.max_concurrency >= concurrency):
            return result, True
    if not result.fits:  # as fit(..., suggest=True) of the largest degree would give it
        result = replace(result, suggestions=_suggestions(model, req.changed(tp=degrees[-1]), result))
    return result, False


def serving_note(
    model: ModelProfile, gpu: HardwareProfile, deployment: Deployment, batch: int, context: int
) -> Note | None:
    """What :func:`fit` says against a prediction of ``batch`` requests of ``context``
    tokens under ``deployment``, when vLLM would not serve it as asked: beyond the model's
    context, the weights or one request do not fit, or the KV cache holds fewer requests
    than the batch. None when it would (:func:`request_fits`)."""
    return request_fits(model, gpu, deployment, batch, context).note


@dataclass(frozen=True)
class RequestFit:
    """:func:`fit`'s verdict on ``batch`` requests of ``context`` tokens at once."""

    #: ``context`` is at most the model's maximum context
    within_max_context: bool
    #: vLLM started with ``max_model_len = context`` holds the weights and at least
    #: ``batch`` such requests in its KV cache
    fits_in_memory: bool
    #: why not, in words (None when both hold)
    note: Note | None = None

    def record(self) -> dict[str, bool]:
        """The two booleans, as the ``latency``, ``roofline`` and ``sweep`` records carry them."""
        return {"fits_in_memory": self.fits_in_memory, "within_max_context": self.within_max_context}


def context_note(model: ModelProfile, context: int) -> Note | None:
    """The note for requests of ``context`` tokens beyond the model's max context (vLLM
    refuses them; capcalc still prices them, as if the model accepted that many), else None."""
    if context <= model.max_context:
        return None
    return Note(f"{context:,} tokens exceed {model.name}'s max context ({model.max_context:,})")


def request_fits(
    model: ModelProfile,
    gpu: HardwareProfile,
    deployment: Deployment,
    batch: int,
    context: int,
    draft: Draft | None = None,
) -> RequestFit:
    """Would vLLM serve ``batch`` requests of ``context`` tokens at once on ``gpu`` under
    ``deployment``, by :func:`fit`'s own rule?

    ``within_max_context``: ``context <= model.max_context``. ``fits_in_memory``: the fit
    with ``max_model_len = context`` (every other setting vLLM's default, the memory
    :func:`memory_of` the GPU) fits, and its ``max_concurrency >= batch``, that is::

        num_blocks / blocks_per_request(context) >= batch

    Beyond the model's context vLLM refuses to start, so the memory is judged as if the
    model accepted ``context`` tokens (the fit's arithmetic does not depend on the
    limit), and the two answers stay apart. A speculative ``draft`` is held too."""
    within = context <= model.max_context
    probe = model if within else replace(model, max_context=context)
    memory, source = memory_of(gpu)
    request = FitRequest(
        memory, source, gpu=gpu.name, deployment=deployment, max_model_len=context, draft=draft
    )
    try:
        capacity = fit(probe, request, suggest=False)
    except CapcalcError as exc:  # a deployment vLLM refuses (a tp the heads do not divide...)
        return RequestFit(within, False, Note(exc.message, exc.parameter, exc.template))
    fits = capacity.fits and capacity.max_concurrency >= batch
    if not within:
        note = context_note(model, context)
    elif not capacity.fits:
        note = Note(
            f"{model.name} at tp={deployment.tp} on {gpu.name} with {context:,}-token requests: "
            "does not fit (see `capcalc fit`)"
        )
    elif not fits:
        note = Note(
            template=f"vLLM's KV cache on {gpu.name} holds {capacity.max_concurrency:.2f} requests of {context:,} "
            f"tokens, fewer than {{batch}} {batch} (see `capcalc fit`)",
            parameter="batch",
        )
    else:
        note = None
    return RequestFit(within, fits, note)
