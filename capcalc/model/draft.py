"""Speculative decoding's draft: the weights it adds, the KV layers it caches, and the
model one draft step runs.

Two kinds of draft, as vLLM runs them (``--speculative-config``):

* a draft given as its own profile (an EAGLE-3 head, or a small model of the same
  tokenizer): its weights are its profile's, at its own checkpoint dtype and the target's
  tensor parallelism (vLLM shards an EAGLE drafter over the target's tp ranks), and each of
  its attention layers caches KV. capcalc counts the whole profile, its embedding and LM
  head included (an EAGLE head that borrows the target's embedding is overstated by it);
* the target's own multi-token-prediction layers (``method: mtp``; DeepSeek-V3, GLM-4.5,
  Qwen3-Next, ``num_nextn_predict_layers`` / ``mtp_num_hidden_layers``): each one decoder
  layer of the target's last layer's kind plus ``enorm``, ``hnorm``, ``shared_head.norm``
  (3 hidden) and ``eh_proj`` (2 hidden x hidden), sharing the target's embedding and LM
  head::

      mtp_params = layers x (one layer + 3 hidden + 2 hidden^2)

  When the target's profile already counts exactly these as its ``extra_params`` (GLM-4.6),
  they are in the target's weights and not added again. K > layers speculative tokens
  reuse the MTP layers (vLLM runs the one DeepSeek MTP layer K times), so the KV layers
  stay ``layers``.

vLLM gives the draft's attention layers KV cache specs of their own kind beside the target's
(``get_kv_cache_spec`` collects every ``Attention`` layer, the drafter's included); the
grouping then runs over target and draft layers together, so the draft's KV shares the
target's block pool and its block tables (vLLM PR 29303 "the lone draft layer flows through
the normal per-spec grouping and reuses an existing target group"; PR 48691). That needs the
draft's page to equal the target's: a draft whose attention caches a different number of
bytes per token is refused here (vLLM would re-size its block to unify the page sizes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from capcalc.core.errors import CapcalcError
from capcalc.model.layers import LayerSpec, layer_specs
from capcalc.model.params import count_params
from capcalc.model.weights import gpu_weights, weight_bytes_per_gpu
from capcalc.schema.deployment import Deployment
from capcalc.schema.profiles import ExtraParams, ModelProfile

#: the method names of :func:`make_draft`'s ``draft`` argument that mean the target's MTP layers
MTP = "mtp"


@dataclass(frozen=True)
class Draft:
    """The draft of a speculative deployment (module docstring)."""

    #: what one draft step runs, as a model (MTP: the target's MTP layers with its embedding and head)
    model: ModelProfile
    #: 'draft_model' (a profile of its own) | 'mtp' (the target's multi-token-prediction layers)
    method: str
    #: parameters of ``model`` held in memory for the draft (MTP: less the shared embedding and head)
    params: int
    #: whether the target's profile already counts them (its extra_params are the MTP layers)
    counted_in_target: bool = False

    @property
    def name(self) -> str:
        return self.model.name

    def kv_layers(self) -> tuple[LayerSpec, ...]:
        """The draft's layers that cache KV, in order (they join the target's KV groups)."""
        return tuple(spec for spec in layer_specs(self.model) if spec.caches)

    def weight_bytes_per_gpu(self, target: ModelProfile, deployment: Deployment) -> float:
        """Weight bytes the draft adds to one GPU of the last pipeline stage (0 when the
        target's profile already holds them). A draft model keeps its own checkpoint dtype
        (``auto``); MTP layers are stored in the target's weight dtype."""
        if self.counted_in_target:
            return 0.0
        d = replace(deployment, pp=1)
        if self.method != MTP:
            return weight_bytes_per_gpu(
                self.model, replace(d, weight_dtype="auto", quantize_embeddings=False)
            )[0].bytes
        whole = weight_bytes_per_gpu(self.model, d)[0].bytes
        g = gpu_weights(self.model, d)
        shared = g.embedding * g.widths.embedding + (
            0.0 if self.model.tie_word_embeddings else g.lm_head * g.widths.embedding
        )
        return whole - shared


def mtp_model(target: ModelProfile, layers: int = 1) -> ModelProfile:
    """The target's ``layers`` MTP modules as a model (module docstring): ``layers`` decoder
    layers of its last layer's kind (an MoE one when the target's last layer is), the
    target's embedding and LM head, and ``eh_proj`` with ``enorm`` and ``hnorm`` (and the
    shared_head norms past the first, whose norm is the model's final norm) as extra
    parameters."""
    if layers < 1:
        raise CapcalcError(f"mtp layers must be at least 1, got {layers}", parameter="draft_model")
    h = target.hidden_size
    last = target.layer_types[-1] if target.layer_types else "full"
    if last not in ("full", "sliding", "chunked"):
        raise CapcalcError(
            f"{target.name}'s last layer is {last!r}: capcalc's MTP draft is one attention layer of "
            "the target's shape",
            parameter="draft_model",
        )
    moe = target.moe
    if moe is not None:
        moe = (
            replace(moe, first_dense_layers=0, layer_step=1)
            if target.is_moe_layer(target.num_layers - 1)
            else None
        )
    extra = layers * (2 * h * h + 2 * h) + (layers - 1) * h
    return replace(
        target,
        name=f"{target.name}-mtp",
        display_name=f"{target.display_name or target.name} MTP",
        aliases=(),
        num_layers=layers,
        layer_types=(last,) * layers,
        mixer_only=False,
        moe=moe,
        params_official=None,
        extra_params=ExtraParams(
            extra,
            f"eh_proj (2 x {h} -> {h}), enorm and hnorm of {layers} MTP module(s)",
            "the DeepSeek-V3 MTP module layout (capcalc.model.draft)",
        ),
        notes="",
        path="",
    )


def mtp_params(target: ModelProfile, layers: int = 1) -> int:
    """Parameters of the target's ``layers`` MTP modules, the shared embedding and head left out."""
    p = count_params(mtp_model(target, layers))
    return p.total - p.embedding - p.lm_head


def make_draft(target: ModelProfile, draft: ModelProfile | str, mtp_layers: int = 1) -> Draft:
    """The draft of ``target``: ``draft`` a profile (an EAGLE head, a small model), or
    ``'mtp'`` for the target's own ``mtp_layers`` MTP layers. Refuses a draft whose vocabulary
    is larger than the target's (:func:`capcalc.serving.fit.fit` refuses one whose KV page
    differs from the target's)."""
    if isinstance(draft, str):
        if draft != MTP:
            raise CapcalcError(
                f"draft_model must be a model profile or {MTP!r}, got {draft!r}", parameter="draft_model"
            )
        model = mtp_model(target, mtp_layers)
        params = mtp_params(target, mtp_layers)
        counted = target.extra_params is not None and target.extra_params.count == params
        return Draft(model, MTP, params, counted)
    if draft.vocab_size > target.vocab_size:
        raise CapcalcError(
            f"draft {draft.name}'s vocabulary ({draft.vocab_size:,}) is larger than {target.name}'s "
            f"({target.vocab_size:,}): a draft proposes the target's tokens",
            parameter="draft_model",
        )
    return Draft(draft, "draft_model", count_params(draft).total)
