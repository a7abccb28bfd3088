"""Where profiles and calibration files are read from and written to: the one statement
of the directory rule (``docs/profiles.md`` describes it)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from capcalc.core.errors import CapcalcError

ENV_PROFILES = "CAPCALC_PROFILES"


def user_profile_dir() -> Path:
    """Where capcalc writes user profiles and calibration (``import``, ``measure --save``):
    the first ``CAPCALC_PROFILES`` directory if set, else ``$XDG_CONFIG_HOME/capcalc``
    (``~/.config/capcalc``). Profiles there are loaded like any user directory."""
    env = [p for p in os.environ.get(ENV_PROFILES, "").split(os.pathsep) if p]
    if env:
        return Path(env[0]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "capcalc"


def profile_dirs(user_dirs: Iterable[str | Path] = (), include_env: bool = True) -> list[Path]:
    """The directories of user profiles and calibration files, in reading order (a later
    one wins). This is the one statement of the rule; ``docs/profiles.md`` describes it:

    * every ``$CAPCALC_PROFILES`` directory (``os.pathsep``-separated), or, when it is
      unset or empty, the user profile directory if it exists;
    * then each ``--profiles`` directory (``user_dirs``).

    ``include_env=False`` leaves out the first item (tests use the shipped profiles
    only). A directory named twice is read once, at its last place."""
    dirs: list[Path] = []
    if include_env:
        env = [p for p in os.environ.get(ENV_PROFILES, "").split(os.pathsep) if p]
        if env:
            dirs.extend(Path(p).expanduser() for p in env)
        elif user_profile_dir().is_dir():
            dirs.append(user_profile_dir())
    dirs.extend(Path(d).expanduser() for d in user_dirs)
    return [d for i, d in enumerate(dirs) if d not in dirs[i + 1 :]]


def shipped_dir(kind: str) -> Path:
    """Where the shipped ``model_profiles`` / ``hardware_profiles`` live: inside the
    installed package (wheel), else at the top of a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / kind, package.parent / kind):
        if candidate.is_dir():
            return candidate
    raise CapcalcError(f"cannot find the shipped {kind} directory next to {package}", exit_code=1)
