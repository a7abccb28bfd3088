"""`capcalc sweep`: one row per combination, the single command's keys, errors as rows."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capcalc.cli.sweep_spec import Param, csv_columns, parse_sweep_args, sweep_exit_code
from capcalc.core.errors import CapcalcError

KV_PARAMS = [
    Param("model"),
    Param("ctx", ("--ctx",)),
    Param("batch", ("--batch",)),
    Param("flag", ("--flag",), ("--no-flag",), is_flag=True),
    Param("profiles", ("--profiles",), multiple=True),
]


def single_keys(cli, *args) -> list[str]:
    r = cli(*args, "--json")
    assert r.code == 0, r.err
    return list(r.json())


def csv_rows(text: str) -> tuple[list[str], list[dict]]:
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames), list(reader)


# --------------------------------------------------------------------------- output shape


def test_csv_header_once_one_row_per_combination_same_keys(cli):
    r = cli("sweep", "kv", "llama-3-8b,qwen3-8b", "--ctx", "1024,8192", "--batch", "1,4,16", "--csv")
    assert r.code == 0, r.err
    assert r.err == ""
    header, rows = csv_rows(r.out)
    # the single command's JSON keys, with the sweep's index first and the error column last
    assert header == ["sweep_index", *single_keys(cli, "kv", "llama-3-8b", "--ctx", "1024")] + ["error"]
    assert r.out.count("sweep_index") == 1  # the header, once
    assert len(r.out.splitlines()) == 1 + 2 * 2 * 3  # nothing else on stdout
    assert [int(row["sweep_index"]) for row in rows] == list(range(12))
    # the last axis varies fastest
    assert [(row["model"], row["ctx"], row["batch"]) for row in rows[:4]] == [
        ("llama-3-8b", "1024", "1"),
        ("llama-3-8b", "1024", "4"),
        ("llama-3-8b", "1024", "16"),
        ("llama-3-8b", "8192", "1"),
    ]
    assert all(row["error"] == "" for row in rows)


def test_rows_carry_what_the_single_command_computes(cli):
    r = cli("sweep", "kv", "llama-3-8b", "--ctx", "1024,8192", "--batch", "1,4", "--jsonl")
    rows = [json.loads(line) for line in r.out.splitlines()]
    for row in rows:
        single = cli("kv", "llama-3-8b", "--ctx", row["ctx"], "--batch", row["batch"], "--json").json()
        assert row == {"sweep_index": row["sweep_index"], **single}
    # seed: 128 KiB per token for Llama-3-8B, so 8192 tokens x 4 sequences = 4 GiB
    assert rows[-1]["kv_bytes_total"] == 128 * 1024 * 8192 * 4


@pytest.mark.parametrize(
    "args",
    [
        ("fit", "llama-3-8b", "--gpu", "h100-sxm", "--ctx", "8192"),
        ("latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", "512", "--output", "64"),
    ],
)
def test_jsonl_keys_match_each_command(cli, args):
    command, model, *options = args
    r = cli("sweep", command, f"{model},qwen3-8b", *options, "--jsonl")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert len(lines) == 2
    keys = single_keys(cli, *args)
    for i, line in enumerate(lines):
        row = json.loads(line)
        assert list(row) == ["sweep_index", *keys]
        assert row["sweep_index"] == i


def test_json_is_one_array(cli):
    r = cli("sweep", "kv", "llama-3-8b", "--ctx", "1024,2048,4096", "--json")
    rows = r.json()
    assert [row["ctx"] for row in rows] == [1024, 2048, 4096]
    assert [row["kv_bytes_per_sequence"] for row in rows] == [128 * 1024 * c for c in (1024, 2048, 4096)]


def test_table_is_the_default(cli):
    r = cli("sweep", "kv", "llama-3-8b", "--ctx", "1024,2048")
    assert r.code == 0
    assert "sweep kv: 2 combinations" in r.out and "134 MB (128 MiB)" in r.out


def test_parallel_workers_give_the_same_rows(cli):
    args = ("sweep", "kv", "llama-3-8b,qwen3-8b", "--ctx", "1024,2048,4096", "--batch", "1,2", "--csv")
    serial = cli(*args, "--jobs", "1")
    parallel = cli(*args, "--jobs", "2")
    assert parallel.code == serial.code == 0
    assert parallel.out == serial.out


# --------------------------------------------------------------------------- errors as rows

UNKNOWN_NOPE = "unknown model 'nope'; closest: gpt-oss-20b, deepseek-v3, gpt-oss-120b (see `capcalc models`)"


def test_an_invalid_combination_is_a_row_not_an_abort(cli):
    r = cli("sweep", "kv", "llama-3-8b,nope,qwen3-8b", "--ctx", "1024", "--jsonl")
    assert r.code == 0  # some rows succeeded
    rows = [json.loads(line) for line in r.out.splitlines()]
    assert len(rows) == 3
    assert rows[1] == {"sweep_index": 1, "model": "nope", "ctx": 1024, "error": UNKNOWN_NOPE}
    assert "error" not in rows[0] and "error" not in rows[2]
    assert r.err.strip() == "capcalc: sweep: 1 of 3 combinations failed (see the 'error' field)"


def test_a_click_usage_error_is_a_row_too(cli):
    r = cli("sweep", "kv", "llama-3-8b", "--batch", "2,lots", "--jsonl")
    rows = [json.loads(line) for line in r.out.splitlines()]
    assert rows[1]["batch"] == "lots"
    assert rows[1]["error"].startswith("--batch: expected a whole number")


def test_csv_header_is_the_commands_even_when_the_first_row_fails(cli):
    r = cli("sweep", "kv", "nope,llama-3-8b", "--ctx", "1024", "--csv")
    assert r.code == 0
    header, rows = csv_rows(r.out)
    assert header == ["sweep_index", *single_keys(cli, "kv", "llama-3-8b"), "error"]
    assert rows[0]["model"] == "nope" and rows[0]["ctx"] == "1024" and rows[0]["error"] == UNKNOWN_NOPE
    assert rows[1]["error"] == "" and rows[1]["kv_bytes_per_token"] == str(128 * 1024)


def test_every_row_failed_exits_non_zero(cli):
    r = cli("sweep", "kv", "nope,nada", "--ctx", "1024", "--csv")
    assert r.code == 2  # every failure a usage error
    header, rows = csv_rows(r.out)
    assert header == ["sweep_index", "model", "ctx", "error"]
    assert [row["model"] for row in rows] == ["nope", "nada"]
    assert r.err.strip() == "capcalc: sweep: 2 of 2 combinations failed (see the 'error' field)"


def test_inputs_the_record_names_differently_get_their_own_csv_column(cli):
    # latency echoes --prompt as prompt_tokens: a failed row still shows the prompt it was given
    r = cli(
        "sweep",
        "latency",
        "nope,llama-3-8b",
        "--gpu",
        "h100-sxm",
        "--prompt",
        "512",
        "--output",
        "8",
        "--csv",
    )
    header, rows = csv_rows(r.out)
    assert header[-3:] == ["prompt", "output", "error"]
    assert rows[0]["prompt"] == "512" and rows[0]["error"] == UNKNOWN_NOPE
    assert rows[1]["prompt"] == "512" and rows[1]["prompt_tokens"] == "512"


@pytest.mark.parametrize(
    "args, message",
    [
        (["kv", "llama-3-8b", "--cxt", "1024"], "`capcalc kv` has no option --cxt (did you mean --ctx?)"),
        (["kv", "llama-3-8b", "--ctx"], "--ctx needs a value"),
        (
            ["kv", "llama-3-8b", "--ctx", "1024,,2048"],
            "--ctx: empty value in '1024,,2048' (separate values with single commas)",
        ),
        (["models", "x"], "sweep runs one of kv, fit, roofline, latency, plan, not 'models'"),
        (["kv", "--ctx", "1024"], "missing MODEL: `capcalc sweep kv MODEL[,...] [--option v1,v2,...]`"),
        (["kv", "llama-3-8b", "--jobs", "0"], "--jobs must be at least 1, got 0"),
        (
            ["fit", "llama-3-8b", "--gpu", "h100-sxm", "--quantize-embeddings=maybe"],
            "--quantize-embeddings is an on/off flag: sweep it with --quantize-embeddings=true,false, got 'maybe'",
        ),
    ],
)
def test_sweep_usage_errors(cli, args, message):
    r = cli("sweep", *args)
    assert r.code == 2 and r.out == ""
    assert r.err.strip() == f"capcalc: error: {message}"


# --------------------------------------------------------------------------- flags and pass-through


def test_flags_sweep_on_and_off(cli):
    r = cli(
        "sweep", "fit", "gemma-3-12b", "--gpu", "h100-sxm", "--ctx", "32768",
        "--disable-hybrid-kv-cache-manager=false,true", "--jsonl",
    )  # fmt: skip
    assert r.code == 0, r.err
    rows = [json.loads(line) for line in r.out.splitlines()]
    assert [row["hybrid_kv_cache_manager"] for row in rows] == [True, False]
    # the hybrid manager keeps only the window for sliding layers: more tokens fit
    assert rows[0]["max_concurrency"] > rows[1]["max_concurrency"]


def test_parse_sweep_args():
    plan = parse_sweep_args(
        "kv",
        ["a,b", "c", "--ctx", "1,2", "--ctx=3", "--flag", "--profiles", "x,y", "--batch", "7"],
        KV_PARAMS,
    )
    assert [(a.param.name, a.values) for a in plan.axes] == [
        ("model", ("a", "b", "c")),
        ("ctx", ("1", "2", "3")),
        ("flag", ("true",)),
        ("batch", ("7",)),
    ]
    assert plan.fixed == ("--profiles", "x,y")  # a repeatable option is not split or swept
    assert plan.size == 9 and plan.varying == ("model", "ctx")
    first = next(plan.combinations())
    assert first.argv == ["a", "--ctx", "1", "--flag", "--batch", "7", "--profiles", "x,y"]
    assert first.inputs == {"model": "a", "ctx": 1, "flag": True, "batch": 7}
    off = parse_sweep_args("kv", ["m", "--flag=no"], KV_PARAMS)
    assert next(off.combinations()).argv == ["m", "--no-flag"]
    assert next(parse_sweep_args("kv", ["m", "--no-flag"], KV_PARAMS).combinations()).inputs["flag"] is False


def test_csv_columns_and_exit_code():
    assert csv_columns({"sweep_index": 0, "model": "m", "prompt_tokens": 5}, ["model", "prompt"]) == [
        "sweep_index", "model", "prompt_tokens", "prompt", "error",
    ]  # fmt: skip
    assert sweep_exit_code(1, [2, 2]) == 0
    assert sweep_exit_code(0, [2, 2]) == 2
    assert sweep_exit_code(0, [2, 1]) == 1
    assert sweep_exit_code(0, []) == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(1, 10**6), min_size=1, max_size=5, unique=True), min_size=1, max_size=3))
def test_combinations_are_the_cartesian_product(value_lists):
    names = ["ctx", "batch", "tp"]
    params = [Param("model"), *(Param(n, (f"--{n}",)) for n in names)]
    tokens = ["m"]
    for name, values in zip(names, value_lists, strict=False):
        tokens += [f"--{name}", ",".join(map(str, values))]
    plan = parse_sweep_args("kv", tokens, params)
    combos = list(plan.combinations())
    expected = 1
    for values in value_lists:
        expected *= len(values)
    assert len(combos) == plan.size == expected
    assert [c.index for c in combos] == list(range(expected))
    assert len({tuple(c.argv) for c in combos}) == expected  # no combination twice
    # the last axis varies fastest
    last = names[len(value_lists) - 1]
    assert [c.inputs[last] for c in combos[: len(value_lists[-1])]] == value_lists[-1]


def test_parse_errors_are_capcalc_errors():
    with pytest.raises(CapcalcError, match="takes no positional argument"):
        parse_sweep_args("x", ["m"], [Param("ctx", ("--ctx",))])


# --------------------------------------------------------------------------- stderr: notes, progress


def test_notes_that_differ_in_their_numbers_are_one_line_with_a_count(cli):
    # 3 batches over one H100's KV cache for 5,000-token requests (about 84: 128 KiB per token)
    r = cli("sweep", "latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", "4000", "--output", "1000",
            "--batch", "1,256,512,1024", "--csv")  # fmt: skip
    assert r.code == 0, r.err
    lines = r.err.splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith("capcalc: note: vLLM's KV cache on h100-sxm holds")
    assert lines[0].endswith("fewer than --batch 256 (see `capcalc fit`) (x3, the first shown)")
    _, rows = csv_rows(r.out)
    assert [row["fits_in_memory"] for row in rows] == ["True", "False", "False", "False"]


def test_a_note_every_run_repeats_word_for_word_is_counted_once_per_run(cli):
    r = cli("sweep", "latency", "llama-3-8b", "--gpu", "h100-sxm,a100-80gb-sxm", "--prompt", "8000",
            "--output", "500", "--csv")  # fmt: skip
    assert r.err.splitlines() == ["capcalc: note: 8,500 tokens exceed llama-3-8b's max context (8,192) (x2)"]


def test_note_kinds_keep_names_apart():
    from capcalc.cli.sweep import NoteSummary

    notes = NoteSummary()
    notes.add(["llama-3-8b at tp=1 on h100-sxm with 1,100-token requests: does not fit"])
    notes.add(["llama-3-8b at tp=2 on h100-sxm with 9,000-token requests: does not fit"])
    notes.add(["llama-3-70b at tp=1 on h100-sxm with 1,100-token requests: does not fit"])
    notes.add(["llama-3-8b at tp=1 on a100-80gb-sxm with 1,100-token requests: does not fit"] * 2)
    assert notes.lines() == [
        "llama-3-8b at tp=1 on h100-sxm with 1,100-token requests: does not fit (x2, the first shown)",
        "llama-3-70b at tp=1 on h100-sxm with 1,100-token requests: does not fit",
        "llama-3-8b at tp=1 on a100-80gb-sxm with 1,100-token requests: does not fit",
    ]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_for_a_large_sweep_on_a_terminal():
    from capcalc.cli.sweep import PROGRESS_THRESHOLD, show_progress

    tty, pipe = _Terminal(), io.StringIO()
    big, small = PROGRESS_THRESHOLD, PROGRESS_THRESHOLD - 1
    assert show_progress(big, "csv", stderr=tty, stdout=pipe)
    assert show_progress(big, "table", stderr=tty, stdout=tty)  # the table comes after the bar
    assert not show_progress(small, "csv", stderr=tty, stdout=pipe)
    assert not show_progress(big, "csv", stderr=pipe, stdout=pipe)
    assert not show_progress(big, "jsonl", stderr=tty, stdout=tty)  # rows stream to that terminal


def test_progress_bar_counts_to_the_end_and_erases_itself():
    from capcalc.cli.sweep import Progress

    out = _Terminal()
    bar = Progress(1000, out)
    for _ in range(1000):
        bar.advance()
    bar.close()
    frames = out.getvalue().split("\r")[1:]
    assert len(frames) == 1 + 100 + 1  # the empty bar, a redraw per 1 %, the erase
    assert frames[0] == "sweep [" + "." * 30 + "] 0/1,000"
    assert frames[-2] == "sweep [" + "#" * 30 + "] 1,000/1,000"
    assert frames[-1] == "\x1b[2K"


def test_a_piped_sweep_writes_no_progress(cli):
    size = 4 * 60  # at least the threshold
    r = cli("sweep", "kv", "llama-3-8b", "--ctx", "1024,2048,4096,8192",
            "--batch", ",".join(map(str, range(1, 61))), "--csv")  # fmt: skip
    assert r.code == 0 and r.err == ""
    assert len(r.out.splitlines()) == 1 + size


def test_parallel_workers_hand_their_notes_back(cli):
    args = ("sweep", "latency", "llama-3-8b", "--gpu", "h100-sxm", "--prompt", "3000", "--output", "1000",
            "--batch", "1,256,512,1024", "--csv")  # fmt: skip
    parallel, serial = cli(*args, "--jobs", "2"), cli(*args, "--jobs", "1")
    assert parallel.out == serial.out
    assert parallel.err.count("capcalc: note:") == 1
    assert parallel.err.strip().endswith("(x3, the first shown)")
