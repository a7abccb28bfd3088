"""Hostile and absurd input (issue 14): a table of hostile cases, one for each item the
issue lists (named after it: ``i1_...`` is "What broke" item 1), and hypothesis
fuzzing of every command, of profile files and of config.json files.

Every run is in-process (:func:`capcalc.cli.main`) and must hold:

* no traceback and no "internal error";
* exit 0 only with valid JSON / CSV whose numbers are finite and whose sizes (``*bytes*``)
  and times (``*_s``) are not negative; latency's times are never null;
* a refusal is one ``capcalc: error:`` line of bounded length;
* nothing half-written (no temporary file left);
* no answer slower than 5 s (the hostile cases: 2 s).

CI runs a bounded number of examples: ``CAPCALC_FUZZ_EXAMPLES`` (default 25 per fuzz
test, about 20 s on 2 cores). The long run (docs/reliability.md)::

    CAPCALC_FUZZ_EXAMPLES=2000 python -m pytest -q tests/test_fuzz.py
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import signal
import time
from pathlib import Path

import pytest
import yaml
from conftest import COMMIT, TINY_LLAMA, make_hub_cache, write_folder, write_safetensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capcalc.cli import main
from capcalc.core.errors import CapcalcError
from capcalc.core.fileio import write_atomic

pytestmark = pytest.mark.usefixtures("offline_hub")  # an empty offline Hub cache for every case

TEST_PROFILES = Path(__file__).resolve().parent / "profiles"
EXAMPLES = int(os.environ.get("CAPCALC_FUZZ_EXAMPLES", "25"))
#: the slowest a fuzzed answer may be, and a hostile case (the issue's "within 2 s")
FUZZ_LIMIT_S, HOSTILE_LIMIT_S = 5.0, 2.0
#: the longest a refusal line may be: a bounded excerpt, never a file's contents
MAX_ERROR_CHARS = 1000

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the time limit is checked per run below, with the run's own clock
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=os.environ.get("CAPCALC_FUZZ_SEED") is None and EXAMPLES <= 100,
)


# --------------------------------------------------------------------------- running and checking


class Run:
    def __init__(self, code: int, out: str, err: str, elapsed: float, args: list[str]):
        self.code, self.out, self.err, self.elapsed, self.args = code, out, err, elapsed, args


@contextlib.contextmanager
def _alarm(seconds: int):
    """Fail (not hang) a run that blocks: a FIFO opened, a quadratic loop."""

    def expired(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run(*args, limit: float = FUZZ_LIMIT_S) -> Run:
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with _alarm(int(limit) + 10), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    result = Run(code, out.getvalue(), err.getvalue(), time.perf_counter() - start, argv)
    check(result, limit)
    return result


def _numbers(value, key=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v, key)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield key, value


def _is_size_or_time(key: str) -> bool:
    return "bytes" in key or key.endswith("_s")


def check(r: Run, limit: float) -> None:
    where = f"capcalc {' '.join(a[:60] for a in r.args)[:300]}"
    assert "Traceback" not in r.err + r.out, where
    assert "internal error" not in r.err, f"{where}: {r.err[:500]}"
    assert r.elapsed < limit, f"{where}: {r.elapsed:.2f} s"
    errors = [line for line in r.err.splitlines() if line.startswith("capcalc: error:")]
    assert all(len(line) <= MAX_ERROR_CHARS for line in errors), (
        f"{where}: error line of {max(map(len, errors))}"
    )
    if r.code == 0:
        if "--json" in r.args or "--jsonl" in r.args:
            text = r.out.strip()
            records = (
                [json.loads(line) for line in text.splitlines()]
                if "--jsonl" in r.args
                else [json.loads(text)]
            )
            for key, number in _numbers(records):
                assert math.isfinite(number), f"{where}: {key} = {number}"
                if _is_size_or_time(key):
                    assert number >= 0, f"{where}: {key} = {number}"
            for rec in _flat(records):
                for key in ("ttft_s", "itl_s"):
                    if key in rec and r.args and r.args[0] == "latency":
                        assert rec[key] is not None, f"{where}: {key} is null"
        if "--csv" in r.args and r.out.strip():
            rows = list(csv.reader(io.StringIO(r.out)))
            assert all(len(row) == len(rows[0]) for row in rows), where
    else:
        assert r.code in (1, 2, 130), where
        assert errors or r.err.strip() or "sweep" in r.args[:1], f"{where}: failed silently"
        if r.code == 2 and r.args[:1] != ["sweep"]:
            assert len(errors) == 1, f"{where}: {r.err[:500]}"


def _flat(records):
    for rec in records:
        if isinstance(rec, list):
            yield from _flat(rec)
        elif isinstance(rec, dict):
            yield rec


def refused(r: Run, *needles: str, code: int = 2) -> None:
    assert r.code == code, f"{r.args}: rc {r.code}: {r.err[:400]} {r.out[:200]}"
    for needle in needles:
        assert needle in r.err, f"{needle!r} not in {r.err[:400]!r}"


def no_temporary_files(directory: Path) -> None:
    assert not [p for p in directory.rglob("*.tmp")], list(directory.rglob("*.tmp"))


# --------------------------------------------------------------------------- hostile files

GOOD_GPU = {
    "name": "fuzz-gpu",
    "memory": "80 GB",
    "bandwidth": "3 TB/s",
    "peak_flops": {"bf16": "900 TFLOP/s"},
    "sources": {"memory": "test", "bandwidth": "test", "peak_flops": "test"},
}

BILLION_LAUGHS = "notes: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"k{i}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9)
)


def profile_dir(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    directory = tmp_path / "profiles"
    directory.mkdir(exist_ok=True)
    for name, content in files.items():
        path = directory / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return directory


def gpu_yaml(**changes) -> str:
    return yaml.safe_dump({**GOOD_GPU, **changes})


def tiny_yaml(**arch_changes) -> str:
    data = yaml.safe_load((TEST_PROFILES / "tiny-test.yaml").read_text())
    data["name"] = "fuzz-tiny"
    data["architecture"].update(arch_changes)
    return yaml.safe_dump(data)


def llama_folder(tmp_path: Path, **changes) -> Path:
    return write_folder(tmp_path / "model", {**TINY_LLAMA, **changes})


# --------------------------------------------------------------------------- the hostile table
# One function per item of the issue's lists; each returns the argv (and sets up files).


def i1_revision_traversal(tmp_path, monkeypatch):
    cache = Path(os.environ["HF_HUB_CACHE"])
    make_hub_cache(cache, "good/repo", TINY_LLAMA)
    (tmp_path / "secret").write_text("TOPSECRET-CONTENT\n")
    r = run("kv", "good/repo@../../../secret", limit=HOSTILE_LIMIT_S)
    refused(r, "not a valid revision")
    assert "TOPSECRET" not in r.err


def i1_poisoned_refs_main(tmp_path, monkeypatch):
    cache = Path(os.environ["HF_HUB_CACHE"])
    make_hub_cache(cache, "good/repo", TINY_LLAMA)
    (cache / "models--good--repo" / "refs" / "main").write_text("../../../TOPSECRET-CONTENT")
    r = run("kv", "good/repo", limit=HOSTILE_LIMIT_S)
    refused(r, "does not hold a commit hash")
    assert "TOPSECRET" not in r.err


@pytest.mark.parametrize("shard", ["../../../../etc/passwd", "/etc/hostname", "sub/../../x.safetensors"])
def i1_shard_outside_the_folder(tmp_path, monkeypatch, shard):
    folder = llama_folder(tmp_path)
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": shard}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    r = run("kv", folder, limit=HOSTILE_LIMIT_S)
    refused(r, "is not a file name inside")
    assert "root:" not in r.err


def i2_alias_bomb_in_a_profile_dir(tmp_path, monkeypatch):
    directory = profile_dir(tmp_path, {"bomb.yaml": gpu_yaml() + BILLION_LAUGHS})
    refused(run("models", "--profiles", directory, limit=HOSTILE_LIMIT_S), "YAML aliases")


def i2_alias_bomb_in_calibration(tmp_path, monkeypatch):
    directory = profile_dir(tmp_path, {"calibration.yaml": "schema_version: 1\ngpus: {}\n" + BILLION_LAUGHS})
    r = run("latency", "llama-3-8b", "--gpu", "h100-sxm", "--profiles", directory, limit=HOSTILE_LIMIT_S)
    refused(r, "calibration.yaml", "YAML aliases")


def i3_cpu_calibration_saved_as_a_gpu(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    (tmp_path / "user").mkdir()
    monkeypatch.setenv("CAPCALC_PROFILES", str(tmp_path / "user"))
    r = run("measure", "--gpu", "--device", "cpu", "--hardware", "h100-sxm", "--save", limit=15)
    refused(r, "is a CPU, not h100-sxm", "--allow-device-mismatch")
    assert not (tmp_path / "user" / "calibration.yaml").exists()


def i3_device_match_by_driver_name(tmp_path, monkeypatch):
    from capcalc.measure.calibrate import check_save_target
    from capcalc.sources.registry import Registry

    reg = Registry.load(include_env=False)
    h100 = reg.gpu("h100-sxm")
    assert check_save_target(reg, h100, "shipped", "NVIDIA H100 80GB HBM3", True, False) is False
    with pytest.raises(CapcalcError, match="not h100-sxm"):
        check_save_target(reg, h100, "shipped", "NVIDIA A100-SXM4-80GB", True, False)
    # the override saves, and the entry is marked
    assert check_save_target(reg, h100, "shipped", "AMD EPYC 7B13", False, True) is True


def i4_sweep_jobs_bounded(tmp_path, monkeypatch):
    import capcalc.cli.sweep as sweep

    seen = []
    original = sweep.run_sweep
    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: seen.append(a[3]) or original(*a, **k))
    r = run("sweep", "kv", "llama-3-8b", "--ctx", "1,2", "--json", "--jobs", "1000000", limit=10)
    assert r.code == 0 and len(json.loads(r.out)) == 2
    assert seen and seen[0] <= 2


def i5_fifo_profile(tmp_path, monkeypatch):
    directory = profile_dir(tmp_path, {})
    os.mkfifo(directory / "fifo.yaml")
    refused(run("models", "--profiles", directory, limit=HOSTILE_LIMIT_S), "not a regular file")


def i5_fifo_safetensors(tmp_path, monkeypatch):
    folder = llama_folder(tmp_path)
    os.mkfifo(folder / "model.safetensors")
    refused(run("kv", folder, limit=HOSTILE_LIMIT_S), "not a regular file")


def i5_dev_zero_profile(tmp_path, monkeypatch):
    directory = profile_dir(tmp_path, {})
    (directory / "zero.yaml").symlink_to("/dev/zero")
    refused(run("gpus", "--profiles", directory, limit=HOSTILE_LIMIT_S), "not a regular file")


def i5_30000_nonrepeating_layers(tmp_path, monkeypatch):
    rng = random.Random(14)
    types = [rng.choice(["sliding_attention", "full_attention"]) for _ in range(30_000)]
    config = {**TINY_LLAMA, "model_type": "qwen2", "num_hidden_layers": 30_000, "layer_types": types}
    config.update(sliding_window=64, use_sliding_window=True, max_window_layers=0)
    r = run("kv", write_folder(tmp_path / "deep", config), "--json", limit=HOSTILE_LIMIT_S)
    assert r.code == 0, r.err


def i5_hundred_million_layers(tmp_path, monkeypatch):
    r = run("kv", llama_folder(tmp_path, num_hidden_layers=100_000_000), limit=HOSTILE_LIMIT_S)
    refused(r, "num_hidden_layers", "above the bound 65,536")


def i5_30mb_junk_profile(tmp_path, monkeypatch):
    junk = "".join(f"junk_key_{i}: {i}\n" for i in range(1_600_000))
    directory = profile_dir(tmp_path, {"junk.yaml": gpu_yaml() + junk})
    refused(run("gpus", "--profiles", directory, limit=HOSTILE_LIMIT_S), "bytes, above the")


@pytest.mark.parametrize(
    "flag",
    [
        "--weight-bandwidth-efficiency",
        "--kv-bandwidth-efficiency",
        "--prefill-flops-efficiency",
        "--prefill-tokens-half-efficiency",
        "--layer-overhead",
        "--moe-layer-overhead",
        "--moe-token-overhead",
        "--step-overhead",
        "--allreduce-latency",
    ],
)
@pytest.mark.parametrize("value", ["1e309", "inf", "nan", "1e309s"])
def i6_non_finite_efficiency_flags(tmp_path, monkeypatch, flag, value):
    if not value.endswith("s") or "overhead" in flag or "latency" in flag:
        r = run("latency", "llama-3-8b", "--gpu", "h100-sxm", flag, value, "--json", limit=HOSTILE_LIMIT_S)
        refused(r, flag)


@pytest.mark.parametrize("field", ["bandwidth", "peak_flops", "memory"])
def i6_profile_inf(tmp_path, monkeypatch, field):
    value = {"bf16": ".inf"} if field == "peak_flops" else ".inf"
    text = gpu_yaml(**{field: value}).replace("'.inf'", ".inf")
    directory = profile_dir(tmp_path, {"inf.yaml": text})
    refused(run("gpus", "--profiles", directory, limit=HOSTILE_LIMIT_S), field, "finite")


def i6_calibration_inf(tmp_path, monkeypatch):
    text = "schema_version: 1\ngpus:\n  h100-sxm:\n    efficiency: {weight_bandwidth_efficiency: .inf}\n"
    directory = profile_dir(tmp_path, {"calibration.yaml": text})
    r = run(
        "latency", "llama-3-8b", "--gpu", "h100-sxm", "--profiles", directory, "--json", limit=HOSTILE_LIMIT_S
    )
    refused(r, "weight_bandwidth_efficiency")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["kv", "llama-3-8b", "--memory", "1e309"], "--memory"),
        (["kv", "llama-3-8b", "--memory", "1e300 PB"], "--memory"),
        (["fit", "llama-3-8b", "--gpu-memory", "1e309"], "--gpu-memory"),
        (
            [
                "plan",
                "llama-3-8b",
                "--rps",
                "10",
                "--prompt",
                "100",
                "--output",
                "10",
                "--price",
                "h100-sxm=inf",
            ],
            "--price",
        ),
        (["plan", "llama-3-8b", "--rps", "inf", "--prompt", "100", "--output", "10"], "--rps"),
        (["littles", "--concurrency", "inf", "--latency", "1s"], "--concurrency"),
        (["littles", "--throughput", "inf", "--latency", "1s", "--concurrency", "inf"], ""),
        (["littles", "--throughput", "1e300/s", "--latency", "1e300s"], "too far apart"),
        (["kv", "llama-3-8b", "--ctx", "9" * 400], "--ctx"),
        (["kv", "llama-3-8b", "--batch", "9" * 400], "--batch"),
    ],
)
def i6_non_finite_and_absurd_numbers(tmp_path, monkeypatch, args, needle):
    refused(run(*args, limit=HOSTILE_LIMIT_S), needle)


def i6_400_digit_profile_integer(tmp_path, monkeypatch):
    directory = profile_dir(tmp_path, {"big.yaml": tiny_yaml(vocab_size=10**400)})
    refused(run("models", "--profiles", directory, limit=HOSTILE_LIMIT_S), "vocab_size", "above the bound")


def i6_vocab_10_pow_400_config(tmp_path, monkeypatch):
    refused(run("kv", llama_folder(tmp_path, vocab_size=10**400), limit=HOSTILE_LIMIT_S), "vocab_size")


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"model_type": ["llama"]}, "model_type"),
        ({"architectures": 42}, "architectures"),
        ({"layer_types": 7}, "layer_types"),
        ({"quantization_config": [1, 2]}, "quantization_config"),
        ({"torch_dtype": {"a": 1}}, "torch_dtype"),
        ({"num_hidden_layers": "2"}, "num_hidden_layers"),
        ({"rope_scaling": 3}, "rope_scaling"),
    ],
)
def i7_wrong_typed_config_fields(tmp_path, monkeypatch, changes, needle):
    refused(run("kv", llama_folder(tmp_path, **changes), limit=HOSTILE_LIMIT_S), needle, "config.json")


def i7_deep_nesting_config(tmp_path, monkeypatch):
    folder = llama_folder(tmp_path)
    deep = "[" * 200_000 + "]" * 200_000
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA)[:-1] + ', "x": ' + deep + "}")
    refused(run("kv", folder, limit=HOSTILE_LIMIT_S), "config.json", "nested deeper")


def i7_deep_nesting_profile(tmp_path, monkeypatch):
    directory = profile_dir(tmp_path, {"deep.yaml": "notes: " + "[" * 200_000 + "]" * 200_000 + "\n"})
    refused(run("models", "--profiles", directory, limit=HOSTILE_LIMIT_S), "deep.yaml")


def i7_non_utf8_profile(tmp_path, monkeypatch):
    directory = profile_dir(tmp_path, {"latin1.yaml": gpu_yaml().encode() + b"notes: caf\xe9\n"})
    refused(run("gpus", "--profiles", directory, limit=HOSTILE_LIMIT_S), "latin1.yaml", "not UTF-8")


def i7_non_utf8_config(tmp_path, monkeypatch):
    folder = llama_folder(tmp_path)
    (folder / "config.json").write_bytes(json.dumps(TINY_LLAMA).encode()[:-1] + b', "n": "caf\xe9"}')
    refused(run("kv", folder, limit=HOSTILE_LIMIT_S), "config.json", "not UTF-8")


def i7_dangling_symlink(tmp_path, monkeypatch):
    directory = profile_dir(tmp_path, {})
    (directory / "gone.yaml").symlink_to(tmp_path / "nowhere.yaml")
    refused(run("models", "--profiles", directory, limit=HOSTILE_LIMIT_S), "gone.yaml", "cannot read")


def i7_symlink_loop(tmp_path, monkeypatch):
    directory = profile_dir(tmp_path, {})
    (directory / "a.yaml").symlink_to(directory / "b.yaml")
    (directory / "b.yaml").symlink_to(directory / "a.yaml")
    refused(run("models", "--profiles", directory, limit=HOSTILE_LIMIT_S), "cannot read")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["kv", "a" * 300], "longer than 255"),
        (["show", "x/" + "b" * 300], "longer than 255"),
        (["kv", "llama-3-8b", "--profiles", "c" * 5000], "longer than 4096"),
        (["kv", "llama-3-8b", "--tp", "²"], "--tp"),
        (["kv", "llama-3-8b", "--batch", "²"], "--batch"),
        (["latency", "llama-3-8b", "--gpu", "h100-sxm", "--batch", "٣"], "--batch"),
        (["plan", "llama-3-8b", "--rps", "10", "--prompt", "100", "--output", "10", "--tp", "²"], "--tp"),
        (["kv", "llama-3-8b", "--memory", "٣GB"], "--memory"),
        (["kv", "nul\x00name"], "control characters"),
    ],
)
def i7_names_and_digits(tmp_path, monkeypatch, args, needle):
    refused(run(*args, limit=HOSTILE_LIMIT_S), needle)


def i7_import_long_name(tmp_path, monkeypatch):
    r = run(
        "import",
        llama_folder(tmp_path),
        "--name",
        "n" * 300,
        "--out",
        tmp_path / "out",
        limit=HOSTILE_LIMIT_S,
    )
    refused(r, "--name")


def i7_import_out_under_proc(tmp_path, monkeypatch):
    r = run("import", llama_folder(tmp_path), "--out", "/proc/capcalc-test", limit=HOSTILE_LIMIT_S)
    refused(r, "/proc/capcalc-test", "cannot write")


def i7_measure_past_learned_positions(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    r = run(
        "measure", "gpt2", "--device", "cpu", "--ctx", "2000", "--prompt", "none", "--batch", "1", limit=15
    )
    refused(r, "learned position table of 1024")


def i8_fit_tp_0(tmp_path, monkeypatch):
    refused(run("fit", "llama-3-8b", "--gpu", "h100-sxm", "--tp", "0", limit=HOSTILE_LIMIT_S), "--tp")


@pytest.mark.parametrize("dtype", ["bf16", "int4"])
def i8_group_size_0(tmp_path, monkeypatch, dtype):
    r = run(
        "fit",
        "llama-3-8b",
        "--gpu",
        "h100-sxm",
        "--weight-dtype",
        dtype,
        "--group-size",
        "0",
        limit=HOSTILE_LIMIT_S,
    )
    refused(r, "--group-size")


def i8_empty_strings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(run("kv", "llama-3-8b", "--profiles", "", limit=HOSTILE_LIMIT_S), "--profiles", "empty")
    r = run("import", llama_folder(tmp_path), "--out", "", limit=HOSTILE_LIMIT_S)
    refused(r, "--out", "empty")
    assert not list(tmp_path.glob("*.yaml"))
    refused(run("kv", "", limit=HOSTILE_LIMIT_S), "empty")


def i8_two_profiles_same_name(tmp_path, monkeypatch):
    directory = profile_dir(tmp_path, {"one.yaml": gpu_yaml(), "two.yaml": gpu_yaml()})
    refused(run("gpus", "--profiles", directory, limit=HOSTILE_LIMIT_S), "duplicate name 'fuzz-gpu'")


def i8_duplicate_yaml_key(tmp_path, monkeypatch):
    directory = profile_dir(tmp_path, {"dup.yaml": gpu_yaml() + "bandwidth: 1 TB/s\n"})
    refused(run("gpus", "--profiles", directory, limit=HOSTILE_LIMIT_S), "bandwidth", "duplicate key")


def i8_memory_reported_above_memory(tmp_path, monkeypatch):
    text = gpu_yaml(memory_reported="90 GB", sources={**GOOD_GPU["sources"], "memory_reported": "test"})
    directory = profile_dir(tmp_path, {"rep.yaml": text})
    refused(run("gpus", "--profiles", directory, limit=HOSTILE_LIMIT_S), "memory_reported", "above memory")


def i8_fit_shortfall_not_a_negative_size(tmp_path, monkeypatch):
    r = run("fit", "llama-3.1-405b", "--gpu", "h100-sxm", "--json", limit=HOSTILE_LIMIT_S)
    assert r.code == 1, r.err  # nothing fits: exit 1, as plan does
    rec = json.loads(r.out)
    assert rec["kv_cache_bytes_per_gpu"] == 0
    assert rec["kv_cache_shortfall_bytes_per_gpu"] > 0
    assert all(v >= 0 for k, v in _numbers(rec) if "bytes" in k)


def i8_measure_every_point_skipped(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    r = run(
        "measure", "tiny-moe-test", "--profiles", TEST_PROFILES, "--device", "cpu",
        "--batch", "16000000", "--ctx", "24", "--prompt", "none", limit=15,
    )  # fmt: skip
    assert r.code != 0


def i9_import_exclusive_create(tmp_path, monkeypatch):
    target = tmp_path / "p.yaml"
    write_atomic(target, "first\n", exclusive=True)
    with pytest.raises(FileExistsError):  # the second writer loses; the first file stands
        write_atomic(target, "second\n", exclusive=True)
    assert target.read_text() == "first\n"
    no_temporary_files(tmp_path)
    out = tmp_path / "out"
    assert run("import", llama_folder(tmp_path), "--out", out, "--name", "m").code == 0
    write_folder(tmp_path / "model", {**TINY_LLAMA, "num_hidden_layers": 4})
    before = (out / "m.yaml").read_text()
    refused(run("import", tmp_path / "model", "--out", out, "--name", "m"), "already exists", code=1)
    assert (out / "m.yaml").read_text() == before
    no_temporary_files(out)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def i9_written_files_honour_the_umask(tmp_path, monkeypatch, umask, mode):
    previous = os.umask(umask)
    try:
        path = write_atomic(tmp_path / "f.yaml", "x: 1\n")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode


def i9_capcalc_profiles_new_dir(tmp_path, monkeypatch):
    new = tmp_path / "new" / "dir"
    monkeypatch.setenv("CAPCALC_PROFILES", str(new))
    r = run("import", llama_folder(tmp_path), "--name", "fresh", limit=HOSTILE_LIMIT_S)
    assert r.code == 0, r.err
    assert (new / "fresh.yaml").is_file()


def i1_benchmark_result_files(tmp_path, monkeypatch):
    from capcalc.core.inputs import load_records

    good = tmp_path / "ok.jsonl"
    good.write_text('{"ttft_s": 0.1, "prompt_tokens": 512}\n{"ttft_s": 0.2, "prompt_tokens": 1024}\n')
    assert [r["ttft_s"] for r in load_records(good)] == [0.1, 0.2]
    for name, text, needle in [
        ("inf.jsonl", '{"ttft_s": Infinity}\n', "finite"),
        ("neg.json", '[{"itl_s": -1}]', "at least 0"),
        ("big.csv", "ttft_s,n\n1e309,1\n", "finite"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, "nested deeper"),
        ("types.json", "[1, 2]", "expected a record"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(CapcalcError, match=needle):
            load_records(tmp_path / name)
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(CapcalcError, match="not a regular file"):
        load_records(tmp_path / "fifo.json")


def i1_messages_carry_a_bounded_excerpt(tmp_path, monkeypatch):
    from capcalc.core.inputs import excerpt

    shared = ["lol"] * 9
    for _ in range(9):  # a billion-laughs value: 9^10 leaves, one shared list per level
        shared = [shared] * 9
    assert len(excerpt(shared)) <= 64
    assert len(excerpt("x" * 10_000_000)) <= 64
    assert len(excerpt(10**400)) <= 64


@pytest.mark.parametrize(
    "revision, ok",
    [("main", True), ("v1.0", True), ("refs/pr/1", True), ("a" * 40, True), ("../../../secret", False),
     ("main/../x", False), ("/etc/passwd", False), ("-rf", False), ("a..b", False), ("x.lock", False),
     ("a b", False), ("a@{1}", False), ("a\\b", False), ("", False), ("x" * 300, False), (".hidden", False)],
)  # fmt: skip
def i1_revision_is_a_git_ref_name(tmp_path, monkeypatch, revision, ok):
    from capcalc.core.inputs import check_revision

    if ok:
        assert check_revision(revision) == revision
    else:
        with pytest.raises(CapcalcError, match="not a valid revision"):
            check_revision(revision)


HOSTILE = {name: case for name, case in dict(globals()).items() if name.startswith("i") and name[1].isdigit()}


for _name, _case in HOSTILE.items():
    globals()[f"test_{_name}"] = _case


def test_every_issue_item_has_a_case():
    items = {name.split("_")[0] for name in HOSTILE}
    assert items == {f"i{n}" for n in range(1, 10)}


# --------------------------------------------------------------------------- hypothesis: command lines

HOSTILE_TEXT = st.sampled_from(
    ["", " ", "²", "٣", "inf", "-inf", "nan", "1e309", "-1", "0", "9" * 400, "1e-320", "NaN GB",
     "1e300 PB", "8GB", "80 GiB", "0.5", "1_000", "+3", "abc", "x" * 300, "a/" * 3000, "\x00", "-0",
     "1,2,3", "1,,2", ",", "auto", "none", "1e309s", "10ms", "20/s", "inf/s", "h100-sxm=inf",
     "h100-sxm=2.5", "../../etc/passwd", "/dev/zero", "org/name@../../x", "good/repo@main"]
)  # fmt: skip
NUMBER_TEXT = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=0, max_value=100_000).map(str),
)
VALUE = st.one_of(HOSTILE_TEXT, NUMBER_TEXT, st.text(max_size=40))

OPTIONS = {
    "kv": ["--ctx", "--batch", "--kv-dtype", "--tp", "--memory"],
    "fit": ["--gpu", "--gpu-memory", "--tp", "--pp", "--n-gpus", "--concurrency", "--max-model-len",
            "--weight-dtype", "--kv-dtype", "--group-size", "--gpu-memory-utilization", "--block-size",
            "--max-num-seqs", "--max-num-batched-tokens", "--activation-bytes", "--overhead-bytes",
            "--cudagraph-bytes", "--kv-cache-memory"],
    "latency": ["--gpu", "--prompt", "--output", "--batch", "--weight-dtype", "--kv-dtype", "--tp",
                "--compute-dtype", "--weight-bandwidth-efficiency", "--kv-bandwidth-efficiency",
                "--prefill-flops-efficiency", "--prefill-tokens-half-efficiency", "--layer-overhead",
                "--moe-layer-overhead", "--moe-token-overhead", "--step-overhead", "--allreduce-latency"],
    "roofline": ["--gpu", "--batch", "--ctx", "--prompt", "--weight-dtype", "--kv-dtype", "--tp"],
    "plan": ["--rps", "--prompt", "--output", "--gpu", "--tp", "--weight-dtype", "--kv-dtype",
             "--ttft-slo", "--itl-slo", "--e2e-slo", "--price", "--gpu-memory-utilization", "--max-num-seqs"],
    "littles": ["--concurrency", "--throughput", "--latency"],
    "show": [],
}  # fmt: skip
REQUIRED = {
    "latency": ["--gpu", "h100-sxm"],
    "roofline": ["--gpu", "h100-sxm"],
    "fit": ["--gpu", "h100-sxm"],
    "plan": ["--rps", "20", "--prompt", "512", "--output", "128", "--gpu", "h100-sxm"],
}
#: `plan` over every shipped GPU takes about 6 s of CPU before issue 14 and after
#: (docs/reliability.md: found, not fixed here); the fuzzer may widen --gpu to all
SLOW = {"plan": 30.0}
MODELS = st.sampled_from(["llama-3-8b", "llama-3.2-1b", "gpt2", "mixtral-8x7b", "deepseek-v3"]) | VALUE


@st.composite
def command_lines(draw):
    command = draw(st.sampled_from(sorted(OPTIONS)))
    args = [command]
    if command != "littles":
        args.append(draw(MODELS))
    if command == "show":
        args[-1] = draw(MODELS | st.sampled_from(["h100-sxm", "a100-80gb-sxm"]))
    base = list(REQUIRED.get(command, []))
    for option in draw(st.lists(st.sampled_from(OPTIONS[command] or ["--json"]), max_size=4)):
        base += [option] if option == "--json" else [option, draw(VALUE)]
    args += base
    args.append(draw(st.sampled_from(["--json", "--jsonl", "--csv", "--json"])))
    if draw(st.booleans()) and command in ("kv", "latency", "fit") and draw(st.integers(0, 9)) == 0:
        args = ["sweep", *args[:-1], "--json"]
    return args


@FUZZ
@given(command_lines())
def test_fuzz_command_lines(args):
    command = args[1] if args[0] == "sweep" else args[0]
    run(*args, limit=SLOW.get(command, FUZZ_LIMIT_S))


# --------------------------------------------------------------------------- hypothesis: profile files

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20) | HOSTILE_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)  # fmt: skip
ARCH_KEYS = ["num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim",
             "intermediate_size", "vocab_size", "max_context", "tie_word_embeddings", "mlp",
             "position_embedding", "norms_per_layer"]  # fmt: skip
GPU_KEYS = ["memory", "memory_reported", "bandwidth", "peak_flops", "price_per_hour", "efficiency", "name"]


@FUZZ
@given(
    st.dictionaries(st.sampled_from(ARCH_KEYS), JSONISH | st.integers(0, 10**9), max_size=3),
    st.dictionaries(st.sampled_from(GPU_KEYS), JSONISH, max_size=2),
)
def test_fuzz_profile_files(tmp_path_factory, arch, gpu):
    directory = tmp_path_factory.mktemp("fuzz-profiles")
    model = yaml.safe_load(tiny_yaml())
    model["architecture"].update(arch)
    (directory / "model.yaml").write_text(yaml.safe_dump(model))
    hw = {**GOOD_GPU, **gpu}
    hw["sources"] = {**GOOD_GPU["sources"], "memory_reported": "t", "price": "t", "efficiency": "t"}
    (directory / "gpu.yaml").write_text(yaml.safe_dump(hw))
    r = run("models", "--profiles", directory, "--json")
    if r.code == 0:
        run("latency", "fuzz-tiny", "--gpu", hw["name"] if isinstance(hw.get("name"), str) else "h100-sxm",
            "--profiles", directory, "--json")  # fmt: skip


# --------------------------------------------------------------------------- hypothesis: config.json

CONFIG_KEYS = sorted(TINY_LLAMA) + ["layer_types", "quantization_config", "text_config", "head_dim",
                                    "sliding_window", "rope_scaling", "num_local_experts", "dtype"]  # fmt: skip


@FUZZ
@given(
    st.sampled_from(["llama", "qwen2", "mistral", "gemma2", "mixtral", "gpt2", "deepseek_v3", "falcon"]),
    st.dictionaries(st.sampled_from(CONFIG_KEYS), JSONISH | st.integers(0, 10**12), max_size=3),
    st.booleans(),
)
def test_fuzz_config_json(tmp_path_factory, model_type, changes, with_index):
    folder = tmp_path_factory.mktemp("fuzz-model")
    config = {**TINY_LLAMA, "model_type": model_type, **changes}
    try:
        text = json.dumps(config, allow_nan=True)
    except (TypeError, ValueError):
        return
    (folder / "config.json").write_text(text)
    if with_index:
        write_safetensors(folder / "model-00001.safetensors", {"model.norm.weight": ("BF16", (64,))})
        index = {"weight_map": {"model.norm.weight": changes.get("dtype", "model-00001.safetensors")}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    run("kv", folder, "--json")
    out = folder / "out"
    r = run("import", folder, "--out", out, "--name", "fuzzed", "--json")
    if out.exists():
        no_temporary_files(out)
    if r.code == 0:
        yaml.safe_load((out / "fuzzed.yaml").read_text())  # written whole


# --------------------------------------------------------------------------- hypothesis: Hub revisions


@FUZZ
@given(st.text(max_size=30) | HOSTILE_TEXT)
def test_fuzz_revisions_never_leave_the_cache(revision):
    cache = Path(os.environ["HF_HUB_CACHE"])
    if not (cache / "models--good--repo").exists():
        make_hub_cache(cache, "good/repo", TINY_LLAMA)
    r = run("kv", f"good/repo@{revision}", "--json")
    assert COMMIT not in r.err or r.code == 0


# --------------------------------------------------------------------------- hypothesis: the linear layout search


def _layout_quadratic(types):
    """The search it replaced: try every period (quadratic)."""
    n = len(types)
    for period in range(1, n):
        if all(types[i] == types[i % period] for i in range(n)):
            return {"pattern": types[:period]}
    return {"layer_types": list(types)}


@FUZZ
@given(st.lists(st.sampled_from(["sliding", "full"]), min_size=1, max_size=60), st.integers(1, 5))
def test_linear_layout_search_agrees_with_trying_every_period(base, repeats):
    from capcalc.sources.hfconfig import _layout

    types = (base * repeats)[: len(base) * repeats - (repeats > 1)]
    assert _layout(types) == _layout_quadratic(types)
