"""The process entry point (`capcalc` script and `python -m capcalc`).

It imports the CLI inside a function so that a Python without capcalc's
dependencies (a checkout run with a bare interpreter, say) gets one line on
stderr saying what to install, not an import traceback.
"""

from __future__ import annotations

import sys

#: import name -> the package that provides it: the runtime dependencies of pyproject.toml
#: that the CLI imports at start-up (huggingface-hub is imported only when a name needs it)
DEPENDENCIES = {"typer": "typer", "rich": "rich", "yaml": "pyyaml"}


def main(argv: list[str] | None = None) -> int:
    try:
        from capcalc.cli import main as cli_main
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in DEPENDENCIES:
            raise
        print(
            f"capcalc: error: the Python at {sys.executable} lacks {DEPENDENCIES[missing]}, "
            f"which capcalc needs: run pip install . in the capcalc checkout",
            file=sys.stderr,
        )
        return 1
    return cli_main(argv)
