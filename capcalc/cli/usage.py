"""The exception classes Click raises for usage errors (bad flag value, missing
argument, unknown option), for every place that turns them into one line."""

from __future__ import annotations

import typer


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """typer >= 0.29 vendors Click (its errors derive from ``typer.TyperException``);
    older typer uses the ``click`` package, which is imported only then (it costs start-up time). Both are handled so the CLI also runs on
    machines with an older typer (such as the GPU machine used for validation)."""
    if hasattr(typer, "TyperException"):
        return (typer.TyperException,)  # nothing of capcalc raises the click package's errors
    types: list[type[BaseException]] = []
    try:
        import click

        types.append(click.exceptions.ClickException)
    except ImportError:
        pass
    return tuple(types)


USAGE_ERRORS = _usage_error_types()


# --------------------------------------------------------------------------- parameter -> flag

#: library parameters whose flag is not ``--`` + the name with dashes
FLAGS = {
    "ctx": "--ctx",
    "prompt_tokens": "--prompt",
    "output_tokens": "--output",
    "requests_per_s": "--rps",
    "ttft_s": "--ttft-slo",
    "itl_s": "--itl-slo",
    "e2e_s": "--e2e-slo",
    "tpot_s": "--tpot-slo",
    "kv_dtype": "--kv-cache-dtype",
    "memory_bytes": "--memory",
    "plot": "--plot",
    "throughput_per_s": "--throughput",
    "frontend_s": "--frontend-overhead",
    "recv_interval": "--scheduler-recv-interval",
    "result_format": "--format",
    "paths": "RESULT",
}
#: the same parameter under another flag in one command
COMMAND_FLAGS = {
    ("fit", "memory_bytes"): "--gpu-memory",
    ("measure", "tokens"): "--ctx",
}


def flag_for(parameter: str, command: str | None = None) -> str:
    """The command-line flag of a library parameter: ``max_model_len`` -> ``--max-model-len``,
    ``layer_overhead_s`` -> ``--layer-overhead`` (efficiency durations drop their unit)."""
    if (command, parameter) in COMMAND_FLAGS:
        return COMMAND_FLAGS[(command, parameter)]
    if parameter in FLAGS:
        return FLAGS[parameter]
    return "--" + parameter.removesuffix("_s").replace("_", "-")


def error_message(exc, command: str | None = None) -> str:
    """A library error in the CLI's words: each parameter it names (as a whole word, followed
    by a space, punctuation or the end: ``max_model_len must be at least 1``, not
    ``tp=3``) becomes its flag."""
    import re

    template = getattr(exc, "template", None)
    if template is not None:
        return template.format(**{p: flag_for(p, command) for p in exc.parameters})
    message = exc.message
    for parameter in getattr(exc, "parameters", ()):
        message = re.sub(
            rf"(?<![\w'-]){re.escape(parameter)}(?=\s|$|[,;:)])", flag_for(parameter, command), message
        )
    return message


def suggestion_text(parameter: str, value, command: str | None = None) -> str:
    """A structured ``fit`` suggestion as the flag that applies it: ``--tp 2``."""
    if isinstance(value, float):
        value = f"{value:.2f}"
    return f"{flag_for(parameter, command)} {value}"
