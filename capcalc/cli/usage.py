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
