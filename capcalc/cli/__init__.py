"""The command-line interface: parse, call a calculation module, render.

``main`` runs the Typer app without Click's standalone mode so that every
failure becomes one line on stderr and an exit code (2 for usage errors),
never a traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from capcalc.cli.common import app  # the commands' modules load when used (COMMAND_MODULES)
from capcalc.cli.startup import light_coercion
from capcalc.cli.strict import harden
from capcalc.cli.usage import USAGE_ERRORS, error_message
from capcalc.core.errors import CapcalcError

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    command = harden(typer.main.get_command(app), subcommands=False)
    light_coercion(command)  # the completion options typer adds to the group
    try:
        result = command.main(args=argv, prog_name="capcalc", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except CapcalcError as exc:
        _error(error_message(exc, _command_name(argv)))
        return exc.exit_code
    except USAGE_ERRORS as exc:
        # bad flag value, missing argument, unknown option
        if type(exc).__name__ == "NoArgsIsHelpError" and getattr(exc, "ctx", None) is not None:
            print(exc.ctx.get_help(), file=sys.stderr)
            return 2
        _error(exc.format_message())
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # the reader (e.g. `head`) went away: not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except Exception as exc:  # a bug, not bad input: still one line unless debugging
        if os.environ.get("CAPCALC_DEBUG"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (set CAPCALC_DEBUG=1 for a traceback)")
        return 1


def _command_name(argv: list[str] | None) -> str | None:
    """The subcommand of ``argv`` (its first word), for the flags its errors name."""
    args = sys.argv[1:] if argv is None else argv
    return next((a for a in args if not a.startswith("-")), None)


def _error(message: str) -> None:
    print(f"capcalc: error: {message}", file=sys.stderr)
