"""Layer kinds as spec classes (capcalc/model/layers.py): each kind's arithmetic, and the
regression pin that the shipped models give the same numbers as before the refactor."""

from __future__ import annotations

import json
import math

from snapshot_numbers import FIXTURE, snapshot


def _diff(old, new, path=""):
    """The first place two JSON trees differ (floats compared exactly), or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if key not in old or key not in new:
                return f"{path}/{key}: only in {'fixture' if key in old else 'now'}"
            found = _diff(old[key], new[key], f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list | tuple):
        if len(old) != len(new):
            return f"{path}: {len(old)} entries, now {len(new)}"
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = _diff(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new):
        return None
    return None if old == new else f"{path}: {old!r} in the fixture, now {new!r}"


def test_the_shipped_models_give_identical_numbers_before_and_after_the_spec_refactor():
    # regression pin (tests/snapshot_numbers.py wrote it from the code before the refactor)
    pinned = json.loads(FIXTURE.read_text())["models"]
    now = json.loads(json.dumps(snapshot(), sort_keys=True))  # tuples -> lists, as stored
    assert set(pinned) <= set(now)  # new profiles may join; none may leave
    for name, record in pinned.items():
        assert _diff(record, now[name]) is None, name
