"""The flat output record every result gives (``.record()``) and the CLI prints.

A record is flat, its keys say their unit, it carries base units, and its first key
is ``schema_version`` (DESIGN.md). Formatting it (table, JSON, CSV) is
:mod:`capcalc.report.output`'s job.
"""

from __future__ import annotations

import dataclasses
from typing import Any

SCHEMA_VERSION = 1


def flat_record(result: Any = None, /, **fields: Any) -> dict[str, Any]:
    """``schema_version`` first, then the result's fields (a dataclass or a mapping),
    then ``fields``."""
    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    if dataclasses.is_dataclass(result):
        out.update(dataclasses.asdict(result))
    elif result is not None:
        out.update(result)
    out.update(fields)
    return out
