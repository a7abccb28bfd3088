"""The measure loop's decoder sharded Megatron-style over ``tp`` ranks, and how they run.

Sharding (rank r of tp; h heads, g KV heads, I intermediate, V vocab, d head_dim):

* fused q/k/v, column-parallel: rank r holds query heads [r h/tp, (r+1) h/tp) and the KV
  heads they read: g/tp of them when tp divides g, else one, KV head r // (tp/g),
  replicated on tp/g ranks (as :func:`capcalc.model.parallel.kv_heads_per_gpu` counts);
* o_proj, row-parallel: the rank's h/tp x d input columns; the partial outputs are summed
  by one all-reduce [B, T, H] (its bias added on rank 0 only, so the sum holds it once);
* MLP, gate/up column-parallel (the rank's I/tp rows of each), down row-parallel, one
  all-reduce; MoE layers: the router replicated (every rank routes alike), every expert
  split along its intermediate dimension as a dense MLP is, shared experts likewise,
  one all-reduce for routed + shared;
* embedding replicated (a decode step gathers B rows of it); LM head vocab-parallel:
  rank r computes logits for vocab rows [r V', (r+1) V'), V' = ceil(V/tp) (zero rows pad
  the last shard), and one all-gather assembles [B, V] on every rank, so every rank takes
  the same argmax.

That is two all-reduces per layer (one for Falcon-style parallel blocks would fuse them;
this loop keeps two, as :func:`capcalc.perf.latency.allreduce_s` counts) and one
all-gather per step. ``collectives = False`` runs the same shards without any of them
(each rank's step alone), which is how the time of the collectives is measured: the step
with them minus the step without.

Launch: :func:`launch` spawns tp processes itself (``torch.multiprocessing.spawn``, a free
local TCP port, gloo on the CPU, NCCL on GPUs ``cuda:first .. cuda:first+tp-1``), or runs
inside each process of ``torchrun --nproc-per-node N`` (``RANK``/``WORLD_SIZE`` set), where
rank 0 returns the result and the others ``None``. The processes must start the same job:
rank 0's is broadcast.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from capcalc.core.errors import CapcalcError
from capcalc.measure import require_torch
from capcalc.measure.model import DecoderModel
from capcalc.measure.run import Runner
from capcalc.model.parallel import check_tp, kv_heads_per_gpu
from capcalc.schema.profiles import ModelProfile

#: how long a rank waits in a collective for the others before giving up (a rank that
#: died leaves the rest blocked; 10 min is far above any step or all-reduce timed here)
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


# --------------------------------------------------------------------------- shapes (no torch)


def shard_profile(profile: ModelProfile, tp: int) -> ModelProfile:
    """The profile of one rank's shard: heads, KV heads and intermediate widths divided
    by ``tp`` (KV heads at least 1); vocab, hidden size and depth unchanged."""
    check_tp(profile, tp)
    widths = {"intermediate_size": profile.intermediate_size}
    if profile.moe is not None:
        widths["expert_intermediate_size"] = profile.moe.expert_intermediate_size
        widths["shared_expert_intermediate_size"] = profile.moe.shared_expert_intermediate_size
    for name, width in widths.items():
        if width % tp:
            raise CapcalcError(f"{profile.name}: {name} {width} is not divisible by tp={tp}")
    if tp == 1:
        return profile
    moe = profile.moe
    if moe is not None:
        moe = replace(
            moe,
            expert_intermediate_size=moe.expert_intermediate_size // tp,
            shared_expert_intermediate_size=moe.shared_expert_intermediate_size // tp,
        )
    return replace(
        profile,
        name=f"{profile.name}@tp{tp}",
        num_attention_heads=profile.num_attention_heads // tp,
        num_kv_heads=kv_heads_per_gpu(profile, tp),
        intermediate_size=profile.intermediate_size // tp,
        moe=moe,
    )


def vocab_shard(vocab: int, tp: int) -> int:
    """Rows of the LM head per rank: ceil(V / tp)."""
    return -(-vocab // tp)


def kv_head_range(profile: ModelProfile, rank: int, tp: int) -> tuple[int, int]:
    """[first, end) of the KV heads rank ``rank`` holds."""
    per = kv_heads_per_gpu(profile, tp)
    if profile.num_kv_heads % tp == 0:
        return rank * per, (rank + 1) * per
    first = rank // (tp // profile.num_kv_heads)  # replicated: tp / g ranks share each head
    return first, first + 1


# --------------------------------------------------------------------------- the sharded model


class TPDecoderModel(DecoderModel):
    """Rank ``rank``'s shard of the decoder; :class:`DecoderModel`'s passes run on it as they
    are, with the collectives in :meth:`_reduce` and :meth:`_logits`.

    ``full``: slice this (unsharded, same-seed) model's weights, so that the shards compute
    exactly what it computes (the tests); ``None``: draw the shard's own random weights
    directly (what a measurement does: a 70B model never exists whole on one GPU)."""

    def __init__(
        self,
        profile: ModelProfile,
        dtype: str,
        device: str,
        rank: int,
        tp: int,
        process_group: Any = None,
        seed: int = 0,
        max_positions: int = 8192,
        full: DecoderModel | None = None,
    ):
        local = shard_profile(profile, tp)
        if full is None:
            super().__init__(local, dtype, device, seed=seed, max_positions=max_positions)
        else:
            self.__dict__.update(full.__dict__)  # rope tables, embedding, norms, dtype
            self.profile = local
            self.q_width = local.num_attention_heads * local.head_dim
            self.kv_width = local.num_kv_heads * local.head_dim
            self.group = local.num_attention_heads // local.num_kv_heads
        self.full_profile = profile
        self.rank, self.tp, self.process_group = rank, tp, process_group
        self.dist = self.torch.distributed
        self.collectives = True
        self.vocab_per_rank = vocab_shard(profile.vocab_size, tp)
        if full is not None:
            self.layers = [self._slice_layer(layer) for layer in full.layers]
        self.lm_head = self._head_rows(full.lm_head if full is not None else self.lm_head)
        if rank != 0:  # row-parallel biases: added once, by rank 0, before the sum
            for layer in self.layers:
                layer["bo"] = None
                for key in ("mlp", "shared"):
                    if key in layer:
                        layer[key]["down_b"] = None

    # ---------------------------------------------------------------- slicing (tests)

    def _head_rows(self, head):
        start = self.rank * self.vocab_per_rank
        rows = head[start : start + self.vocab_per_rank]
        if rows.shape[0] == self.vocab_per_rank:
            return rows if head.data_ptr() == self.embedding.data_ptr() else rows.clone()
        pad = self.torch.zeros(
            self.vocab_per_rank - rows.shape[0], head.shape[1], device=head.device, dtype=head.dtype
        )
        return self.torch.cat((rows, pad))

    def _slice_layer(self, layer: dict) -> dict:
        torch, p, r, tp = self.torch, self.full_profile, self.rank, self.tp
        d = p.head_dim
        heads = p.num_attention_heads // tp
        k0, k1 = kv_head_range(p, r, tp)
        q_all, kv_all = p.num_attention_heads * d, p.num_kv_heads * d
        rows = torch.cat(
            (
                torch.arange(r * heads * d, (r + 1) * heads * d),
                q_all + torch.arange(k0 * d, k1 * d),
                q_all + kv_all + torch.arange(k0 * d, k1 * d),
            )
        ).to(layer["wqkv"].device)
        out = dict(layer)
        out["wqkv"] = layer["wqkv"].index_select(0, rows)
        out["bqkv"] = None if layer["bqkv"] is None else layer["bqkv"].index_select(0, rows)
        out["wo"] = layer["wo"][:, r * heads * d : (r + 1) * heads * d].contiguous()
        for key in ("mlp", "shared"):
            if key in layer:
                out[key] = self._slice_mlp(layer[key])
        if "w13" in layer:
            out["w13"] = self._column_rows(layer["w13"], dim=1)
            width = layer["w2"].shape[2] // tp
            out["w2"] = layer["w2"][:, :, r * width : (r + 1) * width].contiguous()
        return out

    def _column_rows(self, weight, dim: int):
        """The rank's rows of a column-parallel up projection: of gate and of up separately
        when the MLP is gated (they are stacked [gate; up] and chunked in two)."""
        torch, r, tp = self.torch, self.rank, self.tp
        parts = weight.chunk(2, dim=dim) if self.full_profile.mlp == "gated" else (weight,)
        pieces = [part.narrow(dim, r * part.shape[dim] // tp, part.shape[dim] // tp) for part in parts]
        return torch.cat(pieces, dim=dim).contiguous()

    def _slice_mlp(self, w: dict) -> dict:
        r, tp = self.rank, self.tp
        width = w["down"].shape[1] // tp
        return {
            "up": self._column_rows(w["up"], dim=0),
            "up_b": None if w["up_b"] is None else self._column_rows(w["up_b"], dim=0),
            "down": w["down"][:, r * width : (r + 1) * width].contiguous(),
            "down_b": w["down_b"],
        }

    # ---------------------------------------------------------------- collectives

    def _reduce(self, x):
        """Sum the row-parallel partial outputs [B, T, H] over the ranks (in place)."""
        if self.collectives:
            self.dist.all_reduce(x, group=self.process_group)
        return x

    def _logits(self, x):
        """Vocab-parallel head: local logits [..., V'] all-gathered into [..., V] (fp32)."""
        x = self._norm(x, self.final_norm)
        local = self.torch.nn.functional.linear(x, self.lm_head)
        if not self.collectives:
            return local.float()
        lead = local.shape[:-1]
        flat = local.reshape(-1, self.vocab_per_rank).contiguous()
        gathered = self.torch.empty((self.tp * flat.shape[0], flat.shape[1]), device=x.device, dtype=x.dtype)
        all_gather = getattr(self.dist, "all_gather_single", None) or self.dist.all_gather_into_tensor
        all_gather(gathered, flat, group=self.process_group)
        full = gathered.view(self.tp, flat.shape[0], -1).permute(1, 0, 2).reshape(*lead, -1)
        return full[..., : self.full_profile.vocab_size].float()


class TPRunner(Runner):
    """:class:`capcalc.measure.run.Runner` (the same timing, CUDA graphs where the
    backend allows) on rank ``rank``'s shard."""

    def __init__(self, model, dtype, info, max_positions, rank, tp, process_group=None, seed=0):
        self.torch = require_torch()
        self.info = info
        with self.torch.inference_mode():
            self.model = TPDecoderModel(
                model, dtype, info.device, rank, tp, process_group, seed=seed, max_positions=max_positions
            )
        from capcalc.measure.device import synchronize

        synchronize(info.device)


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Rank:
    """Where this process sits: its rank, the world, its device and backend."""

    rank: int
    world: int
    device: str
    backend: str
    launcher: str  # spawn | torchrun


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def free_port() -> int:
    """A TCP port free on this host now (bound to port 0 and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_device(device: str) -> str:
    """This process's device: under torchrun, ``cuda:N`` is the first GPU of the host and
    each process takes cuda:N+LOCAL_RANK; otherwise ``device`` itself (rank 0's)."""
    if not device.startswith("cuda") or not launched_by_torchrun():
        return device
    first = int(device.split(":")[1]) if ":" in device else 0
    return f"cuda:{first + int(os.environ['LOCAL_RANK'])}"


def _devices(device: str, tp: int) -> tuple[str, int]:
    """(kind, GPU index of this process) from its device (cpu, cuda:N); spawning, N is
    rank 0's and the ranks take cuda:N .. cuda:N+tp-1."""
    torch = require_torch()
    if device == "cpu":
        return "cpu", 0
    first = int(device.split(":")[1]) if ":" in device else 0
    count = torch.cuda.device_count()
    if launched_by_torchrun():
        if first >= count:
            raise CapcalcError(f"torchrun process on {device}, but torch sees {count} GPUs on this host")
        return "cuda", first
    if first + tp > count:
        raise CapcalcError(
            f"--tp {tp} from {device} needs GPUs cuda:{first}..cuda:{first + tp - 1}, but torch sees {count}"
        )
    return "cuda", first


def _init(rank: int, world: int, kind: str, first: int, init_method: str, launcher: str) -> Rank:
    torch = require_torch()
    if kind == "cuda":
        device = f"cuda:{first + rank}"
        torch.cuda.set_device(first + rank)
        backend = "nccl"
    else:
        device, backend = "cpu", "gloo"
        # the ranks share the host's cores: one share each, not every rank all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    kwargs = {"device_id": torch.device(device)} if kind == "cuda" else {}
    torch.distributed.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT, **kwargs
    )
    return Rank(rank, world, device, backend, launcher)


def _entry(rank, world, kind, first, init_method, launcher, work, job, result_path):
    """One process: join the group, take rank 0's job, run ``work(where, job)``; rank 0
    writes what it returns (or the one-line error) to ``result_path``."""
    torch = require_torch()
    where = _init(rank, world, kind, first, init_method, launcher)
    try:
        box = [job]
        torch.distributed.broadcast_object_list(box, src=0)
        outcome = ("ok", work(where, box[0]))
    except CapcalcError as exc:
        outcome = ("error", exc.message)
    if rank == 0 and result_path:
        Path(result_path).write_bytes(pickle.dumps(outcome))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return outcome


def launch(work: Callable[[Rank, Any], Any], job: Any, tp: int, device: str) -> tuple[Any, str] | None:
    """Run ``work(rank, job)`` on ``tp`` ranks; (rank 0's result, launcher) where this is
    rank 0 or the spawning parent, ``None`` on the other ranks of a torchrun launch.
    ``device``: this process's (:func:`own_device`).
    ``work`` must be a module-level function (the spawned processes import it)."""
    torch = require_torch()
    kind, first = _devices(device, tp)
    if launched_by_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if world != tp:
            raise CapcalcError(
                f"--tp {tp} but torchrun started {world} processes: give --nproc-per-node {tp}"
            )
        rank = int(os.environ["RANK"])
        # _entry places rank r on GPU first + r: this process's own GPU is ``first`` here
        status, value = _entry(rank, world, kind, first - rank, "env://", "torchrun", work, job, None)
        if status == "error":
            raise CapcalcError(value, exit_code=1)
        return (value, "torchrun") if rank == 0 else None
    with tempfile.TemporaryDirectory(prefix="capcalc-tp-") as tmp:
        result = Path(tmp) / "rank0.pickle"
        init_method = f"tcp://127.0.0.1:{free_port()}"
        try:
            torch.multiprocessing.spawn(
                _entry,
                args=(tp, kind, first, init_method, "spawn", work, job, str(result)),
                nprocs=tp,
                join=True,
            )
        except Exception as exc:  # a rank died: its traceback's last line says why
            if not result.exists():
                lines = [line for line in str(exc).strip().splitlines() if line.strip()]
                raise CapcalcError(
                    f"a tensor-parallel rank failed: {lines[-1] if lines else exc}", exit_code=1
                ) from None
        status, value = pickle.loads(result.read_bytes())
    if status == "error":
        raise CapcalcError(value, exit_code=1)
    return value, "spawn"
