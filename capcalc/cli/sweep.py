"""`capcalc sweep`: a grid of any of kv, fit, roofline, latency, plan, for a spreadsheet.

Each combination's arguments are parsed by the target command's own Click command
(its types, defaults and checks), then the command's compute function -- the library
calls the command makes (:data:`capcalc.cli.common.COMPUTE`) -- gives its records as
Python dicts, with no rendering and no JSON round trip. The Click command is built
once; the profiles and calibration are read once (:mod:`capcalc.api` caches them). Rows stream to stdout as they
are produced; a failed combination is a row with an ``error`` field.

stderr carries a progress bar when it is a terminal and the sweep is large
(:data:`PROGRESS_THRESHOLD`), and the runs' notes after the rows: notes that differ only
in their numbers are one line, the first of them with the count (``... (x1121)``);
the rows themselves say which combinations a note was about (``fits_in_memory``,
``within_max_context``, ``error``).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import sys
from collections.abc import Iterator
from typing import Annotated, Optional

import typer

from capcalc.cli.common import (
    COMPUTE,
    CsvFlag,
    JsonFlag,
    JsonlFlag,
    app,
    collapse_groups,
    note,
    session,
)
from capcalc.cli.sweep_spec import (
    ERROR_KEY,
    INDEX_KEY,
    SWEEPABLE,
    Combination,
    Param,
    SweepPlan,
    csv_columns,
    error_row,
    fill_inputs,
    parse_sweep_args,
    record_rows,
    sweep_exit_code,
)
from capcalc.cli.usage import USAGE_ERRORS, error_message
from capcalc.core.errors import CapcalcError
from capcalc.core.inputs import excerpt
from capcalc.report.output import RecordStream, TableSpec, choose_format, emit

#: sweeps smaller than this run in this process: starting workers costs more than it saves
PARALLEL_THRESHOLD = 1000
#: combinations handed to a worker at a time
CHUNK = 64
#: sweeps of at least this many combinations show a progress bar (when stderr is a terminal)
PROGRESS_THRESHOLD = 200

#: the outputs the table view shows for each command (the machine formats show every key)
HEADLINES = {
    "kv": ["kv_bytes_per_sequence", "kv_bytes_per_gpu", "sequences_fit"],
    "fit": ["fits", "weights_bytes_per_gpu", "kv_cache_bytes_per_gpu", "kv_cache_tokens", "max_concurrency"],
    "roofline": [
        "decode_bound",
        "decode_tokens_per_s",
        "prefill_bound",
        "critical_batch",
        "fits_in_memory",
        "within_max_context",
    ],
    "latency": [
        "ttft_s",
        "itl_s",
        "e2e_s",
        "output_tokens_per_s",
        "decode_bound",
        "fits_in_memory",
        "within_max_context",
    ],
    "plan": [
        "gpu",
        "tp",
        "feasible",
        "gpus",
        "batch_per_replica",
        "binding_constraint",
        "cost_usd_per_million_output_tokens",
    ],
}


def click_params(command) -> list[Param]:
    """The target command's parameters, as :func:`capcalc.cli.sweep_spec.parse_sweep_args` reads them."""
    params = []
    for p in command.params:
        is_argument = type(p).__name__.endswith("Argument")
        params.append(
            Param(
                name=p.name,
                opts=() if is_argument else tuple(p.opts),
                secondary_opts=() if is_argument else tuple(p.secondary_opts),
                is_flag=bool(getattr(p, "is_flag", False)),
                multiple=bool(getattr(p, "multiple", False)),
            )
        )
    return params


#: what one combination gives: (records, error message or None, exit code, notes as the CLI words them)
Outcome = tuple[list[dict], "str | None", int, list[str]]


def run_one(command, name: str, combination: Combination) -> Outcome:
    """``capcalc NAME ARGV`` as library calls: Click parses the arguments (the command's own
    types, defaults and checks), then the command's compute function runs on a session
    and gives the records the command would print. The session's notes come back as text
    (their parameters named as flags), for :class:`NoteSummary`; nothing is printed."""
    function, compute, to_records = COMPUTE[name]
    notes: list[str] = []
    try:
        with command.make_context(f"capcalc {name}", list(combination.argv)) as sub:
            params = collapse_groups(function, sub.params)
        for own in ("json_", "jsonl", "csv_"):
            params.pop(own, None)
        s = session(params.pop("profiles", None), params.pop("no_calibration", False))
        try:
            return to_records(compute(s, **params)), None, 0, notes
        finally:
            notes.extend(error_message(n, name) for n in s.notes)
    except CapcalcError as exc:
        return [], error_message(exc, name), exc.exit_code, notes
    except typer.Exit as exc:
        return [], f"exited with code {exc.exit_code}", exc.exit_code or 1, notes
    except USAGE_ERRORS as exc:  # Click usage errors: bad value, missing option
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        return [], message, getattr(exc, "exit_code", 2), notes
    except Exception as exc:
        if os.environ.get("CAPCALC_DEBUG"):
            raise
        return [], f"internal error: {type(exc).__name__}: {exc}", 1, notes


#: a number standing alone in a note ("84.18", "5,000", "tp=2"), not part of a name
#: ("h100-sxm", "llama-3-8b")
_NUMBER = re.compile(r"(?<![\w.\-])\d[\d,]*(?:\.\d+)?(?!\w)")


class NoteSummary:
    """The notes of a sweep's runs, each kind once: notes that differ only in their numbers
    (:data:`_NUMBER`) are one kind. :meth:`lines` gives, in order of first appearance, the
    first note of each kind, with ``(xN)`` when N runs gave a note of that kind."""

    def __init__(self):
        self._kinds: dict[str, list] = {}  # masked text -> [first text, runs, all the same]

    def add(self, notes: list[str]) -> None:
        """The notes of one run (a run counts once per kind)."""
        seen = set()
        for text in notes:
            kind = _NUMBER.sub("#", text)
            entry = self._kinds.setdefault(kind, [text, 0, True])
            if kind not in seen:
                entry[1] += 1
                seen.add(kind)
            entry[2] = entry[2] and text == entry[0]

    def lines(self) -> list[str]:
        out = []
        for first, runs, same in self._kinds.values():
            if runs == 1:
                out.append(first)
            else:
                out.append(f"{first} (x{runs}{'' if same else ', the first shown'})")
        return out


class Progress:
    """A one-line progress bar on ``stream`` (stderr), redrawn about 100 times in all, and
    erased when the sweep ends."""

    WIDTH = 30

    def __init__(self, total: int, stream):
        self.total, self.stream, self.done = total, stream, 0
        self.every = max(1, total // 100)
        self._draw()

    def advance(self) -> None:
        self.done += 1
        if self.done % self.every == 0 or self.done == self.total:
            self._draw()

    def _draw(self) -> None:
        filled = self.WIDTH * self.done // self.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\rsweep [{bar}] {self.done:,}/{self.total:,}")
        self.stream.flush()

    def close(self) -> None:
        if self.total:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self.total = 0


def show_progress(size: int, fmt: str, stderr=None, stdout=None) -> bool:
    """A progress bar for a sweep of ``size`` combinations: only at :data:`PROGRESS_THRESHOLD`
    or more, only when stderr is a terminal, and not while rows stream to that terminal
    (stdout a terminal too, format not ``table``: the bar would cut through them)."""
    stderr = stderr if stderr is not None else sys.stderr
    stdout = stdout if stdout is not None else sys.stdout
    if size < PROGRESS_THRESHOLD or not _isatty(stderr):
        return False
    return fmt == "table" or not _isatty(stdout)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no such method, or closed
        return False


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_jobs(size: int) -> int:
    """Worker processes for a sweep of ``size`` combinations: 1 (in this process) below
    :data:`PARALLEL_THRESHOLD`, else one per available CPU, at most one per chunk."""
    if size < PARALLEL_THRESHOLD:
        return 1
    return max(1, min(available_cpus(), -(-size // CHUNK)))


_WORKER: dict = {}


def _init_worker(name: str) -> None:
    from capcalc.cli import app as cli_app  # the full app, with every command registered
    from capcalc.cli.strict import harden

    _WORKER["command"] = harden(typer.main.get_command(cli_app)).commands[name]
    _WORKER["name"] = name


def _work(combination: Combination) -> Outcome:
    return run_one(_WORKER["command"], _WORKER["name"], combination)


def results(command, plan: SweepPlan, jobs: int) -> Iterator[tuple[Combination, Outcome]]:
    """(combination, run_one's result) for every combination, in order. With ``jobs`` > 1
    the runs are spread over worker processes (each builds the command and loads the
    profiles once) and come back in order as they finish, chunk by chunk."""
    if jobs <= 1:
        for combo in plan.combinations():
            yield combo, run_one(command, plan.command, combo)
        return
    # fork shares the loaded profiles with the workers; elsewhere (macOS, Windows) fork is
    # unsafe or absent, and each spawned worker loads them itself
    mp = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with mp.Pool(jobs, initializer=_init_worker, initargs=(plan.command,)) as pool:
        yield from zip(
            plan.combinations(), pool.imap(_work, plan.combinations(), chunksize=CHUNK), strict=True
        )


def run_sweep(command, plan: SweepPlan, fmt: str, jobs: int = 1) -> int:
    """Run every combination, writing rows as they come, then the notes
    (:class:`NoteSummary`). Returns the exit code."""
    ok = 0
    failed: list[int] = []
    notes = NoteSummary()
    progress = Progress(plan.size, sys.stderr) if show_progress(plan.size, fmt) else None
    try:
        ok, failed = _run_rows(command, plan, fmt, jobs, notes, progress)
    finally:
        if progress is not None:
            progress.close()
        for line in notes.lines():
            note(line)
    if failed:
        print(
            f"capcalc: sweep: {len(failed)} of {plan.size} combinations failed (see the {ERROR_KEY!r} field)",
            file=sys.stderr,
        )
    return sweep_exit_code(ok, failed)


def _run_rows(
    command, plan: SweepPlan, fmt: str, jobs: int, notes: NoteSummary, progress
) -> tuple[int, list[int]]:
    ok = 0
    failed: list[int] = []
    table_rows: list[dict] = []
    stream = RecordStream(fmt) if fmt in ("json", "jsonl") else None
    pending: list[tuple[dict, Combination]] = []  # CSV rows held until the header is known
    columns: list[str] | None = None
    for combo, (records, error, code, run_notes) in results(command, plan, jobs):
        notes.add(run_notes)
        if progress is not None:
            progress.advance()
        if error is not None:
            failed.append(code)
            rows = [error_row(combo, error)]
        else:
            ok += 1
            rows = record_rows(combo.index, records)
        if fmt == "table":
            table_rows.extend(fill_inputs(row, combo, plan.input_names) for row in rows)
        elif stream is not None:
            for row in rows:
                stream.write(row)
        elif columns is None and error is not None:
            pending.append((rows[0], combo))
        else:
            if columns is None:
                columns = csv_columns(rows[0] if rows else None, plan.input_names)
                stream = RecordStream("csv", columns=columns)
                for row, held in pending:
                    stream.write(fill_inputs(row, held, columns))
                pending = []
            for row in rows:
                stream.write(fill_inputs(row, combo, columns))
    if fmt == "csv" and stream is None:  # nothing succeeded (or no records at all)
        columns = csv_columns(None, plan.input_names)
        stream = RecordStream("csv", columns=columns)
        for row, held in pending:
            stream.write(fill_inputs(row, held, columns))
    if stream is not None:
        stream.close()
    if fmt == "table":
        if progress is not None:  # the bar leaves before the table comes
            progress.close()
        _render_table(plan, table_rows)
    return ok, failed


def _render_table(plan: SweepPlan, rows: list[dict]) -> None:
    shown = [INDEX_KEY, *plan.varying]
    shown += [k for k in HEADLINES.get(plan.command, []) if any(k in r for r in rows) and k not in shown]
    if any(ERROR_KEY in r for r in rows):
        shown.append(ERROR_KEY)
    title = f"sweep {plan.command}: {plan.size} combinations"
    emit(rows, "table", TableSpec(title=title, columns=[(k, k) for k in shown]))


@app.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    help="Run kv, fit, roofline, latency or plan over every combination of comma-separated "
    "option values, one row each: capcalc sweep latency llama-3-8b,qwen3-8b --gpu h100-sxm,a100-80gb-sxm "
    "--batch 1,8,64 --csv. Any option of the command can be swept; a flag is swept with "
    "--flag=true,false; options given several times (--profiles, --price) go to every run. "
    "A failed combination gives a row with an 'error' field; the exit code is non-zero only "
    "if every combination failed. plan gives one row per candidate of each combination.",
)
def sweep(
    ctx: typer.Context,
    command: Annotated[
        str,
        typer.Argument(
            metavar="COMMAND MODEL[,MODEL...] [--OPTION V1,V2,...]...",
            help=f"The command to run: {', '.join(SWEEPABLE)}; then its model(s) and options.",
        ),
    ],
    json_: JsonFlag = False,
    jsonl: JsonlFlag = False,
    csv_: CsvFlag = False,
    jobs: Annotated[
        Optional[int],
        typer.Option(
            help=f"Worker processes (default: 1 below {PARALLEL_THRESHOLD} combinations, else one per CPU)."
        ),
    ] = None,
):
    fmt = choose_format(json_, jsonl, csv_)
    if jobs is not None and jobs < 1:
        raise CapcalcError(f"--jobs must be at least 1, got {jobs}")
    if command not in SWEEPABLE:
        raise CapcalcError(f"sweep runs one of {', '.join(SWEEPABLE)}, not {excerpt(command)}")
    group = ctx.find_root().command
    target = group.commands.get(command) if hasattr(group, "commands") else None
    if target is None:
        raise CapcalcError(f"`capcalc {command}` is not available in this build")
    plan = parse_sweep_args(command, ctx.args, click_params(target))
    # never more workers than combinations or CPUs, whatever --jobs asks
    jobs = min(jobs, plan.size, available_cpus()) if jobs is not None else default_jobs(plan.size)
    return run_sweep(target, plan, fmt, jobs)
