"""A decoder with random weights, built from a :class:`ModelProfile`, and its KV cache.

What it computes (shapes: B batch, T tokens, H hidden, h heads, g KV heads, d head_dim):

* embedding gather [B, T] -> [B, T, H] (+ a learned position table where the profile has one);
* per layer: norm (RMSNorm or LayerNorm; 2 per layer pre-norm, 4 adds post-norms as
  Gemma does, 1 is Falcon's parallel attention + MLP), fused q/k/v projection
  [H -> (h + 2g) d] with optional biases, optional per-head q/k norm, RoPE on q and k,
  grouped-query attention over the cache, output projection [h d -> H];
* MLP: gated (silu(x W_gate) * x W_up) W_down or plain gelu(x W_up) W_down; or MoE:
  a router [H -> E], softmax, top-k, renormalised weights, and the routed experts
  run as a grouped matmul over the tokens sorted by expert (``torch._grouped_mm``:
  it reads only the experts that received tokens; per-expert biases where the profile
  has them), shared experts as one dense MLP;
* final norm and LM head (tied to the embedding where the profile says so); prefill
  computes logits for the last position only, as serving engines do.

KV cache: per layer two tensors [B, g, L, d] preallocated once, L the context for a
full-attention layer and min(window, context) for a sliding-window layer, which is
used as a ring buffer (slot = position mod L; RoPE is applied before caching, so the
order of slots does not matter to attention). A decode step writes its key and value
in place at its position (``index_copy_``) and attends over the valid slots with a
mask, so every shape is static and the step can be captured as a CUDA graph.

Not modelled: MLA (refused), ALiBi (refused), Gemma's logit soft-capping and
embedding scaling (no effect on time), rope scaling variants (same cost).
"""

from __future__ import annotations

import math

from capcalc.core.errors import CapcalcError
from capcalc.measure import require_torch
from capcalc.model.layers import FullAttentionSpec, MLAAttentionSpec, SlidingWindowSpec, layer_specs
from capcalc.schema.profiles import ModelProfile

#: dtypes the torch loop runs in (weights, activations and KV alike)
LOOP_DTYPES = ("bf16", "fp16", "fp32")


#: the layer kinds the loop builds (grouped-query attention over all tokens or a window)
BUILT_KINDS = (FullAttentionSpec, SlidingWindowSpec)


def check_supported(profile: ModelProfile, dtype: str) -> None:
    for spec in dict.fromkeys(layer_specs(profile)):
        if isinstance(spec, MLAAttentionSpec):
            raise CapcalcError(
                f"{profile.name} uses multi-head latent attention (MLA), which the measure loop does not build "
                "yet; measure a GQA model"
            )
        if type(spec) not in BUILT_KINDS:
            raise CapcalcError(
                f"{profile.name} has {spec.kind} layers, which the measure loop does not build yet; "
                "measure a model of full or sliding-window attention"
            )
    if profile.attention_output_gate:
        raise CapcalcError(
            f"{profile.name} gates its attention output, which the measure loop does not build"
        )
    if profile.position_embedding == "alibi":
        raise CapcalcError(f"{profile.name} uses ALiBi positions, which the measure loop does not build")
    if dtype not in LOOP_DTYPES:
        raise CapcalcError(
            parameter="weight_dtype",
            message=f"weight_dtype {dtype}: the measure loop runs in {', '.join(LOOP_DTYPES)} only "
            "(quantised kernels are not built)",
        )


def cache_lengths(profile: ModelProfile, max_ctx: int) -> list[int]:
    """Slots per layer: the tokens each layer's spec holds at ``max_ctx`` (``max_ctx`` for
    full layers, the window for sliding ones)."""
    return [spec.tokens_held(max_ctx) for spec in layer_specs(profile)]


class KVCache:
    """[layers] x (k, v) tensors of shape [batch, kv_heads, slots, head_dim], filled with random data."""

    def __init__(self, model: DecoderModel, batch: int, max_ctx: int, random_fill: bool = True):
        torch = require_torch()
        p = model.profile
        self.batch = batch
        self.max_ctx = max_ctx
        self.lengths = cache_lengths(p, max_ctx)
        self.k, self.v = [], []
        for length in self.lengths:
            shape = (batch, p.num_kv_heads, length, p.head_dim)
            k = torch.empty(shape, device=model.device, dtype=model.dtype)
            v = torch.empty(shape, device=model.device, dtype=model.dtype)
            if random_fill:  # the prompt's keys and values stand in as random data, never zeros
                k.normal_()
                v.normal_()
            else:
                k.zero_()
                v.zero_()
            self.k.append(k)
            self.v.append(v)
        self.slot_index = {n: torch.arange(n, device=model.device) for n in set(self.lengths)}

    @property
    def bytes(self) -> float:
        return float(sum(t.numel() * t.element_size() for t in (*self.k, *self.v)))


class DecoderModel:
    def __init__(
        self, profile: ModelProfile, dtype: str, device: str, seed: int = 0, max_positions: int = 8192
    ):
        torch = require_torch()
        check_supported(profile, dtype)
        self.torch = torch
        self.profile = p = profile
        self.device = device
        self.dtype_name = dtype
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
        torch.manual_seed(seed)
        h, d = p.hidden_size, p.head_dim
        self.q_width = p.num_attention_heads * d
        self.kv_width = p.num_kv_heads * d
        self.group = p.num_attention_heads // p.num_kv_heads
        self.eps = 1e-5

        def linear(out_features, in_features):  # std 1/sqrt(fan_in) keeps activations O(1)
            w = torch.empty(out_features, in_features, device=device, dtype=self.dtype)
            return w.normal_(0.0, 1.0 / math.sqrt(in_features))

        def vector(n, mean=0.0, std=0.02):
            return torch.empty(n, device=device, dtype=self.dtype).normal_(mean, std)

        def norm(n):
            return (vector(n, 1.0, 0.1), vector(n) if p.norm == "layernorm" else None)

        self.embedding = torch.empty(p.vocab_size, h, device=device, dtype=self.dtype).normal_()
        self.lm_head = self.embedding if p.tie_word_embeddings else linear(p.vocab_size, h)
        self.positions = (
            torch.empty(p.max_context, h, device=device, dtype=self.dtype).normal_(0, 0.02)
            if p.position_embedding == "learned"
            else None
        )
        self.final_norm = norm(h)
        self.layers = []
        for index in range(p.num_layers):
            layer = {
                "norms": [norm(h) for _ in range(p.norms_per_layer)],
                "wqkv": linear(self.q_width + 2 * self.kv_width, h),
                "bqkv": vector(self.q_width + 2 * self.kv_width) if p.attention_bias else None,
                "wo": linear(h, self.q_width),
                "bo": vector(h) if p.attention_output_bias else None,
                "q_norm": norm(d) if p.qk_norm else None,
                "k_norm": norm(d) if p.qk_norm else None,
            }
            if p.is_moe_layer(index):
                m = p.moe
                e_width = m.expert_intermediate_size
                layer["router"] = linear(m.num_experts, h)
                layer["router_b"] = vector(m.num_experts) if m.router_bias else None
                rows = (2 if p.mlp == "gated" else 1) * e_width
                # stored [E, out, in] like per-expert nn.Linear; the grouped matmul takes the
                # transposed (column-major) view [E, in, out]
                layer["w13"] = torch.empty(m.num_experts, rows, h, device=device, dtype=self.dtype).normal_(
                    0, 1 / math.sqrt(h)
                )
                layer["w2"] = torch.empty(m.num_experts, h, e_width, device=device, dtype=self.dtype).normal_(
                    0, 1 / math.sqrt(e_width)
                )
                # gpt-oss: each expert's gate_up and down projections carry a bias
                layer["b13"] = (
                    torch.empty(m.num_experts, rows, device=device, dtype=self.dtype).normal_(0, 0.02)
                    if m.expert_bias
                    else None
                )
                layer["b2"] = (
                    torch.empty(m.num_experts, h, device=device, dtype=self.dtype).normal_(0, 0.02)
                    if m.expert_bias
                    else None
                )
                if m.num_shared_experts:
                    layer["shared"] = self._mlp_weights(
                        m.num_shared_experts * m.shared_expert_intermediate_size, linear
                    )
            else:
                layer["mlp"] = self._mlp_weights(p.intermediate_size, linear, bias=p.mlp_bias, vector=vector)
            self.layers.append(layer)
        # RoPE tables (fp32), rotate-half convention
        self.max_positions = max_positions
        if p.position_embedding == "rope":
            inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
            angles = torch.outer(torch.arange(max_positions, device=device, dtype=torch.float32), inv)
            self.cos = torch.cat((angles.cos(), angles.cos()), dim=-1).to(self.dtype)  # [positions, d]
            self.sin = torch.cat((-angles.sin(), angles.sin()), dim=-1).to(self.dtype)  # first half negated
        self.grouped_mm = p.moe is not None and self._grouped_mm_works()
        if p.moe is not None:
            self.expert_ids = torch.arange(p.moe.num_experts, device=device)

    def _mlp_weights(self, width, linear, bias=False, vector=None):
        p = self.profile
        rows = (2 if p.mlp == "gated" else 1) * width
        return {
            "up": linear(rows, p.hidden_size),
            "up_b": vector(rows) if bias else None,
            "down": linear(p.hidden_size, width),
            "down_b": vector(p.hidden_size) if bias else None,
        }

    def _grouped_mm_works(self) -> bool:
        """Whether ``torch._grouped_mm`` runs here in this dtype (Hopper bf16, recent CPU builds)."""
        torch = self.torch
        if not hasattr(torch, "_grouped_mm"):
            return False
        try:
            a = torch.randn(4, 16, device=self.device, dtype=self.dtype)
            b = torch.randn(2, 16, 16, device=self.device, dtype=self.dtype).transpose(-2, -1)
            offs = torch.tensor([2, 4], device=self.device, dtype=torch.int32)
            torch._grouped_mm(a, b, offs=offs)
            return True
        except (RuntimeError, NotImplementedError, TypeError):
            return False

    def parameters(self) -> list:
        """Every weight tensor once (a tied LM head is the embedding); not the RoPE tables."""
        seen, tensors = set(), [self.embedding, self.lm_head, self.positions, *self.final_norm]
        for layer in self.layers:
            for value in layer.values():
                if isinstance(value, dict):
                    tensors.extend(value.values())
                elif isinstance(value, (list, tuple)):
                    for item in value:
                        tensors.extend(item if isinstance(item, tuple) else (item,))
                else:
                    tensors.append(value)
        unique = []
        for t in tensors:
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                unique.append(t)
        return unique

    @property
    def weight_bytes(self) -> float:
        return float(sum(t.numel() * t.element_size() for t in self.parameters()))

    # ------------------------------------------------------------------ pieces

    def _norm(self, x, weights):
        """RMSNorm / LayerNorm over the last dimension: one fused kernel each (fp32 inside)."""
        F = self.torch.nn.functional
        w, b = weights
        if b is None:
            return F.rms_norm(x, (x.shape[-1],), w, self.eps)
        return F.layer_norm(x, (x.shape[-1],), w, b, self.eps)

    def _rope(self, x, cos, sin):
        """x [B, T, heads, d]; cos [T, d] and sin [T, d] with its first half negated, in the
        model dtype: x cos + rotate_half(x) sin = x cos + cat(x2, x1) sin_signed (3 kernels)."""
        half = x.shape[-1] // 2
        swapped = self.torch.cat((x[..., half:], x[..., :half]), dim=-1)
        return self.torch.addcmul(x * cos[None, :, None, :], swapped, sin[None, :, None, :])

    def _dense_mlp(self, x, w):
        F = self.torch.nn.functional
        up = F.linear(x, w["up"], w["up_b"])
        if self.profile.mlp == "gated":
            gate, up = up.chunk(2, dim=-1)
            up = F.silu(gate) * up
        else:
            up = F.gelu(up, approximate="tanh")
        return F.linear(up, w["down"], w["down_b"])

    def _act(self, h):
        F = self.torch.nn.functional
        if self.profile.mlp == "gated":
            gate, up = h.chunk(2, dim=-1)
            return F.silu(gate) * up
        return F.gelu(h, approximate="tanh")

    def _moe(self, x, layer):
        """x [N, H] -> [N, H]: top-k routing and the routed experts' real weights."""
        torch = self.torch
        F = torch.nn.functional
        m = self.profile.moe
        n, k = x.shape[0], m.experts_per_token
        logits = F.linear(x, layer["router"], layer["router_b"])
        # softmax over all experts, top-k, renormalised == softmax over the top-k logits
        top, experts = logits.topk(k, dim=-1)  # [N, k]
        weights = top.float().softmax(dim=-1).to(x.dtype)
        flat = experts.reshape(-1)  # [N k]
        if self.grouped_mm:
            # the N*k (token, expert) pairs sorted by expert; offsets = end of each expert's rows
            sorted_experts, order = flat.sort()
            offsets = torch.searchsorted(sorted_experts, self.expert_ids, right=True, out_int32=True)
            xs = x.index_select(0, order // k)  # [N k, H]
            hidden = torch._grouped_mm(xs, layer["w13"].transpose(-2, -1), offs=offsets)
            if layer["b13"] is not None:
                hidden = hidden + layer["b13"].index_select(0, sorted_experts)
            ys = torch._grouped_mm(self._act(hidden), layer["w2"].transpose(-2, -1), offs=offsets)
            if layer["b2"] is not None:
                ys = ys + layer["b2"].index_select(0, sorted_experts)
            out = torch.empty_like(ys).index_copy_(0, order, ys)  # back to (token, slot) order
        else:
            # eager fallback: one matmul per expert that received tokens (data-dependent, no graph)
            xs = x.repeat_interleave(k, dim=0)
            out = torch.empty(n * k, x.shape[1], device=x.device, dtype=x.dtype)
            for e in flat.unique().tolist():
                rows = (flat == e).nonzero().squeeze(1)
                b13 = None if layer["b13"] is None else layer["b13"][e]
                b2 = None if layer["b2"] is None else layer["b2"][e]
                hidden = F.linear(xs.index_select(0, rows), layer["w13"][e], b13)
                out.index_copy_(0, rows, F.linear(self._act(hidden), layer["w2"][e], b2))
        y = (out.view(n, k, -1) * weights.unsqueeze(-1)).sum(dim=1)
        if "shared" in layer:
            y = y + self._dense_mlp(x, layer["shared"])
        return y

    def _ffn(self, x, layer):
        if "mlp" in layer:
            return self._dense_mlp(x, layer["mlp"])
        b, t, hdim = x.shape
        return self._moe(x.reshape(b * t, hdim), layer).view(b, t, hdim)

    def _qkv(self, x, layer, cos, sin):
        p = self.profile
        b, t, _ = x.shape
        heads, kv_heads, d = p.num_attention_heads, p.num_kv_heads, p.head_dim
        qkv = self.torch.nn.functional.linear(x, layer["wqkv"], layer["bqkv"])
        v = qkv[..., self.q_width + self.kv_width :].view(b, t, kv_heads, d)
        if layer["q_norm"] is not None:
            q = self._norm(qkv[..., : self.q_width].view(b, t, heads, d), layer["q_norm"])
            k = self._norm(
                qkv[..., self.q_width : self.q_width + self.kv_width].view(b, t, kv_heads, d), layer["k_norm"]
            )
            if cos is not None:
                q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            return q, k, v
        qk = qkv[..., : self.q_width + self.kv_width].view(b, t, heads + kv_heads, d)
        if cos is not None:  # one pass over q and k together
            qk = self._rope(qk, cos, sin)
        return qk[:, :, :heads], qk[:, :, heads:], v

    def _reduce(self, x):
        """The output of a row-parallel product (o_proj, the MLP's down): the whole sum
        here; the tensor-parallel shard (capcalc.measure.tp) all-reduces its part."""
        return x

    def _block(self, x, layer, attend):
        """One decoder layer around ``attend(normed) -> attention output [B, T, h d]``."""
        F = self.torch.nn.functional
        norms = layer["norms"]
        if len(norms) == 1:  # parallel attention and MLP from one norm (Falcon)
            n = self._norm(x, norms[0])
            return (
                x
                + self._reduce(F.linear(attend(n), layer["wo"], layer["bo"]))
                + self._reduce(self._ffn(n, layer))
            )
        a = self._reduce(F.linear(attend(self._norm(x, norms[0]) if norms else x), layer["wo"], layer["bo"]))
        if len(norms) >= 4:
            a = self._norm(a, norms[2])
        x = x + a
        f = self._reduce(self._ffn(self._norm(x, norms[1]) if len(norms) >= 2 else x, layer))
        if len(norms) >= 4:
            f = self._norm(f, norms[3])
        return x + f

    def _embed(self, tokens, positions):
        x = self.embedding[tokens]
        if self.positions is not None:
            x = x + self.positions[positions]
        return x

    def _logits(self, x):
        x = self._norm(x, self.final_norm)
        return self.torch.nn.functional.linear(x, self.lm_head).float()

    # ------------------------------------------------------------------ passes

    def prefill(self, tokens, cache: KVCache, all_logits: bool = False):
        """Run ``tokens`` [B, T] from position 0, write every layer's cache; logits [B, V] (or [B, T, V])."""
        torch = self.torch
        F = torch.nn.functional
        p = self.profile
        b, t = tokens.shape
        if t > cache.max_ctx or t > self.max_positions:
            raise CapcalcError(f"prompt of {t} tokens exceeds the cache ({cache.max_ctx}) or the RoPE table")
        positions = torch.arange(t, device=self.device)
        cos = self.cos[:t] if p.position_embedding == "rope" else None
        sin = self.sin[:t] if p.position_embedding == "rope" else None
        x = self._embed(tokens, positions)
        masks = {}
        for index, layer in enumerate(self.layers):
            length = cache.lengths[index]
            window = getattr(layer_specs(p)[index], "window", None)

            def attend(n, index=index, layer=layer, length=length, window=window):
                q, k, v = self._qkv(n, layer, cos, sin)
                kept = positions[max(0, t - length) :]  # the last `length` positions stay cached
                cache.k[index].index_copy_(2, kept % length, k[:, kept].transpose(1, 2))
                cache.v[index].index_copy_(2, kept % length, v[:, kept].transpose(1, 2))
                q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
                if window is not None and t > window:
                    if "window" not in masks:
                        distance = positions[:, None] - positions[None, :]
                        masks["window"] = (distance >= 0) & (distance < window)
                    out = F.scaled_dot_product_attention(q, k, v, attn_mask=masks["window"], enable_gqa=True)
                else:
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                return out.transpose(1, 2).reshape(b, t, self.q_width)

            x = self._block(x, layer, attend)
        return self._logits(x if all_logits else x[:, -1])

    def decode(self, tokens, cache: KVCache, pos):
        """One decode step: ``tokens`` [B, 1] at position ``pos`` (a 0-d long tensor on the
        device, the same for every sequence); writes the cache in place; logits [B, V].
        Every shape is static, so the step can be captured as a CUDA graph."""
        torch = self.torch
        F = torch.nn.functional
        p = self.profile
        b = tokens.shape[0]
        where = pos.view(1)
        cos = self.cos.index_select(0, where) if p.position_embedding == "rope" else None
        sin = self.sin.index_select(0, where) if p.position_embedding == "rope" else None
        x = self._embed(tokens, where)
        # per cache length, once per step: the slot this token goes to and the valid slots
        slots = {n: where % n for n in set(cache.lengths)}
        masks = {n: (cache.slot_index[n] <= pos).view(1, 1, 1, n) for n in set(cache.lengths)}
        for index, layer in enumerate(self.layers):
            length = cache.lengths[index]

            def attend(n, index=index, layer=layer, length=length):
                q, k, v = self._qkv(n, layer, cos, sin)  # q [B, 1, h, d], k/v [B, 1, g, d]
                cache.k[index].index_copy_(2, slots[length], k.transpose(1, 2))
                cache.v[index].index_copy_(2, slots[length], v.transpose(1, 2))
                # q [B, h, 1, d] against the g KV heads (GQA inside the kernel, no repeat); the mask
                # hides the slots not yet written. Measured on H200 this beat q grouped as
                # [B, g, h/g, d] by up to 3x at batch 1 and long contexts.
                out = F.scaled_dot_product_attention(
                    q.transpose(1, 2),
                    cache.k[index],
                    cache.v[index],
                    attn_mask=masks[length],
                    enable_gqa=True,
                )
                return out.transpose(1, 2).reshape(b, 1, self.q_width)

            x = self._block(x, layer, attend)
        return self._logits(x[:, -1])
