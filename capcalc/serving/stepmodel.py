"""The cost of one *mixed* engine step: running decodes plus prefill chunks, as one step.

A continuously batching engine (vLLM v1, TensorRT-LLM in-flight batching) runs in one
forward pass every running decode (one token each, at its own context) and chunks of
prompts that are being prefilled (``c`` tokens starting after ``q`` already computed
ones). The step model of :mod:`capcalc.model.flops` / :func:`capcalc.perf.latency.predict_step`
prices it like any step: with n = decodes + chunk tokens,

* weights are read once: every dense matrix, and the routed experts that any of the n
  tokens touches, E x (1 - (1 - k/E)^n);
* matrix FLOPs are 2 per weight per token for all n tokens; the LM head multiplies one
  position per sequence in the step (each decode, and the last position of each chunk);
* attention: each decode attends to its own context (decode dimensions, MLA latent);
  a chunk of c tokens after a prefix of q attends causally, pairs(q + c) - pairs(q) with
  the prefill pair count of :func:`capcalc.model.flops.attended_pairs`;
* KV: each decode reads its sequence's cache at its context, a chunk reads its prefix and
  its own KV (kv(q + c)); every new token writes one token of KV per layer;
* activations are streamed for the chunk tokens only (decode activations stay on chip);
* recurrent layers (Mamba2, Gated DeltaNet): ``recurrent_update`` costs its FLOPs per token
  for all n tokens, and each sequence in the step (decode or chunk) writes its fixed state
  back once; the state's read is part of kv_read's per-sequence intercept, so neither
  grows with the context.

Exactness: every component is the same as the one :func:`capcalc.model.flops.step_cost`
gives, taken from two decode steps and one prefill step of one sequence computed by it
(components affine in the context: KV and attention per sequence; per token: matmul
FLOPs, embedding rows, KV writes, activations; constant: the dense weights). So a pure
decode step of one sequence is ``decode_cost(model, 1, ctx)`` and a chunk of the whole
prompt alone is ``prefill_cost(model, 1, P)``, component by component. The one
approximation: per-sequence KV and attention are taken affine in the context from
``ctx_floor`` up, which is exact for full-attention layers and for sliding-window layers
once the context passes the window (below it a sliding layer's cache grows with the
context too: the affine form then overstates it by at most window x per-token KV). A
chunked-local layer (Llama 4) holds ((ctx - 1) mod chunk) + 1 tokens, a sawtooth: while the
prompt is within the first chunk the anchors stay inside it (exact there, a chunked layer
holding every token; decodes that cross into the next chunk are overstated), and past it
they are taken whole chunks apart at the chunk's mean, (chunk + 1) / 2 tokens.

A step is then timed by :func:`capcalc.perf.latency.step_times` (the arithmetic of
``predict_step``), from :meth:`MixedStepModel.step_totals`, as ``prefill`` (eff(n) on its n
tokens) when it holds any chunk, else as ``decode``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from capcalc.model.flops import (
    Component,
    StepCost,
    attended_pairs,
    decode_cost,
    experts_touched,
    prefill_cost,
)
from capcalc.model.layers import cdiv
from capcalc.perf.efficiency import Efficiency
from capcalc.perf.latency import (
    StepPrediction,
    StepTimes,
    predict_step,
    resolve_compute_dtype,
    step_times,
    tokens_per_expert,
)
from capcalc.schema.profiles import HardwareProfile, ModelProfile

_PER_TOKEN_MATMULS = ("qkv_proj", "o_proj", "mlp", "router", "shared_experts")


class Chunk(NamedTuple):
    """``tokens`` prompt tokens of one sequence, after ``prefix`` already computed ones (a
    tuple: a simulation builds one for every chunk of every step)."""

    prefix: int
    tokens: int


class MixedStepModel:
    """Prices mixed steps of one replica (one GPU of ``tp``) from unit costs computed once."""

    def __init__(
        self,
        model: ModelProfile,
        gpu: HardwareProfile,
        efficiency: Efficiency,
        weight_dtype: str = "auto",
        kv_dtype: str = "auto",
        tp: int = 1,
        compute_dtype: str = "auto",
        ctx_floor: int = 1,
        kernel_roofline: bool = False,
        **cost_kw,
    ):
        self.model, self.gpu, self.efficiency, self.tp = model, gpu, efficiency, tp
        self.kernel_roofline = kernel_roofline
        self.compute_dtype = resolve_compute_dtype(compute_dtype, weight_dtype, model, gpu)
        kw = dict(weight_dtype=weight_dtype, kv_dtype=kv_dtype, tp=tp, **cost_kw)
        lo = max(1, ctx_floor, model.sliding_window or 1)
        span = 1024
        chunk = model.attention_chunk_size
        mean = chunk is not None and lo >= chunk
        if mean:  # past the first chunk: anchors where the chunk is half full, whole chunks apart
            lo = lo - (lo - 1) % chunk + chunk // 2 - 1  # holds chunk // 2 tokens
            span = chunk * cdiv(1024, chunk)
        elif chunk is not None:  # within the first chunk a chunked layer holds every token
            span = max(1, min(span, chunk - lo))
        self._ctx_lo = lo
        hi = lo + span
        d_lo, d_hi = self._decode_anchor(model, lo, mean, kw), self._decode_anchor(model, hi, mean, kw)
        p_len = 256
        pre = prefill_cost(model, 1, p_len, **kw)
        self.weight_dtype, self.kv_dtype = d_lo.weight_dtype, d_lo.kv_dtype
        c = {x.name: x for x in d_lo.components}
        c_hi = {x.name: x for x in d_hi.components}
        cp = {x.name: x for x in pre.components}
        # per-sequence KV read and decode attention FLOPs: value at ctx = a + b x ctx
        self._kv_b = (c_hi["kv_read"].bytes - c["kv_read"].bytes) / span
        self._kv_a = c["kv_read"].bytes - self._kv_b * lo
        self._att = {}
        for name in ("attention_scores", "attention_values"):
            b = (c_hi[name].flops - c[name].flops) / span
            self._att[name] = (c[name].flops - b * lo, b)
        # prefill attention FLOPs per attended (query, key) pair (MLA prefill has its own dims)
        pairs = attended_pairs(model, "prefill", p_len)
        self._pre_att = {n: cp[n].flops / pairs for n in ("attention_scores", "attention_values")}
        self._act_per_token = cp["activations"].bytes / p_len
        self._kv_write_per_token = c["kv_write"].bytes
        self._embedding_per_token = c["embedding"].bytes
        self._matmul = {n: (c[n].flops, c[n].bytes) for n in (*_PER_TOKEN_MATMULS, "lm_head")}
        self._norms = c["norms_biases"].bytes
        # recurrent layers (Mamba2, Gated DeltaNet): FLOPs per token, the state written back
        # once per sequence in the step (its read is in kv_read's per-sequence intercept)
        rec = c["recurrent_update"]
        self._rec_flops_per_token = rec.flops
        self._rec_bytes_per_seq = rec.bytes
        self._routed = c["routed_experts"]
        moe = model.moe
        self._k = moe.experts_per_token if moe else 0
        self._bytes_per_expert = self._routed.bytes / d_lo.experts_touched_per_layer if moe else 0.0
        self._template = d_lo
        # the sums :meth:`step_time_s` takes: dense matrix products per token and their
        # weights, attention per decode, per context token and per prefill pair
        self._mm_per_token = sum(self._matmul[x][0] for x in _PER_TOKEN_MATMULS)
        self._mm_bytes = sum(self._matmul[x][1] for x in (*_PER_TOKEN_MATMULS, "lm_head"))
        self._lm_flops = self._matmul["lm_head"][0]
        self._att_a = sum(self._att[x][0] for x in self._att)
        self._att_b = sum(self._att[x][1] for x in self._att)
        self._pre_att_sum = sum(self._pre_att.values())
        self._lines: dict[int, tuple[float, float, float, float, float]] = {}
        self._pairs: dict[int, float] = {}

    @staticmethod
    def _decode_anchor(model: ModelProfile, ctx: int, mean: bool, kw: dict) -> StepCost:
        """The decode step of one sequence at ``ctx``; with ``mean`` (past a chunked layer's
        first chunk, ``ctx`` holding chunk/2 tokens in it) the mean of the steps at ``ctx``
        and ``ctx + 1``: held chunk/2 + 1/2 = (chunk + 1) / 2, the mean of 1..chunk."""
        a = decode_cost(model, 1, ctx, **kw)
        if not mean:
            return a
        b = decode_cost(model, 1, ctx + 1, **kw)
        comps = tuple(
            Component(x.name, (x.flops + y.flops) / 2, (x.bytes + y.bytes) / 2, x.kind)
            for x, y in zip(a.components, b.components, strict=True)
        )
        return replace(a, components=comps)

    # ------------------------------------------------------------------ costs

    def prefill_pairs(self, ctx: int) -> float:
        """:func:`capcalc.model.flops.attended_pairs` of a ``ctx``-token prefill (memoised)."""
        pairs = self._pairs.get(ctx)
        if pairs is None:
            pairs = self._pairs[ctx] = attended_pairs(self.model, "prefill", ctx)
        return pairs

    def kv_read_bytes(self, ctx: float) -> float:
        """KV bytes one sequence at ``ctx`` reads (affine form, module docstring)."""
        return self._kv_a + self._kv_b * ctx

    def cost(self, decodes: int, decode_ctx_sum: float, chunks: tuple[Chunk, ...] = ()) -> StepCost:
        """The mixed step's itemised cost (per GPU) for ``decodes`` sequences whose contexts
        sum to ``decode_ctx_sum``, plus ``chunks``."""
        chunk_tokens = sum(ch.tokens for ch in chunks)
        n = decodes + chunk_tokens
        logits = decodes + len(chunks)
        pairs = sum(
            self.prefill_pairs(ch.prefix + ch.tokens) - self.prefill_pairs(ch.prefix) for ch in chunks
        )
        kv_read = decodes * self._kv_a + self._kv_b * decode_ctx_sum
        kv_read += sum(self.kv_read_bytes(ch.prefix + ch.tokens) for ch in chunks)
        comps = [Component("embedding", 0.0, n * self._embedding_per_token, "memory")]
        for name in ("qkv_proj", "o_proj"):
            f, b = self._matmul[name]
            comps.append(Component(name, f * n, b, "matmul"))
        for name in ("attention_scores", "attention_values"):
            a, b = self._att[name]
            flops = decodes * a + b * decode_ctx_sum + self._pre_att[name] * pairs
            comps.append(Component(name, flops, 0.0, "attention"))
        for name in ("mlp", "router", "shared_experts"):
            f, b = self._matmul[name]
            comps.append(Component(name, f * n, b, "matmul"))
        touched = None
        if self.model.moe is not None:
            touched = experts_touched(self.model.moe.num_experts, self._k, n)
            comps.append(
                Component(
                    "routed_experts", self._routed.flops * n, self._bytes_per_expert * touched, "matmul"
                )
            )
        else:
            comps.append(Component("routed_experts", 0.0, 0.0, "matmul"))
        comps.append(Component("norms_biases", 0.0, self._norms, "memory"))
        comps.append(Component("activations", 0.0, chunk_tokens * self._act_per_token, "memory"))
        f, b = self._matmul["lm_head"]
        comps.append(Component("lm_head", f * logits, b, "matmul"))
        comps.append(Component("kv_read", 0.0, kv_read, "memory"))
        comps.append(Component("kv_write", 0.0, n * self._kv_write_per_token, "memory"))
        comps.append(
            Component(
                "recurrent_update",
                self._rec_flops_per_token * n,
                self._rec_bytes_per_seq * (decodes + len(chunks)),
                "attention",
            )
        )
        t = self._template
        phase = "prefill" if chunks else "decode"
        return StepCost(
            phase=phase,
            model=t.model,
            batch=decodes if not chunks else 1,
            new_tokens=1 if not chunks else n,
            ctx=max(1, round(decode_ctx_sum / decodes)) if decodes else chunks[0].prefix + chunks[0].tokens,
            tp=t.tp,
            weight_dtype=t.weight_dtype,
            kv_dtype=t.kv_dtype,
            components=tuple(comps),
            experts_touched_per_layer=touched,
            step_sequences=decodes + len(chunks),
        )

    def step_totals(self, decodes: int, decode_ctx_sum: float, chunks: tuple[Chunk, ...] = ()) -> dict:
        """:meth:`cost`'s totals without itemising it, as
        :func:`capcalc.perf.latency.step_totals` gives them from the itemised cost: dense and
        routed matrix products, attention, weights and streamed bytes, cache traffic."""
        chunk_tokens = 0
        pairs = 0.0
        kv_read = decodes * self._kv_a + self._kv_b * decode_ctx_sum
        for prefix, tokens in chunks:
            end = prefix + tokens
            chunk_tokens += tokens
            pairs += self.prefill_pairs(end) - self.prefill_pairs(prefix)
            kv_read += self._kv_a + self._kv_b * end
        n = decodes + chunk_tokens
        seqs = decodes + len(chunks)
        touched = None
        routed_flops = routed_bytes = 0.0
        if self.model.moe is not None:
            touched = experts_touched(self.model.moe.num_experts, self._k, n)
            routed_flops, routed_bytes = self._routed.flops * n, self._bytes_per_expert * touched
        streamed = n * self._embedding_per_token + self._norms + chunk_tokens * self._act_per_token
        attention = decodes * self._att_a + self._att_b * decode_ctx_sum + self._pre_att_sum * pairs
        return {
            "prefill": bool(chunks),
            "tokens": n,
            "sequences": seqs,
            "tp": self.tp,
            "weight_bytes": self._mm_bytes + routed_bytes + streamed,
            "kv_bytes": kv_read + n * self._kv_write_per_token + self._rec_bytes_per_seq * seqs,
            "matmul_flops": self._mm_per_token * n + self._lm_flops * seqs + routed_flops,
            "routed_flops": routed_flops,
            "attention_flops": attention + self._rec_flops_per_token * n,
            "expert_tokens": tokens_per_expert(self.model, n, touched),
        }

    def step_time_s(self, decodes: int, decode_ctx_sum: float, chunks: tuple[Chunk, ...] = ()) -> float:
        """The time of :meth:`cost`'s step from :meth:`step_totals` alone, through
        :func:`capcalc.perf.latency.step_times` (the arithmetic predict_step uses): the same
        time to float rounding, at a fraction of the cost. The simulation prices its mixed
        steps so."""
        return self._step_times(decodes, decode_ctx_sum, chunks).time_s

    def _step_times(self, decodes: int, decode_ctx_sum: float, chunks: tuple[Chunk, ...] = ()) -> StepTimes:
        totals = self.step_totals(decodes, decode_ctx_sum, chunks)
        return step_times(
            self.model,
            self.gpu,
            self.compute_dtype,
            self.efficiency,
            kernel_roofline=self.kernel_roofline,
            **totals,
        )

    def predict(self, decodes: int, decode_ctx_sum: float, chunks: tuple[Chunk, ...] = ()) -> StepPrediction:
        return self._timed(self.cost(decodes, decode_ctx_sum, chunks))

    def _timed(self, cost: StepCost) -> StepPrediction:
        return predict_step(
            self.model,
            self.gpu,
            cost,
            self.compute_dtype,
            self.efficiency,
            kernel_roofline=self.kernel_roofline,
        )

    def decode_line(self, decodes: int) -> tuple[float, float, float, float, float]:
        """A pure decode step of ``decodes`` sequences as two lines in their context sum x:
        (c0, c1, m0, m1, fixed) with time_s = max(c0 + c1 x, m0 + m1 x) + fixed, the lines
        being compute_s and memory_s (or, with ``kernel_roofline``, the attention's FLOP time
        and the KV read time, the matrix products' max(FLOPs, weights) going into fixed).
        Exact: in decode every FLOP and byte is affine in x (per-sequence KV and attention)
        and the FLOP/s efficiency is the asymptote, so two steps fix both lines (timed from
        their totals, as :meth:`step_time_s`: a thrashing cache visits hundreds of batch sizes).
        Cached per ``decodes``."""
        line = self._lines.get(decodes)
        if line is None:
            x0 = float(decodes * self._ctx_lo)
            x1 = x0 + decodes * 1024.0
            p0, p1 = self._step_times(decodes, x0), self._step_times(decodes, x1)
            if self.kernel_roofline:
                (a0, a1), (b0, b1) = (
                    (p0.attention_compute_s, p1.attention_compute_s),
                    (p0.kv_memory_s, p1.kv_memory_s),
                )
            else:
                (a0, a1), (b0, b1) = (p0.compute_s, p1.compute_s), (p0.memory_s, p1.memory_s)
            c1 = (a1 - a0) / (x1 - x0)
            m1 = (b1 - b0) / (x1 - x0)
            fixed = p0.time_s - max(a0, b0)
            line = (a0 - c1 * x0, c1, b0 - m1 * x0, m1, fixed)
            self._lines[decodes] = line
        return line

    def decode_time_s(self, decodes: int, decode_ctx_sum: float) -> float:
        """Time of a pure decode step (:meth:`decode_line`), without building its cost."""
        c0, c1, m0, m1, fixed = self.decode_line(decodes)
        return max(c0 + c1 * decode_ctx_sum, m0 + m1 * decode_ctx_sum) + fixed

    def time_s(self, decodes: int, decode_ctx_sum: float, chunks: tuple[Chunk, ...] = ()) -> float:
        return self.predict(decodes, decode_ctx_sum, chunks).time_s
