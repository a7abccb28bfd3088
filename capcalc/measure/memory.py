"""The memory pre-check: predict what a measurement point allocates before allocating it.

For ``batch`` sequences held in a cache of ``cache_tokens`` slots (the context plus
the decode steps, or the prompt), in dtype width w bytes:

    weights     = decoder parameters x w                      (capcalc.model.weights; no vision tower)
    kv          = batch x kv_bytes_per_sequence(cache_tokens)  (capcalc.model.kv; windows applied)
    activations = the largest transient set of one layer for N = batch x new tokens:
                  N x w x (4 H + 2 (q + 2 kv) + 2 q + 3 I)     residual, norms, q/k/v (+ RoPE copies),
                                                               attention output, MLP gate/up/act
                + N x 4 x (2 H + 2 (q + kv))                   fp32 norm and RoPE temporaries
                + MoE: N k x w x (2 H + 3 I_e) + N x 4 x 2 E + N k x 8 x 4   (sorted copies, router, indices)
                + decode attention scores N x heads x slots x 4   (when the kernel falls back to math)
                + prefill sliding mask T x T bytes; logits B x V x 4 x 2
    workspace   = 512 MiB on a GPU (cuBLAS workspaces, CUDA-graph pool slack), 32 MiB on the CPU

A point fits when the total is at most 95% of the memory free before the model was
built (the CPU: 80% of available RAM, which other processes share). The estimate is
reported beside the measured peak (``torch.cuda.max_memory_allocated``) so its error
is visible.
"""

from __future__ import annotations

from dataclasses import dataclass

from capcalc.core.dtypes import DTYPE_BYTES
from capcalc.core.errors import CapcalcError
from capcalc.core.search import largest_true
from capcalc.model.kv import kv_bytes_per_sequence
from capcalc.model.params import count_params
from capcalc.schema.profiles import ModelProfile

# Allowances, not physics: the pre-check only has to refuse what would not fit. On a GPU,
# cuBLAS workspaces (a few MiB per handle), the CUDA graph pool and the caching
# allocator's rounding: 512 MiB kept every measured peak of the H100 validation below the
# prediction plus 4 % (docs/validation.md, "Memory"). The usable fractions leave room for
# the CUDA context and other processes (GPU) and for the OS and Python (CPU RAM).
GPU_WORKSPACE_BYTES = 512 * 2**20
CPU_WORKSPACE_BYTES = 32 * 2**20
GPU_USABLE_FRACTION = 0.95
CPU_USABLE_FRACTION = 0.80


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: float
    kv_bytes: float
    activation_bytes: float
    workspace_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.weights_bytes + self.kv_bytes + self.activation_bytes + self.workspace_bytes


def loop_weight_bytes(model: ModelProfile, dtype: str) -> float:
    """Bytes of the weights the torch loop allocates: every decoder parameter (the
    embedding once when tied), not the ``extra_params`` (vision tower) it does not build."""
    params = count_params(model)
    return (params.total - params.extra) * DTYPE_BYTES[dtype]


def estimate_memory(
    model: ModelProfile, dtype: str, batch: int, cache_tokens: int, new_tokens: int, is_cuda: bool
) -> MemoryEstimate:
    """Bytes a point needs: ``new_tokens`` is 1 in decode, the prompt length in prefill."""
    w = DTYPE_BYTES[dtype]
    h = model.hidden_size
    q = model.num_attention_heads * model.head_dim
    kv = model.num_kv_heads * model.head_dim
    n = batch * new_tokens
    width = model.intermediate_size if model.num_dense_layers else 0
    act = n * w * (4 * h + 2 * (q + 2 * kv) + 2 * q + 3 * width) + n * 4 * (2 * h + 2 * (q + kv))
    if model.moe is not None:
        m = model.moe
        shared = m.num_shared_experts * m.shared_expert_intermediate_size
        act += n * m.experts_per_token * w * (2 * h + 3 * m.expert_intermediate_size) + n * w * 3 * shared
        act += n * 4 * 2 * m.num_experts + n * m.experts_per_token * 8 * 4
    if new_tokens == 1:
        act += n * model.num_attention_heads * cache_tokens * 4
    elif model.sliding_window and new_tokens > model.sliding_window:
        act += new_tokens * new_tokens
    act += batch * model.vocab_size * 4 * 2
    return MemoryEstimate(
        weights_bytes=loop_weight_bytes(model, dtype),
        kv_bytes=batch * kv_bytes_per_sequence(model, cache_tokens, dtype),
        activation_bytes=float(act),
        workspace_bytes=float(GPU_WORKSPACE_BYTES if is_cuda else CPU_WORKSPACE_BYTES),
    )


def usable_bytes(free_bytes: float, is_cuda: bool) -> float:
    return free_bytes * (GPU_USABLE_FRACTION if is_cuda else CPU_USABLE_FRACTION)


def _gb(x: float) -> str:
    return f"{x / 1e9:.3g} GB"


def check_point(
    model: ModelProfile,
    dtype: str,
    phase: str,
    batch: int,
    tokens: int,
    cache_tokens: int,
    free_bytes: float,
    is_cuda: bool,
    device: str,
) -> MemoryEstimate:
    """The estimate of one point, or a CapcalcError (exit 1) saying why it would not fit,
    with the numbers and the largest batch / context that would."""
    new = 1 if phase == "decode" else tokens
    estimate = estimate_memory(model, dtype, batch, cache_tokens, new, is_cuda)
    budget = usable_bytes(free_bytes, is_cuda)
    if estimate.total_bytes <= budget:
        return estimate
    what = "ctx" if phase == "decode" else "prompt"
    head = (
        f"{model.name} {phase} at batch {batch}, {what} {tokens} needs {_gb(estimate.total_bytes)} "
        f"(weights {_gb(estimate.weights_bytes)} + KV cache {_gb(estimate.kv_bytes)} + activations "
        f"{_gb(estimate.activation_bytes)} + workspace {_gb(estimate.workspace_bytes)}) but {device} has "
        f"{_gb(budget)} usable ({_gb(free_bytes)} free)"
    )
    extra = cache_tokens - tokens  # the decode steps' slots beyond the context

    def fits(b, t):
        new_tokens = 1 if phase == "decode" else t
        return estimate_memory(model, dtype, b, t + extra, new_tokens, is_cuda).total_bytes <= budget

    best_batch = largest_true(lambda b: fits(b, tokens), 1, batch)
    best_tokens = largest_true(lambda t: fits(batch, t), 1, tokens)
    if not fits(1, 1):
        raise CapcalcError(
            f"{head}; the {dtype} weights alone do not fit: measure a smaller model or use a larger device",
            exit_code=1,
        )
    options = []
    if best_batch:
        options.append(f"{{batch}} {best_batch} at this {what}")
    if best_tokens:
        options.append(f"{{{what}}} {best_tokens} at this batch")
    tail = " or ".join(options) or "a smaller batch and " + what
    template = f"{head}; try {tail}".replace("{", "{{").replace("}", "}}")
    for name in ("batch", what):
        template = template.replace("{{" + name + "}}", "{" + name + "}")
    raise CapcalcError(template=template, parameter=("batch", what), exit_code=1)
