"""Read serving-benchmark result files into one record per measured run.

``read_results(path)`` tells the format from the file's content (never from its name)
and returns a list of :class:`ServedPoint`, one per run, in base units (seconds,
tokens, requests/s). ``read_many(paths)`` does the same for several files. Anything
it cannot read raises :class:`CapcalcError` with one line that names the file, the
field and what was expected; a value is echoed at most 60 characters long.

Formats (the versions named are the ones whose source the key names were copied from):

``vllm-bench-serve``
    ``vllm bench serve --save-result`` JSON: vLLM ``vllm/benchmarks/serve.py``
    (the layout of vLLM 0.9.1 through main at commit 009e6d4; the same keys as the
    older ``benchmarks/benchmark_serving.py``). Times are the ``*_ms`` keys
    (``mean_ttft_ms``, ``mean_tpot_ms``, ``mean_itl_ms``, ``mean_e2el_ms``,
    ``median_*_ms``, ``p{N}_*_ms``), lengths are ``total_input_tokens`` and
    ``total_output_tokens`` over ``completed``, the load is ``max_concurrency``
    (closed loop) and ``request_rate`` (requests/s, the string ``"inf"`` for "as fast
    as possible"). ``--append-result`` files (one JSON object per line) give one point
    a line. ``--save-detailed`` files also list each request's ``input_lens`` and
    ``output_lens``, which give the spread of the lengths. The file does not name the
    engine: ``backend`` is the request API (``vllm``, ``openai``, ``openai-chat``...), so
    ``engine`` stays None.
``aiperf``
    aiperf ``profile_export_aiperf.json``: ai-dynamo/aiperf 0.8.0,
    ``src/aiperf/common/models/export_models.py`` (``JsonExportData``, export
    ``schema_version`` 1.0; the file names its ``aiperf_version``). Each metric is
    ``{"unit": ..., "avg": ..., "p50": ..., "p99": ...}`` at the top level; its
    ``unit`` is honoured (ns, us, ms, s). The load comes from
    ``input_config.loadgen.concurrency`` / ``.request_rate``, the model from
    ``input_config.endpoint.model_names``.
``genai-perf``
    genai-perf ``profile_export_genai_perf.json`` (triton-inference-server/perf_analyzer
    ``genai-perf/genai_perf/export_data/json_exporter.py``): the same metric objects
    as aiperf, and an ``input_config`` that is either the flat argparse namespace of
    genai-perf 0.0.x (``model``, ``concurrency``, ``request_rate``, ``backend``,
    ``service_kind``) or the nested config of genai-perf 0.0.12 (``model_names``,
    ``perf_analyzer.stimulus``, ``endpoint``).
``guidellm``
    ``guidellm benchmark`` JSON report: vllm-project/guidellm 0.4.x
    (``src/guidellm/benchmark/schemas/generative/report.py`` and ``metrics.py``):
    ``{"args": {"model": ...}, "benchmarks": [...]}``, each benchmark with
    ``config.strategy`` and ``metrics.<name>.successful`` distribution summaries
    (``mean``, ``median``, ``percentiles.p001 ... p999``). ``request_latency`` is in
    seconds, the ``*_ms`` metrics in milliseconds. The 0.2.x/0.3.x layout
    (``src/guidellm/benchmark/benchmark.py``: the strategy under ``args.strategy``,
    ``request_totals`` beside ``metrics``) reads too. One point per benchmark.
``served-csv``
    The served-runs CSV of ``shared/validation/served_dev.csv`` (aiconfigurator's
    ``silicon_sample.csv`` columns): one point a row, ``isl``/``osl`` as the lengths,
    ``silicon_ttft_ms``/``silicon_tpot_ms`` as the means, the concurrency from
    ``silicon_concurrency=N`` in ``silicon_data_source`` or else ``batch_size`` x
    ``attention_dp_size``. An empty ``precision`` stays None (that file's README says
    empty means bf16; this reader does not guess). A row that InferenceX measured
    (:func:`inferencex_source`) is read as that benchmark's workload: ``isl``/``osl`` are
    the upper ends of lengths uniform over [int(0.8 L), L], so the means are 0.9 L with
    their spreads, and 10 requests per client.

TPOT is ``vllm bench serve``'s: per request ``(e2e - ttft) / (output_tokens - 1)``,
averaged over requests. aiperf's and genai-perf's ``inter_token_latency`` is computed
per request by exactly that formula (aiperf ``InterTokenLatencyMetric``, genai-perf
``LLMProfileDataParser``), so it fills ``tpot_mean_s`` and ``itl_mean_s`` stays None.
guidellm reports only ``inter_token_latency_ms`` = ``(last_token - first_token) /
(output_tokens - 1)`` per request, averaged with weights ``output_tokens - 1``; it fills
``tpot_mean_s`` (exact when all requests have the same output length, as in synthetic
fixed-length runs, otherwise the token-weighted mean), and ``itl_mean_s`` stays None.
guidellm's ``time_per_output_token_ms`` divides by all output tokens and is not used.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from capcalc.core.errors import CapcalcError
from capcalc.sources.launchers import inferencex_engine_settings

__all__ = ["MAX_BYTES", "FORMATS", "ServedPoint", "read_results", "read_many"]

# A result file holds summary statistics (a few KB); vLLM's --save-detailed adds
# per-request arrays and texts, a few MB for thousands of requests. 64 MiB is far above
# any honest summary and keeps json.loads (several times the file size in memory) small.
MAX_BYTES = 64 * 2**20

FORMATS = ("vllm-bench-serve", "aiperf", "genai-perf", "guidellm", "served-csv")

_ECHO = 60  # the most characters of a value an error message shows

_TIME_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
}
_COUNT_UNITS = {"tokens", "token", "requests", "request", "count"}

_ENGINES = {
    "vllm": "vllm",
    "sglang": "sglang",
    "trtllm": "trtllm",
    "tensorrtllm": "trtllm",
    "tensorrt-llm": "trtllm",
    "tensorrt_llm": "trtllm",
}


@dataclass(frozen=True)
class ServedPoint:
    """One measured serving run, in base units (seconds, tokens, requests/s).

    ``id`` labels the point in messages (file name plus run, or the CSV row's id).
    ``input_tokens``/``output_tokens`` are mean prompt and output lengths.
    ``concurrency`` is the closed-loop client count; ``request_rate`` the open-loop
    arrival rate in requests/s (``inf`` for "as fast as possible"); either may be None.
    ``percentiles`` maps names such as ``ttft_p90_s``, ``tpot_p99_s``, ``itl_p50_s``,
    ``e2e_p99.9_s`` to seconds, for those the file reports. ``mode``,
    ``attention_dp``, ``moe_tp``, ``moe_ep`` and ``disagg`` (the ``prefill_*`` and
    ``decode_*`` worker layout of a disaggregated run) come from the served-runs CSV,
    as does ``engine_version``; ``tool_version`` is the benchmark tool's own version
    where the file records it (aiperf's ``aiperf_version``).
    """

    id: str
    source_path: str
    source_format: str
    tool_version: str | None
    model: str | None
    gpu: str | None
    engine: str | None
    engine_version: str | None
    tp: int | None
    pp: int | None
    precision: str | None
    mode: str | None
    attention_dp: int | None
    moe_tp: int | None
    moe_ep: int | None
    input_tokens: float
    output_tokens: float
    concurrency: int | None
    request_rate: float | None
    num_requests: int | None
    ttft_mean_s: float
    tpot_mean_s: float
    itl_mean_s: float | None
    e2e_mean_s: float | None
    output_tokens_per_s: float | None
    requests_per_s: float | None
    percentiles: dict[str, float] = field(default_factory=dict, hash=False)
    disagg: dict[str, int] | None = field(default=None, hash=False)
    #: the served-runs CSV's ``gemm_quant_mode`` (tells NVFP4 from MXFP4 where ``precision`` says fp4)
    gemm_quant_mode: str | None = None
    #: relative half-widths of the spread of prompt and output lengths about their means,
    #: where the file says it (a ``--save-detailed`` vLLM result's per-request lengths, an
    #: InferenceX row of the served-runs CSV); None: not known
    input_spread: float | None = None
    output_spread: float | None = None
    #: engine settings the run's server was launched with that the file does not record but
    #: its launcher does (:func:`capcalc.sources.launchers.inferencex_engine_settings`:
    #: EngineConfig field -> value); empty: the engine's defaults
    engine_settings: dict[str, Any] = field(default_factory=dict, hash=False)


#: InferenceX (github.com/SemiAnalysisAI/InferenceX) runs its client
#: (``utils/bench_serving/benchmark_serving.py``) with ``--random-range-ratio $RANDOM_RANGE_RATIO``,
#: 0.8 (``.github/workflows/benchmark-tmpl.yml``): each prompt and each output length is
#: uniform over the integers [int(0.8 L), L] (``sample_random_requests``), with
#: ``--num-prompts $((CONC * 10))`` (the ``benchmarks/*.sh`` launchers) and ``--ignore-eos``
INFERENCEX_RANGE_RATIO = 0.8
INFERENCEX_PROMPTS_PER_CLIENT = 10


def inferencex_source(source: str) -> bool:
    """Whether a served-runs CSV row's ``silicon_data_source`` is an InferenceX measurement:
    an export of its results (``source_file=YYYY-MM-DD.csv; model=...``) or of its database
    (``db-dump/...; workflow_run_id=...``)."""
    return bool(re.match(r"source_file=\d{4}-\d{2}-\d{2}\.csv(;|$)", source)) or (
        source.startswith("db-dump") and "workflow_run_id=" in source
    )


def uniform_lengths(nominal: float, ratio: float) -> tuple[float, float]:
    """(mean, relative half-width) of lengths uniform over the integers [int(nominal x ratio),
    nominal]: ((lo + hi) / 2, (hi - lo) / (hi + lo))."""
    low = int(nominal * ratio)
    return (low + nominal) / 2, (nominal - low) / (nominal + low)


def spread_of(lengths: list[float]) -> float:
    """Relative half-width of a set of lengths: (max - min) / (max + min), 0 for one length."""
    low, high = min(lengths), max(lengths)
    return (high - low) / (high + low) if high + low > 0 else 0.0


def read_many(paths: Iterable[str | os.PathLike]) -> list[ServedPoint]:
    """All points of all ``paths``, in order; the first bad file raises."""
    points: list[ServedPoint] = []
    for path in paths:
        points.extend(read_results(path))
    return points


def read_results(path: str | os.PathLike) -> list[ServedPoint]:
    """The points of one result file, its format told by its content."""
    src = _Source(str(path))
    text = src.read_text()
    if not text.strip():
        src.fail("", "empty file; expected a benchmark result (JSON or served-runs CSV)")
    head = text.lstrip()
    if head[:1] in "{[":
        return _read_json(src, text)
    first_line = head.splitlines()[0]
    if "silicon_ttft_ms" in first_line and "silicon_tpot_ms" in first_line:
        return _read_served_csv(src, text)
    src.fail(
        "",
        f"unknown format: neither JSON nor a served-runs CSV header (starts {_show(first_line)})",
    )


# --------------------------------------------------------------------------- reading


class _Source:
    """The file being read: its path, and the one way errors about it are raised."""

    def __init__(self, path: str):
        self.path = path
        self.name = Path(path).name

    def fail(self, where: str, problem: str) -> NoReturn:
        line = f"{self.path}: {where}: {problem}" if where else f"{self.path}: {problem}"
        raise CapcalcError(" ".join(line.split()))

    def read_text(self) -> str:
        """The file's text: regular files only, at most MAX_BYTES, UTF-8."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.fail("", "no such file")
        except OSError as exc:
            self.fail("", f"cannot read ({exc.strerror})")
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            self.fail("", f"{kind}; expected a benchmark result file")
        if st.st_size > MAX_BYTES:
            self.fail("", f"{st.st_size} bytes, over the {MAX_BYTES // 2**20} MiB limit for a result file")
        try:
            # O_NONBLOCK: a path swapped for a FIFO after the stat cannot hang the open.
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            self.fail("", f"cannot read ({exc.strerror})")
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                self.fail("", "not a regular file; expected a benchmark result file")
            data = handle.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            self.fail("", f"over the {MAX_BYTES // 2**20} MiB limit for a result file")
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            self.fail("", f"not UTF-8 text (byte {exc.start})")

    # ---- values

    def get(self, obj: Any, where: str, *keys: str | int) -> Any:
        """``obj[k1][k2]...`` or None where a key is absent; a non-container on the way fails."""
        for key in keys:
            if obj is None:
                return None
            if isinstance(key, int):
                if not isinstance(obj, list):
                    self.fail(where, f"expected a list, got {_show(obj)}")
                obj = obj[key] if key < len(obj) else None
            else:
                if not isinstance(obj, dict):
                    self.fail(where, f"expected an object, got {_show(obj)}")
                obj = obj.get(key)
            where = f"{where}.{key}" if where else str(key)
        return obj

    def number(
        self,
        value: Any,
        where: str,
        *,
        required: bool = False,
        integer: bool = False,
        positive: bool = False,
        allow_inf: bool = False,
    ) -> Any:
        """A finite non-negative number (or None when absent and not required)."""
        if value is None:
            if required:
                self.fail(where, "missing; expected a number")
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(where, f"expected a number, got {_show(value)}")
        if math.isnan(value) or (math.isinf(value) and not (allow_inf and value > 0)):
            self.fail(where, f"not a finite number ({_show(value)})")
        if value < 0:
            self.fail(where, f"negative ({_show(value)}); expected >= 0")
        if positive and value == 0:
            self.fail(where, "zero; expected > 0")
        if integer:
            if math.isinf(value) or value != int(value):
                self.fail(where, f"expected a whole number, got {_show(value)}")
            return int(value)
        return float(value)

    def text(self, value: Any, where: str) -> str | None:
        """A string, the first string of a list of names, or None."""
        if isinstance(value, list):
            value = value[0] if value else None
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            self.fail(where, f"expected a string, got {_show(value)}")
        return value


def _show(value: Any) -> str:
    """``repr(value)`` cut to _ECHO characters."""
    text = repr(value)
    return text if len(text) <= _ECHO else text[: _ECHO - 3] + "..."


def _unit(unit: str) -> tuple[str, float] | None:
    """``(kind, factor to base units)`` of a unit: time -> s, count, rate -> per s; None if unknown."""
    lowered = unit.strip().lower()
    if lowered in _TIME_UNITS:
        return "time", _TIME_UNITS[lowered]
    if lowered in _COUNT_UNITS:
        return "count", 1.0
    numerator, slash, per = lowered.partition("/")
    per = per.split("/")[0]  # "tokens/sec/user" is still per second
    if slash and numerator in _COUNT_UNITS and per in _TIME_UNITS:
        return "rate", 1.0 / _TIME_UNITS[per]
    return None


def _convert(
    src: _Source, value: float | None, unit: Any, where: str, kind: str | None = None
) -> float | None:
    """``value`` in ``unit`` to base units (seconds, counts, per second).

    ``kind`` ("time", "count" or "rate"), where given, is what the metric must be: a
    latency without a time unit fails rather than being read as seconds.
    """
    if value is None:
        return None
    parsed = _unit(unit) if isinstance(unit, str) else None
    if parsed is None or (kind is not None and parsed[0] != kind):
        expected = {"time": "ns, us, ms or s", "count": "tokens or requests", "rate": "X/sec"}
        src.fail(where, f"unit {_show(unit)}; expected {expected.get(kind or '', 'a known unit')}")
    return value * parsed[1]


def _quantile(token: str, tenths_if_three_digits: bool = False) -> float:
    """The percentile a key names: ``"99.9"`` -> 99.9; guidellm's ``"999"`` -> 99.9, ``"001"`` -> 0.1."""
    if tenths_if_three_digits and len(token) == 3:
        return int(token) / 10
    return float(token)


def _pct_name(metric: str, q: float) -> str:
    return f"{metric}_p{int(q) if q == int(q) else q}_s"


def _engine(src: _Source, value: Any, where: str) -> str | None:
    name = src.text(value, where)
    if name is None:
        return None
    engine = _ENGINES.get(name.strip().lower())
    if engine is None:
        src.fail(where, f"unknown engine {_show(name)}; expected vllm, sglang or trtllm")
    return engine


def _concurrency(src: _Source, value: Any, where: str) -> int | None:
    """A client count; a sweep list of one value counts as that value, longer lists as unknown."""
    if isinstance(value, list):
        if len(value) != 1:
            return None
        value = value[0]
    return src.number(value, where, integer=True, positive=True)


def _rate(src: _Source, value: Any, where: str) -> float | None:
    """Requests/s; ``"inf"`` (vLLM's spelling of "as fast as possible") is infinity."""
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
        return math.inf
    return src.number(value, where, positive=True, allow_inf=True)


def _point(src: _Source, fmt: str, label: str, **fields: Any) -> ServedPoint:
    defaults = dict.fromkeys(
        (
            "tool_version",
            "model",
            "gpu",
            "engine",
            "engine_version",
            "tp",
            "pp",
            "precision",
            "mode",
            "attention_dp",
            "moe_tp",
            "moe_ep",
            "concurrency",
            "request_rate",
            "num_requests",
            "itl_mean_s",
            "e2e_mean_s",
            "output_tokens_per_s",
            "requests_per_s",
            "disagg",
            "input_spread",
            "output_spread",
        )
    )
    defaults["percentiles"] = {}
    defaults["engine_settings"] = {}
    defaults.update(fields)
    return ServedPoint(id=label, source_path=src.path, source_format=fmt, **defaults)


# --------------------------------------------------------------------------- JSON formats


def _read_json(src: _Source, text: str) -> list[ServedPoint]:
    try:
        docs = [json.loads(text)]
    except RecursionError:
        src.fail("", "JSON nested too deeply")
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":
            src.fail("", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")
        docs = _json_lines(src, text)
    if len(docs) > 1:
        # vllm bench serve --append-result: one result object a line.
        for n, doc in enumerate(docs, 1):
            if _detect(doc) != "vllm-bench-serve":
                src.fail(f"line {n}", "several JSON values, but not all vllm bench serve results")
        return [_vllm(src, doc, f"{src.name}:{n}", f"line {n}") for n, doc in enumerate(docs, 1)]
    doc = docs[0]
    fmt = _detect(doc)
    if fmt == "vllm-bench-serve":
        return [_vllm(src, doc, src.name, "")]
    if fmt in ("aiperf", "genai-perf"):
        return [_profile_export(src, doc, fmt)]
    if fmt == "guidellm":
        return _guidellm(src, doc)
    src.fail(
        "",
        "unknown format: expected a vllm bench serve result, an aiperf or genai-perf "
        "profile export, or a guidellm report",
    )


def _json_lines(src: _Source, text: str) -> list[Any]:
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            docs.append(json.loads(line))
        except RecursionError:
            src.fail(f"line {n}", "JSON nested too deeply")
        except json.JSONDecodeError as exc:
            src.fail("", f"invalid JSON at line {n} column {exc.colno}: {exc.msg}")
    return docs


def _detect(doc: Any) -> str | None:
    """The format of a parsed JSON document, or None."""
    if not isinstance(doc, dict):
        return None
    benchmarks = doc.get("benchmarks")
    if isinstance(benchmarks, list) and all(
        isinstance(b, dict) and isinstance(b.get("metrics"), dict) for b in benchmarks
    ):
        return "guidellm"
    if "mean_ttft_ms" in doc or {"completed", "total_input_tokens", "request_throughput"} <= doc.keys():
        return "vllm-bench-serve"
    if isinstance(doc.get("time_to_first_token"), dict) or isinstance(doc.get("input_config"), dict):
        config = doc.get("input_config")
        config = config if isinstance(config, dict) else {}
        endpoint = config.get("endpoint")
        if (
            "aiperf_version" in doc
            or "loadgen" in config
            or (isinstance(endpoint, dict) and "model_names" in endpoint)
        ):
            return "aiperf"
        if {"model", "model_names", "perf_analyzer"} & config.keys():
            return "genai-perf"
    return None


def _vllm(src: _Source, doc: dict, label: str, where: str) -> ServedPoint:
    """One ``vllm bench serve`` result object."""

    def key(name: str) -> str:
        return f"{where}.{name}" if where else name

    def ms(name: str, required: bool = False) -> float | None:
        return _convert(src, src.number(doc.get(name), key(name), required=required), "ms", key(name))

    completed = src.number(doc.get("completed"), key("completed"), required=True, integer=True, positive=True)
    total_in = src.number(doc.get("total_input_tokens"), key("total_input_tokens"), required=True)
    total_out = src.number(doc.get("total_output_tokens"), key("total_output_tokens"), required=True)
    spreads = {}
    for field_name, lens in (("input_spread", "input_lens"), ("output_spread", "output_lens")):
        values = doc.get(lens)
        if isinstance(values, list) and values:
            numbers = [src.number(v, key(f"{lens}[{i}]"), required=True) for i, v in enumerate(values)]
            spreads[field_name] = spread_of(numbers)
    percentiles: dict[str, float] = {}
    names = {"ttft": "ttft", "tpot": "tpot", "itl": "itl", "e2el": "e2e"}
    for name in sorted(doc):
        match = re.fullmatch(r"(?:p(\d+(?:\.\d+)?)|median)_(ttft|tpot|itl|e2el)_ms", name)
        if match:
            q = _quantile(match.group(1)) if match.group(1) else 50.0
            pct = _pct_name(names[match.group(2)], q)
            if match.group(1) or pct not in percentiles:
                percentiles[pct] = ms(name)
    return _point(
        src,
        "vllm-bench-serve",
        label,
        model=src.text(doc.get("model_id"), key("model_id")),
        input_tokens=total_in / completed,
        output_tokens=total_out / completed,
        concurrency=src.number(
            doc.get("max_concurrency"), key("max_concurrency"), integer=True, positive=True
        ),
        request_rate=_rate(src, doc.get("request_rate"), key("request_rate")),
        num_requests=completed,
        ttft_mean_s=ms("mean_ttft_ms", required=True),
        tpot_mean_s=ms("mean_tpot_ms", required=True),
        itl_mean_s=ms("mean_itl_ms"),
        e2e_mean_s=ms("mean_e2el_ms"),
        percentiles=percentiles,
        output_tokens_per_s=src.number(doc.get("output_throughput"), key("output_throughput")),
        requests_per_s=src.number(doc.get("request_throughput"), key("request_throughput")),
        **spreads,
    )


def _profile_export(src: _Source, doc: dict, fmt: str) -> ServedPoint:
    """An aiperf or genai-perf profile export (they share the metric layout)."""

    def metric(name: str, kind: str, stat_key: str = "avg", required: bool = False) -> float | None:
        obj = doc.get(name)
        if obj is None:
            if required:
                src.fail(name, f"missing; expected a metric object with {stat_key!r} and 'unit'")
            return None
        if not isinstance(obj, dict):
            src.fail(name, f"expected a metric object, got {_show(obj)}")
        where = f"{name}.{stat_key}"
        value = src.number(obj.get(stat_key), where, required=required)
        return _convert(src, value, obj.get("unit"), f"{name}.unit", kind)

    percentiles: dict[str, float] = {}
    for name, short in (
        ("time_to_first_token", "ttft"),
        ("inter_token_latency", "tpot"),
        ("request_latency", "e2e"),
    ):
        obj = doc.get(name)
        for stat_key in sorted(obj) if isinstance(obj, dict) else ():
            match = re.fullmatch(r"p(\d+(?:\.\d+)?)", stat_key)
            value = metric(name, "time", stat_key) if match else None
            if value is not None:
                percentiles[_pct_name(short, _quantile(match.group(1)))] = value

    config = doc.get("input_config")
    if config is not None and not isinstance(config, dict):
        src.fail("input_config", f"expected an object, got {_show(config)}")
    config = config or {}
    if fmt == "aiperf":
        model = src.text(src.get(config, "input_config", "endpoint", "model_names"), "input_config.endpoint")
        where = "input_config.loadgen"
        loadgen = src.get(config, "input_config", "loadgen") or {}
        concurrency = _concurrency(src, src.get(loadgen, where, "concurrency"), f"{where}.concurrency")
        rate = _rate(src, src.get(loadgen, where, "request_rate"), f"{where}.request_rate")
        tool_version = src.text(doc.get("aiperf_version"), "aiperf_version")
        engine = None
    else:
        nested = "perf_analyzer" in config or "model_names" in config
        where = "input_config.perf_analyzer.stimulus" if nested else "input_config"
        stimulus = (src.get(config, "input_config", "perf_analyzer", "stimulus") or {}) if nested else config
        model = src.text(config.get("model_names" if nested else "model"), "input_config.model")
        concurrency = _concurrency(src, src.get(stimulus, where, "concurrency"), f"{where}.concurrency")
        rate = _rate(src, src.get(stimulus, where, "request_rate"), f"{where}.request_rate")
        # backend names the Triton engine only when genai-perf talked to Triton.
        endpoint = (src.get(config, "input_config", "endpoint") or {}) if nested else config
        where = "input_config.endpoint" if nested else "input_config"
        triton = src.get(endpoint, where, "service_kind") == "triton"
        engine = _engine(src, src.get(endpoint, where, "backend"), f"{where}.backend") if triton else None
        tool_version = None

    return _point(
        src,
        fmt,
        src.name,
        tool_version=tool_version,
        model=model,
        engine=engine,
        input_tokens=metric("input_sequence_length", "count", required=True),
        output_tokens=metric("output_sequence_length", "count", required=True),
        concurrency=concurrency,
        request_rate=rate,
        num_requests=src.number(metric("request_count", "count"), "request_count.avg", integer=True),
        ttft_mean_s=metric("time_to_first_token", "time", required=True),
        tpot_mean_s=metric("inter_token_latency", "time", required=True),
        e2e_mean_s=metric("request_latency", "time"),
        percentiles=percentiles,
        output_tokens_per_s=metric("output_token_throughput", "rate"),
        requests_per_s=metric("request_throughput", "rate"),
    )


def _guidellm(src: _Source, doc: dict) -> list[ServedPoint]:
    """A guidellm report: one point per benchmark."""
    benchmarks = doc["benchmarks"]
    if not benchmarks:
        src.fail("benchmarks", "empty; expected at least one benchmark")
    model = src.text(src.get(doc, "", "args", "model"), "args.model")
    points = []
    for i, bench in enumerate(benchmarks):
        where = f"benchmarks[{i}]"
        metrics = bench["metrics"]

        dist = functools.partial(_guidellm_stat, src, metrics, where)
        percentiles: dict[str, float] = {}
        for name, short, unit in (
            ("time_to_first_token_ms", "ttft", "ms"),
            ("inter_token_latency_ms", "tpot", "ms"),
            ("request_latency", "e2e", "s"),
        ):
            pcts = src.get(metrics, f"{where}.metrics", name, "successful", "percentiles")
            for key in sorted(pcts) if isinstance(pcts, dict) else ():
                match = re.fullmatch(r"p(\d+)", key)
                if match:
                    q = _quantile(match.group(1), tenths_if_three_digits=True)
                    percentiles[_pct_name(short, q)] = dist(name, unit, f"percentiles.{key}")
            if _pct_name(short, 50) not in percentiles and dist(name, unit, "median") is not None:
                percentiles[_pct_name(short, 50)] = dist(name, unit, "median")

        strategy = (
            src.get(bench, where, "config", "strategy")
            or src.get(bench, where, "scheduler", "strategy")
            or src.get(bench, where, "args", "strategy")
            or {}
        )
        if not isinstance(strategy, dict):
            src.fail(f"{where}.config.strategy", f"expected an object, got {_show(strategy)}")
        at = f"{where}.config.strategy"
        concurrency = src.number(strategy.get("streams"), f"{at}.streams", integer=True, positive=True)
        rate = _rate(src, strategy.get("rate"), f"{at}.rate")
        if strategy.get("type_") == "synchronous":
            concurrency = 1
        elif strategy.get("type_") == "throughput":
            rate = math.inf
            concurrency = src.number(
                strategy.get("max_concurrency"), f"{at}.max_concurrency", integer=True, positive=True
            )
        totals = bench.get("request_totals") or metrics.get("request_totals")
        num = src.number(
            src.get(totals, f"{where}.request_totals", "successful"),
            f"{where}.request_totals.successful",
            integer=True,
        )

        points.append(
            _point(
                src,
                "guidellm",
                f"{src.name}:{where}",
                model=model,
                input_tokens=dist("prompt_token_count", "tokens", required=True),
                output_tokens=dist("output_token_count", "tokens", required=True),
                concurrency=concurrency,
                request_rate=rate,
                num_requests=num,
                ttft_mean_s=dist("time_to_first_token_ms", "ms", required=True),
                tpot_mean_s=dist("inter_token_latency_ms", "ms", required=True),
                e2e_mean_s=dist("request_latency", "s"),
                percentiles=percentiles,
                output_tokens_per_s=dist("output_tokens_per_second", "tokens/s"),
                requests_per_s=dist("requests_per_second", "requests/s"),
            )
        )
    return points


def _guidellm_stat(
    src: _Source,
    metrics: dict,
    where: str,
    name: str,
    unit: str,
    stat_key: str = "mean",
    required: bool = False,
) -> float | None:
    """``metrics[name].successful[stat_key]`` (``stat_key`` may be dotted) in base units."""
    at = f"{where}.metrics.{name}.successful"
    summary = src.get(metrics, f"{where}.metrics", name, "successful")
    if summary is None and required:
        src.fail(at, f"missing; expected a distribution with {stat_key!r}")
    value = src.get(summary, at, *stat_key.split("."))
    return _convert(src, src.number(value, f"{at}.{stat_key}", required=required), unit, at)


# --------------------------------------------------------------------------- served-runs CSV

_CSV_REQUIRED = ("id", "isl", "osl", "silicon_ttft_ms", "silicon_tpot_ms")
_DISAGG_COLUMNS = tuple(
    f"{phase}_{name}"
    for phase in ("prefill", "decode")
    for name in (
        "batch_size",
        "num_workers",
        "tp_size",
        "pp_size",
        "attention_dp_size",
        "moe_tp_size",
        "moe_ep_size",
    )
)


def _read_served_csv(src: _Source, text: str) -> list[ServedPoint]:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [name for name in _CSV_REQUIRED if name not in header]
    if missing:
        src.fail("header", f"missing column {missing[0]!r}; expected the served-runs CSV columns")
    points = []
    try:
        for row in reader:
            if None in row:
                src.fail(f"line {reader.line_num}", "more fields than the header has")
            if not any((value or "").strip() for value in row.values()):
                continue
            points.append(_served_row(src, row, reader.line_num))
    except csv.Error as exc:
        src.fail(f"line {reader.line_num}", f"malformed CSV ({exc})")
    if not points:
        src.fail("", "no data rows after the served-runs CSV header")
    return points


def served_csv_run(row: dict[str, str | None], source: str = "served-runs CSV") -> ServedPoint:
    """One row of the served-runs CSV (a ``csv.DictReader`` row) read as ``read_results``
    reads it; errors name ``source`` and the row's id."""
    return _served_row(_Source(source), row, None)


def _served_row(src: _Source, row: dict[str, str | None], line: int | None) -> ServedPoint:
    label = (row.get("id") or "").strip() or f"{src.name}:line {line}"
    # a row handed over on its own (line None) is named by its id alone
    where = label if line is None else f"line {line} ({label})" if row.get("id") else f"line {line}"

    def cell(name: str) -> str:
        return (row.get(name) or "").strip()

    def num(name: str, *, required: bool = False, integer: bool = False) -> Any:
        value = cell(name)
        if not value:
            return src.number(None, f"{where}: {name}", required=required)
        try:
            parsed: float = float(value)
        except ValueError:
            src.fail(f"{where}: {name}", f"expected a number, got {_show(value)}")
        return src.number(parsed, f"{where}: {name}", integer=integer)

    def ms(name: str) -> float:
        return _convert(src, num(name, required=True), "ms", f"{where}: {name}")

    found = re.search(r"silicon_concurrency=(\d+)", cell("silicon_data_source"))
    batch, adp = num("batch_size", integer=True), num("attention_dp_size", integer=True)
    if found:
        concurrency = src.number(
            int(found.group(1)), f"{where}: silicon_concurrency", integer=True, positive=True
        )
    else:
        concurrency = batch * (adp or 1) if batch else None
    mode = cell("mode") or None
    disagg = None
    if mode == "disagg":
        disagg = {name: num(name, integer=True) for name in _DISAGG_COLUMNS if cell(name)}
    isl, osl = num("isl", required=True), num("osl", required=True)
    lengths = {"input_tokens": isl, "output_tokens": osl}
    settings: dict[str, Any] = {}
    if inferencex_source(cell("silicon_data_source")):
        (mean_in, spread_in), (mean_out, spread_out) = (
            uniform_lengths(isl, INFERENCEX_RANGE_RATIO),
            uniform_lengths(osl, INFERENCEX_RANGE_RATIO),
        )
        lengths = {
            "input_tokens": mean_in,
            "output_tokens": mean_out,
            "input_spread": spread_in,
            "output_spread": spread_out,
            "num_requests": INFERENCEX_PROMPTS_PER_CLIENT * concurrency if concurrency else None,
        }
        # what its launcher set, which the row does not say
        settings = inferencex_engine_settings(
            cell("backend").lower(), cell("model_path"), cell("system"), cell("precision"),
            num("tp_size", integer=True), isl, osl, concurrency,
        )  # fmt: skip

    return _point(
        src,
        "served-csv",
        label,
        model=cell("model_path") or None,
        gpu=cell("system") or None,
        engine=_engine(src, cell("backend"), f"{where}: backend"),
        engine_version=cell("backend_version") or None,
        tp=num("tp_size", integer=True),
        pp=num("pp_size", integer=True),
        precision=cell("precision") or None,
        gemm_quant_mode=cell("gemm_quant_mode") or None,
        mode=mode,
        attention_dp=adp,
        moe_tp=num("moe_tp_size", integer=True),
        moe_ep=num("moe_ep_size", integer=True),
        disagg=disagg,
        concurrency=concurrency,
        **lengths,
        engine_settings=settings,
        ttft_mean_s=ms("silicon_ttft_ms"),
        tpot_mean_s=ms("silicon_tpot_ms"),
    )
