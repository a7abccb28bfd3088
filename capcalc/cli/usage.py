"""The exception classes Click raises for usage errors (bad flag value, missing
argument, unknown option), for every place that turns them into one line."""

from __future__ import annotations

import typer


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """typer >= 0.29 vendors Click (its errors derive from ``typer.TyperException``);
    older typer uses the ``click`` package. Both are caught so the CLI also runs on
    machines with an older typer (such as the GPU machine used for validation)."""
    types: list[type[BaseException]] = []
    if hasattr(typer, "TyperException"):
        types.append(typer.TyperException)
    try:
        import click

        types.append(click.exceptions.ClickException)
    except ImportError:
        pass
    return tuple(types)


USAGE_ERRORS = _usage_error_types()
