"""The Python API: one :class:`Session` for kv, fit, roofline, latency, plan and measure.

    from capcalc import Session

    s = Session()
    s.kv("llama-3-70b", ctx=8192).kv_bytes_per_sequence
    s.fit("llama-3-70b", "h100-sxm", tp=2, max_model_len=8192).fits
    s.latency("llama-3-8b", "h100-sxm", prompt_tokens=1000, output_tokens=200).ttft_s

A session reads the profiles (the shipped ones, ``profiles`` and ``$CAPCALC_PROFILES``)
and the calibration once, rereading them when a file changes, and resolves each model
name (profile, checkpoint folder or Hugging Face id) once. Models and GPUs are given by
name or as profile objects; the deployment as a :class:`~capcalc.schema.deployment.Deployment`
or its fields as keywords (``tp=2, weight_dtype="int4"``). Every result has
``.record()``: the flat dict the CLI's ``--json`` prints.

Nothing here prints. What a user should know about how a result was reached (a profile
overridden, a Hub read, the calibration used, a prediction vLLM would not serve as
asked) is appended to :attr:`Session.notes`, each message once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capcalc.core.errors import CapcalcError, Note
from capcalc.core.inputs import excerpt
from capcalc.core.records import flat_record
from capcalc.schema.deployment import FIELDS, Deployment
from capcalc.schema.profiles import HardwareProfile, ModelProfile
from capcalc.sources.calibration import load_calibration
from capcalc.sources.dirs import profile_dirs
from capcalc.sources.registry import Registry
from capcalc.sources.resolve import ModelResolver

# The calculation modules are imported by the methods that use them, so that a session
# (and the CLI's start-up) pays only for the calculation it runs.
if TYPE_CHECKING:
    from capcalc.model.kv import KVResult
    from capcalc.perf.efficiency import ResolvedEfficiency
    from capcalc.perf.latency import LatencyResult
    from capcalc.perf.roofline import RooflineResult
    from capcalc.serving.fit import FitResult, RequestFit
    from capcalc.serving.plan import PlanResult, SLOs, Traffic
    from capcalc.sources.served import CalibrationReport

__all__ = ["Deployment", "LatencyReport", "PlanReport", "RooflineReport", "ServingReport", "Session"]

# Shared by every session of the process (a sweep or a test suite makes many), keyed by
# the state of the files read, so that an edited profile is read again.
_REGISTRIES: dict[tuple, Registry] = {}
_CALIBRATIONS: dict[tuple, dict] = {}
_RESOLVERS: dict[int, ModelResolver] = {}


def _files_state(dirs: list[Path]) -> tuple:
    """(path, inode, mtime, size) of every YAML file capcalc would read from ``dirs`` (the
    inode: an atomic rewrite within the clock's granularity may keep mtime and size)."""
    state = []
    for path in dirs:
        if path.is_dir():
            for file in sorted(path.iterdir()):
                if file.suffix in (".yaml", ".yml"):
                    try:
                        stat = file.stat()
                    except OSError:  # a dangling link or a loop: the loader says so, in one line
                        state.append((str(file), None, None, None))
                        continue
                    state.append((str(file), stat.st_ino, stat.st_mtime_ns, stat.st_size))
        else:
            state.append((str(path), None, None, None))
    return tuple(state)


def _split_deployment(deployment: Deployment | None, kwargs: dict[str, Any]) -> Deployment:
    """``deployment`` with the deployment fields of ``kwargs`` (removed from it) applied."""
    fields = {k: kwargs.pop(k) for k in list(kwargs) if k in FIELDS}
    return Deployment.of(deployment, **fields)


class _ReadsThrough:
    """A report whose ``result``'s fields read through: ``report.ttft_s`` is
    ``report.result.ttft_s``."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.result, name)


@dataclass(frozen=True)
class LatencyReport(_ReadsThrough):
    """A latency prediction, the efficiency it assumed (each parameter's value and source)
    and whether vLLM would serve it (:func:`capcalc.serving.fit.request_fits`: ``batch``
    requests of prompt + output tokens). The prediction's fields read through: ``report.ttft_s``."""

    result: LatencyResult
    efficiency: ResolvedEfficiency
    serving: RequestFit | None = None

    def record(self) -> dict:
        """The CLI's ``latency --json`` record: the prediction, then ``assume_*`` and
        ``efficiency_source``, then ``fits_in_memory`` and ``within_max_context``."""
        serving = self.serving.record() if self.serving is not None else {}
        return flat_record(self.result, **self.efficiency.as_record(), **serving)


@dataclass(frozen=True)
class RooflineReport(_ReadsThrough):
    """A roofline and whether vLLM would hold its requests (:func:`capcalc.serving.fit.request_fits`:
    ``batch`` sequences of ``max(ctx, prompt_tokens)`` tokens, the longer of the decode step's
    context and the prefill's prompt). The roofline's fields read through: ``report.critical_batch``."""

    result: RooflineResult
    serving: RequestFit | None = None

    def record(self) -> dict:
        """The CLI's ``roofline --json`` record: the roofline's, then ``fits_in_memory`` and
        ``within_max_context``."""
        record = self.result.record()
        if self.serving is not None:
            record.update(self.serving.record())
        return record


@dataclass(frozen=True)
class PlanReport:
    """Every candidate planned, best first; rejected ones last."""

    model: str
    traffic: Traffic
    slos: SLOs
    results: tuple[PlanResult, ...]

    @property
    def feasible(self) -> tuple[PlanResult, ...]:
        return tuple(r for r in self.results if r.feasible)

    @property
    def best(self) -> PlanResult | None:
        return next(iter(self.feasible), None)

    def records(self) -> list[dict]:
        """One record per candidate, as ``plan --json`` prints them."""
        return [r.record() for r in self.results]

    def __iter__(self):
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)


@dataclass(frozen=True)
class ServingReport(_ReadsThrough):
    """One replica under load (:class:`capcalc.serving.engine.ServingResult`, whose fields
    read through: ``report.ttft_p90_s``) and what it assumed."""

    model: str
    gpu: str
    deployment: Deployment
    weight_dtype: str
    result: Any  # ServingResult
    serving: Any  # capcalc.sources.calibration.ResolvedServing
    kv_dtype: str | None = None  # resolved (``auto`` read as the serving dtype)
    compute_dtype: str | None = None  # resolved (the dtype whose peak bounds the products)
    output_spread: float | None = None  # the output-length spread simulated (0: every request O)
    #: the engine's memory knob that sized the KV pool (:func:`capcalc.serving.engine.memory_fraction`)
    memory_fraction: float | None = None
    prompt_spread: float = 0.0  # the prompt-length spread simulated (0: every prompt P)

    def record(self) -> dict:
        """``latency --concurrency/--rps --json``: the deployment, the prediction, then
        ``assume_*`` and ``efficiency_source``."""
        from dataclasses import asdict

        d = self.deployment
        result = asdict(self.result)
        head = {
            "model": self.model,
            "gpu": self.gpu,
            "engine": result.pop("engine"),
            "tp": d.tp,
            "weight_dtype": self.weight_dtype,
            "kv_dtype": self.kv_dtype or d.kv_dtype,
            "compute_dtype": self.compute_dtype or d.compute_dtype,
        }
        return flat_record(
            head,
            **result,
            output_spread=self.output_spread,
            prompt_spread=self.prompt_spread,
            memory_fraction=self.memory_fraction,
            seq_step_overhead_s=self.serving.config.seq_step_overhead_s,
            stream_token_host_s=self.serving.config.stream_token_host_s,
            recv_interval=self.serving.config.recv_interval,
            batch_wait_iters=self.serving.config.batch_wait_iters,
            batch_wait_max_tokens_ratio=self.serving.config.batch_wait_max_tokens_ratio,
            **self.serving.efficiency.as_record(),
            efficiency_source=self.serving.source,
        )


def _fraction(value: Any, parameter: str = "memory_fraction") -> float | None:
    """An engine memory share: None, or a number in (0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise CapcalcError(
            f"{parameter} must be a number above 0 and at most 1, got {value!r}", parameter=parameter
        )
    return float(value)


def _spread(value: Any, parameter: str = "output_spread") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise CapcalcError(
            f"{parameter} must be a number from 0 up to (not including) 1, got {value!r}",
            parameter=parameter,
        )
    return float(value)


def _duration(value: Any, parameter: str) -> float:
    from capcalc.core.units import parse_duration

    try:
        seconds = parse_duration(value, parameter)
    except CapcalcError as exc:
        raise CapcalcError(exc.message, parameter=parameter) from None
    if not seconds >= 0 or seconds == float("inf"):
        raise CapcalcError(f"{parameter} must be a duration of 0 or more, got {value!r}", parameter=parameter)
    return seconds


class Session:
    """Profiles, calibration and resolved models, read once; the calculations as methods.

    ``profiles``: extra directories of model/GPU profiles (a same-named one wins over a
    shipped one). ``use_calibration`` False ignores ``calibration.yaml`` (efficiency then
    comes from overrides, the GPU profile and built-in defaults)."""

    def __init__(self, profiles: Iterable[str | Path] = (), use_calibration: bool = True):
        self.profiles = tuple(Path(p) for p in profiles)
        self.use_calibration = use_calibration
        #: what a user should know about the results so far, in order, each once
        self.notes: list[Note] = []

    # ------------------------------------------------------------------ sources

    def note(self, note: Note | CapcalcError | str) -> None:
        """Add a note (an error that did not stop the work, e.g. a point refused, too)."""
        if isinstance(note, CapcalcError):
            note = Note(note.message, note.parameter, note.template)
        elif not isinstance(note, Note):
            note = Note(str(note))
        if note not in self.notes:
            self.notes.append(note)

    def _key(self) -> tuple:
        dirs = profile_dirs(self.profiles)
        return (tuple(str(d) for d in dirs), _files_state(dirs))

    @property
    def registry(self) -> Registry:
        """The profiles in play, loaded once per process and reloaded when a file changes."""
        key = self._key()
        if key not in _REGISTRIES:
            _REGISTRIES.clear()
            _RESOLVERS.clear()
            _REGISTRIES[key] = Registry.load([str(d) for d in self.profiles])
        registry = _REGISTRIES[key]
        for message in registry.notes:
            self.note(message)
        return registry

    def calibration(self) -> dict | None:
        """The calibration files' entries (None with ``use_calibration=False``); shared: do not modify."""
        if not self.use_calibration:
            return None
        key = self._key()
        if key not in _CALIBRATIONS:
            _CALIBRATIONS.clear()
            _CALIBRATIONS[key] = load_calibration(self.profiles)
        return _CALIBRATIONS[key]

    def model(self, model: str | ModelProfile) -> ModelProfile:
        """A model profile by name, alias, checkpoint folder or Hub id (or the profile itself)."""
        if isinstance(model, ModelProfile):
            return model
        registry = self.registry
        resolver = _RESOLVERS.setdefault(id(registry), ModelResolver(registry))
        resolved = resolver.resolve(model)
        for message in resolved.notes:
            self.note(message)
        return resolved.profile

    def gpu(self, gpu: str | HardwareProfile) -> HardwareProfile:
        """A GPU profile by name or alias (or the profile itself)."""
        return gpu if isinstance(gpu, HardwareProfile) else self.registry.gpu(gpu)

    def gpus(self, names: Sequence[str | HardwareProfile] | None = None) -> list[HardwareProfile]:
        """The GPUs named, or every known one (sorted by name)."""
        if names is None:
            registry = self.registry
            return [registry.gpus[n] for n in sorted(registry.gpus)]
        return [self.gpu(g) for g in names]

    def efficiency(
        self, gpu: str | HardwareProfile, overrides: dict[str, Any] | None = None
    ) -> ResolvedEfficiency:
        """Each efficiency parameter for ``gpu``: override > calibration > profile > default."""
        device = self.gpu(gpu)
        from capcalc.perf.efficiency import resolve_efficiency

        resolved = resolve_efficiency(device, overrides, self.calibration())
        if resolved.calibrated:
            when = f" measured {resolved.calibration_date}" if resolved.calibration_date else ""
            where = resolved.calibration_path or "calibration.yaml"
            self.note(f"using the calibration of {device.name}{when} from {where}")
        return resolved

    # ------------------------------------------------------------------ calculations

    def kv(
        self,
        model: str | ModelProfile,
        ctx: int | None = None,
        batch: int = 1,
        memory_bytes: float | None = None,
        deployment: Deployment | None = None,
        image_tokens: int = 0,
        **fields,
    ) -> KVResult:
        """KV-cache size of ``batch`` sequences of ``ctx`` tokens (default: the model's max
        context); with ``memory_bytes`` per GPU, how many sequences fit in it;
        ``image_tokens`` per sequence in the cross-attention layers of a model that has them."""
        from capcalc.model.kv import kv_cache

        profile = self.model(model)
        d = Deployment.of(deployment, **fields)
        return kv_cache(
            profile,
            ctx=ctx if ctx is not None else profile.max_context,
            batch=batch,
            kv_dtype=d.kv_dtype,
            tp=d.tp,
            memory_bytes=memory_bytes,
            state_dtype=d.mamba_ssm_cache_dtype,
            image_tokens=image_tokens,
        )

    def fit(
        self,
        model: str | ModelProfile,
        gpu: str | HardwareProfile | None = None,
        memory_bytes: float | None = None,
        deployment: Deployment | None = None,
        concurrency: float | None = None,
        draft_model: str | ModelProfile | None = None,
        **settings,
    ) -> FitResult:
        """vLLM's memory fit on ``gpu`` (its reported memory, else its datasheet size) or on
        ``memory_bytes`` per GPU. ``settings``: the fields of :class:`FitRequest`
        (``max_model_len``, ``gpu_memory_utilization``, ``n_gpus``...) and of the deployment.
        ``tp="auto"`` (or ``n_gpus`` without ``tp``) searches for the smallest valid tp that
        fits, and with ``concurrency`` serves that many sequences. ``draft_model``: a
        speculative draft (a profile name, or ``"mtp"`` for the model's own MTP layer),
        whose weights and KV layers the fit holds too (:mod:`capcalc.model.draft`)."""
        from capcalc.serving.fit import FitRequest, fit, memory_of, search_tp

        profile = self.model(model)
        if draft_model is not None:
            settings["draft"] = self._draft(profile, draft_model)
        if (gpu is None) == (memory_bytes is None):
            raise CapcalcError("give exactly one of gpu or memory_bytes", parameter=("gpu", "memory_bytes"))
        if gpu is not None:
            device = self.gpu(gpu)
            memory, source, gpu_name = *memory_of(device), device.name
        else:
            memory, source, gpu_name = memory_bytes, "flag", ""
        tp = settings.pop("tp", None)
        search = tp == "auto" or (tp is None and settings.get("n_gpus") is not None)
        if not search and tp is not None:
            settings["tp"] = tp
        d = _split_deployment(deployment, settings)
        if concurrency is not None and concurrency <= 0:
            raise CapcalcError(f"concurrency must be positive, got {concurrency:g}", parameter="concurrency")
        req = FitRequest(memory_bytes=memory, memory_source=source, gpu=gpu_name, deployment=d, **settings)
        if not search:
            if concurrency is not None:
                raise CapcalcError(
                    "concurrency needs a tp search: tp 'auto' or n_gpus", parameter=("concurrency", "n_gpus")
                )
            return fit(profile, req)
        result, found = search_tp(profile, req, concurrency)
        if not found:
            goal = f"serves {concurrency:g} sequences" if concurrency is not None else "fits"
            limit = f" within {req.n_gpus} GPUs" if req.n_gpus else ""
            self.note(f"no valid tp{limit} {goal}; showing the largest, tp={result.tp}")
        return result

    def roofline(
        self,
        model: str | ModelProfile,
        gpu: str | HardwareProfile,
        batch: int = 1,
        ctx: int = 1024,
        prompt_tokens: int = 1024,
        deployment: Deployment | None = None,
        **fields,
    ) -> RooflineReport:
        """The datasheet roofline of a decode step and a prefill (:func:`capcalc.perf.roofline.roofline`),
        and whether vLLM would hold ``batch`` sequences of ``max(ctx, prompt_tokens)`` tokens."""
        from capcalc.perf.roofline import roofline
        from capcalc.serving.fit import request_fits

        profile, device = self.model(model), self.gpu(gpu)
        d = Deployment.of(deployment, **fields)
        result = roofline(profile, device, batch=batch, ctx=ctx, prompt_tokens=prompt_tokens, deployment=d)
        return RooflineReport(result, request_fits(profile, device, d, batch, max(ctx, prompt_tokens)))

    def _draft(self, target: ModelProfile, draft_model: str | ModelProfile):
        """The speculative draft of ``target``: ``"mtp"`` (its own MTP layer) or a profile."""
        from capcalc.model.draft import MTP, make_draft

        if isinstance(draft_model, str) and draft_model.lower() == MTP:
            draft = make_draft(target, MTP)
            if not draft.counted_in_target:
                self.note(
                    f"{target.name}'s profile does not count an MTP layer: the draft is one MTP module of the "
                    "DeepSeek-V3 layout (a layer of its last layer's shape plus eh_proj); capcalc cannot check "
                    "that the checkpoint ships one"
                )
            return draft
        return make_draft(target, self.model(draft_model))

    def latency(
        self,
        model: str | ModelProfile,
        gpu: str | HardwareProfile,
        prompt_tokens: int = 1024,
        output_tokens: int = 256,
        batch: int = 1,
        deployment: Deployment | None = None,
        efficiency: dict[str, Any] | None = None,
        spec_tokens: int | None = None,
        acceptance: float | None = None,
        draft_model: str | ModelProfile | None = None,
        **fields,
    ) -> LatencyReport:
        """TTFT, inter-token latency and throughput at achievable rates. ``efficiency``:
        overrides by parameter name (``{"step_overhead_s": "0.3 ms"}``); keywords named as
        an efficiency parameter are overrides too. Whether vLLM would serve the batch
        (:func:`capcalc.serving.fit.request_fits`) is in the record; when it would not, a note says why.
        ``spec_tokens`` K, ``acceptance`` A and ``draft_model`` (a profile name or ``"mtp"``)
        together: speculative decoding (:func:`capcalc.perf.latency.predict_speculative_latency`)."""
        from capcalc.perf.efficiency import PARAMETERS
        from capcalc.perf.latency import predict_latency, predict_speculative_latency
        from capcalc.serving.fit import request_fits

        overrides = dict(efficiency or {})
        overrides.update({k: fields.pop(k) for k in list(fields) if k in PARAMETERS})
        profile, device = self.model(model), self.gpu(gpu)
        d = Deployment.of(deployment, **fields)
        resolved = self.efficiency(device, overrides)
        spec = {"spec_tokens": spec_tokens, "acceptance": acceptance, "draft_model": draft_model}
        given = [k for k, v in spec.items() if v is not None]
        if given and len(given) < len(spec):
            missing = [k for k in spec if k not in given]
            raise CapcalcError(
                parameter=tuple(spec),
                template=f"speculative decoding takes {{spec_tokens}}, {{acceptance}} and {{draft_model}} "
                f"together: {{{missing[0]}}} is missing",
            )
        draft = self._draft(profile, draft_model) if given else None
        if given:
            result = predict_speculative_latency(
                profile,
                device,
                prompt_tokens=prompt_tokens,
                output_tokens=output_tokens,
                spec_tokens=spec_tokens,
                acceptance=acceptance,
                draft=draft,
                batch=batch,
                deployment=d,
                efficiency=resolved,
            )
        else:
            result = predict_latency(
                profile,
                device,
                prompt_tokens=prompt_tokens,
                output_tokens=output_tokens,
                batch=batch,
                deployment=d,
                efficiency=resolved,
            )
        serving = request_fits(profile, device, d, batch, prompt_tokens + output_tokens, draft)
        if serving.note is not None:
            self.note(serving.note)
        return LatencyReport(result, resolved, serving)

    def plan(
        self,
        model: str | ModelProfile,
        requests_per_s: float,
        prompt_tokens: int,
        output_tokens: int,
        gpus: Sequence[str | HardwareProfile] | None = None,
        tps: Sequence[int] | None = None,
        weight_dtypes: Sequence[str] = ("auto",),
        kv_dtypes: Sequence[str] = ("auto",),
        ttft_s: float | str | None = None,
        itl_s: float | str | None = None,
        e2e_s: float | str | None = None,
        prices: dict[str, float] | None = None,
        deployment: Deployment | None = None,
        efficiency: dict[str, Any] | None = None,
        gpu_memory_utilization: float | None = None,
        max_num_seqs: int | None = None,
        tpot_s: float | str | None = None,
        engine: str = "vllm",
        memory_fraction: float | None = None,
        recv_interval: int | None = None,
        batch_wait_iters: int | None = None,
        batch_wait_max_tokens_ratio: float | None = None,
        **fields,
    ) -> PlanReport:
        """The fewest GPUs carrying ``requests_per_s`` requests of ``prompt_tokens`` in and
        ``output_tokens`` out within the SLOs, over every candidate GPU x tp x weight dtype x
        KV dtype (:func:`capcalc.serving.plan.candidates`; ``gpus`` None: every known GPU),
        each a replica of ``engine`` (vllm, sglang, trtllm) on the serving model.
        An SLO is seconds (the mean) or a string binding a statistic, ``'p90:500ms'``
        (:func:`capcalc.serving.plan.parse_slo`).
        ``prices``: USD per GPU-hour by GPU name, over the profiles' ``price_per_hour``.
        ``memory_fraction``: the engine's own memory knob, as in :meth:`serving`;
        ``gpu_memory_utilization`` is vLLM's name for it (as ``fit``), for vLLM only.
        ``recv_interval``, ``batch_wait_iters``, ``batch_wait_max_tokens_ratio``: as in :meth:`serving`."""
        from capcalc.perf.efficiency import PARAMETERS
        from capcalc.serving.engines import with_memory_fraction
        from capcalc.serving.plan import Traffic, candidates, plan, slos_of

        memory_fraction = _fraction(memory_fraction)
        named = str(engine).strip().lower()
        if gpu_memory_utilization is not None and memory_fraction is not None:
            raise CapcalcError(
                "give gpu_memory_utilization or memory_fraction, not both",
                parameter=("gpu_memory_utilization", "memory_fraction"),
            )
        if gpu_memory_utilization is not None and named != "vllm":
            raise CapcalcError(
                parameter=("gpu_memory_utilization", "memory_fraction"),
                template=f"{{gpu_memory_utilization}} is vLLM's memory knob; for {named} give {{memory_fraction}}",
            )
        # the flag, as each engine names it, over a calibration's value: it reaches the fit
        # through the engine config (capcalc.serving.engine.vllm_utilization for vLLM)
        knob = memory_fraction if memory_fraction is not None else gpu_memory_utilization

        overrides = dict(efficiency or {})
        overrides.update({k: fields.pop(k) for k in list(fields) if k in PARAMETERS})
        profile = self.model(model)
        devices = self.gpus(gpus)
        d = Deployment.of(deployment, **fields)
        cands = candidates(profile, devices, tps, weight_dtypes, kv_dtypes, d)
        price_of = {
            g.name: (g.price_per_hour, g.sources.get("price", "profile")) for g in devices if g.price_per_hour
        }
        for name, usd in (prices or {}).items():
            if not usd > 0:
                raise CapcalcError(f"price of {name} must be positive, got {usd:g}", parameter="price")
            price_of[self.gpu(name).name] = (usd, "flag")
        traffic = Traffic(requests_per_s, prompt_tokens, output_tokens)
        slos = slos_of(ttft_s=ttft_s, itl_s=itl_s, tpot_s=tpot_s, e2e_s=e2e_s)
        extra = {} if gpu_memory_utilization is None else {"gpu_memory_utilization": gpu_memory_utilization}
        resolved: dict[tuple[str, str], Any] = {}

        def serving(g: HardwareProfile, weight_dtype: str):
            # the same resolution as Session.serving: flags > calibrate entry > engine defaults
            key = (g.name, weight_dtype)
            if key not in resolved:
                resolved[key] = self.serving_parameters(
                    g, engine, weight_dtype, efficiency=overrides, recv_interval=recv_interval,
                    batch_wait_iters=batch_wait_iters, batch_wait_max_tokens_ratio=batch_wait_max_tokens_ratio,
                )  # fmt: skip
            r = resolved[key]
            return r.efficiency, with_memory_fraction(r.config, knob), r.source

        results = plan(
            profile,
            cands,
            traffic,
            slos,
            None,  # serving() resolves the efficiencies
            price_of,
            max_num_seqs=max_num_seqs,
            engine=engine,
            serving=serving,
            **extra,
        )
        return PlanReport(profile.name, traffic, slos, tuple(results))

    # ------------------------------------------------------------------ serving under load

    def serving_parameters(
        self,
        gpu: str | HardwareProfile,
        engine: str = "vllm",
        weight_dtype: str = "auto",
        model: str | ModelProfile | None = None,
        efficiency: dict[str, Any] | None = None,
        **config,
    ):
        """The step efficiencies and engine configuration ``engine`` serving on ``gpu``
        assumes: flags (``efficiency`` overrides; ``config``: max_num_batched_tokens,
        max_num_seqs, frontend_s, recv_interval, batch_wait_*) > this GPU and engine's ``capcalc calibrate --save``
        entry > engine defaults (:func:`capcalc.sources.calibration.resolve_serving`).
        ``weight_dtype`` ``auto`` is resolved against ``model``."""
        from capcalc.model.weights import resolve_weight_dtype
        from capcalc.serving.engines import ENGINES
        from capcalc.sources.calibration import resolve_serving

        name = str(engine).strip().lower()
        if name not in ENGINES:
            raise CapcalcError(
                parameter="engine",
                template=f"{{engine}}: unknown engine {excerpt(engine).replace('{', '{{').replace('}', '}}')}: expected one of {', '.join(ENGINES)}",
            )
        device = self.gpu(gpu)
        if model is not None:
            weight_dtype = resolve_weight_dtype(weight_dtype, self.model(model))
        if config.get("frontend_s") is not None:
            config["frontend_s"] = _duration(config["frontend_s"], "frontend_s")
        for key in ("max_num_batched_tokens", "max_num_seqs"):
            value = config.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise CapcalcError(
                    f"{key} must be a whole number of at least 1, got {value!r}", parameter=key
                )
        # recv_interval and batch_wait_*: EngineConfig checks them (with_overrides builds one)
        resolved = resolve_serving(device, name, weight_dtype, efficiency, self.calibration(), **config)
        if resolved.calibration_path:
            self.note(f"using the {name} calibration of {device.name} from {resolved.calibration_path}")
        return resolved

    def serving(
        self,
        model: str | ModelProfile,
        gpu: str | HardwareProfile,
        prompt_tokens: int = 1024,
        output_tokens: int = 256,
        concurrency: int | None = None,
        requests_per_s: float | None = None,
        engine: str = "vllm",
        max_num_batched_tokens: int | None = None,
        max_num_seqs: int | None = None,
        frontend_s: float | str | None = None,
        seed: int = 0,
        num_requests: int | None = None,
        deployment: Deployment | None = None,
        efficiency: dict[str, Any] | None = None,
        output_spread: float | None = None,
        memory_fraction: float | None = None,
        prompt_spread: float = 0.0,
        recv_interval: int | None = None,
        batch_wait_iters: int | None = None,
        batch_wait_max_tokens_ratio: float | None = None,
        **fields,
    ) -> ServingReport:
        """One replica of ``engine`` under load (:func:`capcalc.serving.engine.predict_serving`):
        ``concurrency`` closed-loop clients (``vllm bench serve --max-concurrency``) or
        Poisson arrivals at ``requests_per_s`` (``seed`` draws them), exactly one of the
        two. Mean and p50/p90/p99 TTFT, TPOT, E2E, ITL, requests/s, tokens/s per GPU and
        per user, the running batch, the queueing time and the limit that binds.
        ``num_requests``: measured requests (default: 5 per client; open loop 400).
        ``output_spread`` s: output lengths spread evenly over O x (1 ± s), 0 every request
        exactly O; None the engine's default (:attr:`capcalc.serving.engine.Workload.output_spread`).
        ``prompt_spread`` s: prompt lengths spread evenly over P x (1 ± s) (default 0: every
        prompt exactly P). A benchmark's random dataset of lengths uniform over [lo, hi] is
        P = (lo + hi) / 2 with s = (hi - lo) / (hi + lo), both ways.
        ``memory_fraction``: the engine's own memory knob, which sizes its KV pool: vLLM's
        ``gpu_memory_utilization`` (default 0.9), SGLang's ``mem_fraction_static`` (default:
        its heuristic), TensorRT-LLM's ``free_gpu_memory_fraction`` (default 0.9).
        ``recv_interval``: SGLang's ``--scheduler-recv-interval``, the decode steps between
        the scheduler's polls for new requests (default 1: every step).
        ``batch_wait_iters`` / ``batch_wait_max_tokens_ratio``: TensorRT-LLM's
        ``batch_wait_timeout_iters`` / ``batch_wait_max_tokens_ratio`` (default 0: no waiting)."""
        from capcalc.core.dtypes import resolve_kv_dtype
        from capcalc.model.weights import resolve_weight_dtype
        from capcalc.perf.efficiency import PARAMETERS
        from capcalc.perf.latency import resolve_compute_dtype
        from capcalc.serving.engine import Replica, Workload, predict_serving
        from capcalc.serving.engine import memory_fraction as engine_memory_fraction
        from capcalc.serving.engines import with_memory_fraction
        from capcalc.serving.fit import context_note
        from capcalc.sources.served import MAX_CLIENTS, MAX_REQUESTS

        if (concurrency is None) == (requests_per_s is None):
            raise CapcalcError(
                "give exactly one of concurrency and requests_per_s",
                parameter=("concurrency", "requests_per_s"),
            )
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise CapcalcError(
                f"concurrency must be a whole number of at least 1, got {concurrency!r}",
                parameter="concurrency",
            )
        for key, value, most in (
            ("concurrency", concurrency, MAX_CLIENTS),
            ("num_requests", num_requests, MAX_REQUESTS),
        ):
            if isinstance(value, int) and value > most:
                raise CapcalcError(
                    f"{key} {value} is over the {most:,} the simulation runs "
                    "(its time grows with the requests; more clients than the running batch only queue)",
                    parameter=key,
                )
        if requests_per_s is not None and not (
            isinstance(requests_per_s, (int, float)) and 0 < requests_per_s < float("inf")
        ):
            raise CapcalcError(
                f"requests_per_s must be a positive number, got {requests_per_s!r}",
                parameter="requests_per_s",
            )
        for key, value, low in (
            ("prompt_tokens", prompt_tokens, 1),
            ("output_tokens", output_tokens, 1),
            ("num_requests", num_requests, 1),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise CapcalcError(
                    f"{key} must be a whole number of at least {low}, got {value!r}", parameter=key
                )
        memory_fraction = _fraction(memory_fraction)
        overrides = dict(efficiency or {})
        overrides.update({k: fields.pop(k) for k in list(fields) if k in PARAMETERS})
        profile, device = self.model(model), self.gpu(gpu)
        d = Deployment.of(deployment, **fields)
        weight = resolve_weight_dtype(d.weight_dtype, profile)
        resolved = self.serving_parameters(
            device,
            engine,
            weight,
            efficiency=overrides,
            max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max_num_seqs,
            frontend_s=frontend_s,
            recv_interval=recv_interval,
            batch_wait_iters=batch_wait_iters,
            batch_wait_max_tokens_ratio=batch_wait_max_tokens_ratio,
        )
        # the memory knob of the engine in use, over a calibration's
        resolved = replace(resolved, config=with_memory_fraction(resolved.config, memory_fraction))
        replica = Replica(
            profile,
            device,
            tp=d.tp,
            weight_dtype=weight,
            kv_dtype=d.kv_dtype,
            compute_dtype=d.compute_dtype,
            group_size=d.group_size,
        )
        workload = Workload(
            prompt_tokens,
            output_tokens,
            concurrency=concurrency,
            rate_per_s=None if requests_per_s is None else float(requests_per_s),
            num_requests=num_requests,
            seed=seed,
            output_spread=None if output_spread is None else _spread(output_spread),
            prompt_spread=_spread(prompt_spread, "prompt_spread"),
        )
        result = predict_serving(replica, workload, resolved.config, resolved.efficiency)
        beyond = context_note(profile, prompt_tokens + output_tokens)
        if beyond is not None:
            self.note(beyond)
        kv = resolve_kv_dtype(d.kv_dtype, profile.native_dtype)
        compute = resolve_compute_dtype(d.compute_dtype, weight, profile, device)
        spread = resolved.config.output_spread if workload.output_spread is None else workload.output_spread
        return ServingReport(
            profile.name, device.name, d, weight, result, resolved, kv, compute, spread,
            engine_memory_fraction(replica, resolved.config), workload.prompt_spread,
        )  # fmt: skip

    def calibrate(
        self,
        paths: Sequence[str | Path],
        gpu: str | HardwareProfile | None = None,
        engine: str | None = None,
        model: str | ModelProfile | None = None,
        result_format: str = "auto",
        parameters: Sequence[str] | None = None,
        save: bool = False,
        directory: str | Path | None = None,
        command: str | None = None,
        weight_dtype: str | None = None,
        kv_dtype: str | None = None,
        compute_dtype: str | None = None,
        tp: int | None = None,
        group_size: int | None = None,
        max_num_batched_tokens: int | None = None,
        max_num_seqs: int | None = None,
        recv_interval: int | None = None,
        batch_wait_iters: int | None = None,
        batch_wait_max_tokens_ratio: float | None = None,
    ) -> CalibrationReport:
        """Fit the serving model to measured benchmark runs (``paths``: ``vllm bench serve``
        results, aiperf / genai-perf profile exports, guidellm reports, served-runs CSVs;
        :mod:`capcalc.sources.benchresults`) of one GPU and engine, with
        :func:`capcalc.serving.calibrate.fit_serving`. The deployment comes from each file
        where it says so, else from these arguments (:mod:`capcalc.sources.served`); a file
        that cannot be read or contradicts them raises, exit code 1. ``parameters``: the
        ones fitted (default :data:`capcalc.sources.served.CALIBRATED`). ``save`` writes the values into
        ``directory``'s calibration file (default: the user profile directory)."""
        from capcalc.serving.calibrate import FIT_PARAMETERS
        from capcalc.sources.benchresults import read_results
        from capcalc.sources.served import CALIBRATED, FORMAT_NAMES, Requested, fit_runs, to_points

        if result_format not in FORMAT_NAMES:
            raise CapcalcError(
                f"unknown result_format {result_format!r}: expected one of {', '.join(FORMAT_NAMES)}",
                parameter="result_format",
            )
        names = tuple(parameters) if parameters else CALIBRATED
        for name in names:
            if name not in FIT_PARAMETERS:
                raise CapcalcError(
                    f"unknown parameters entry {name!r}: expected some of {', '.join(FIT_PARAMETERS)}",
                    parameter="parameters",
                )
        if not paths:
            raise CapcalcError("give at least one result file", parameter="paths")
        if engine is not None:
            from capcalc.serving.engines import ENGINES

            if str(engine).strip().lower() not in ENGINES:
                shown = excerpt(engine).replace("{", "{{").replace("}", "}}")
                raise CapcalcError(
                    parameter="engine",
                    template=f"{{engine}}: unknown engine {shown}: expected one of {', '.join(ENGINES)}",
                )
        wanted = FORMAT_NAMES[result_format]
        runs = []
        try:
            for path in paths:
                got = read_results(path)
                if wanted is not None and got and got[0].source_format != wanted:
                    raise CapcalcError(f"{path}: is a {got[0].source_format} file, not {result_format}")
                runs.extend(got)
            requested = Requested(
                gpu=gpu.name if isinstance(gpu, HardwareProfile) else gpu,
                engine=engine,
                model=model.name if isinstance(model, ModelProfile) else model,
                weight_dtype=weight_dtype,
                kv_dtype=kv_dtype,
                compute_dtype=compute_dtype,
                tp=tp,
                group_size=group_size,
                max_num_batched_tokens=max_num_batched_tokens,
                max_num_seqs=max_num_seqs,
                recv_interval=recv_interval,
                batch_wait_iters=batch_wait_iters,
                batch_wait_max_tokens_ratio=batch_wait_max_tokens_ratio,
            )
            device, name, points = to_points(
                runs, requested, self.model, self.gpu, lambda m: self.registry.find_model(m)
            )
        except CapcalcError as exc:
            exc.exit_code = 1
            raise
        report = fit_runs(runs, device, name, points, names, save, directory, command)
        if not report.values:
            self.note("the fit found nothing better than the defaults; they are kept")
        return report

    def measure(self, model: str | ModelProfile, **options):
        """Time the model's decode steps and prefills on this machine with torch
        (:func:`capcalc.measure.session.measure`; needs ``capcalc[measure]``)."""
        from capcalc.measure.session import measure

        return measure(self, model, **options)
