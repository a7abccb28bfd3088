"""Every known profile by name and alias: the shipped ones, then user directories."""

from __future__ import annotations

import difflib

from capcalc.core.errors import CapcalcError, ProfileError
from capcalc.core.inputs import excerpt
from capcalc.schema.profiles import HardwareProfile, ModelProfile
from capcalc.sources.dirs import profile_dirs, shipped_dir
from capcalc.sources.loader import load_profile_file
from capcalc.sources.yamlcache import YamlCache

# --------------------------------------------------------------------------- registry


def _key(name: str) -> str:
    return name.strip().lower()


class Registry:
    """Every known profile: shipped ones, then user directories (which win)."""

    def __init__(self, models: dict[str, ModelProfile], gpus: dict[str, HardwareProfile]):
        self.models = models
        self.gpus = gpus
        self._model_index = self._index(models)
        self._gpu_index = self._index(gpus)
        #: what loading had to say (a user profile overriding a shipped one), for the caller to show
        self.notes: tuple[str, ...] = ()

    @staticmethod
    def _index(profiles) -> dict[str, str]:
        index: dict[str, str] = {}
        for name, profile in profiles.items():
            for label in (profile.name, *profile.aliases):
                index.setdefault(_key(label), name)
        for name in profiles:  # a name always beats someone else's alias
            index[_key(name)] = name
        return index

    @classmethod
    def load(cls, user_dirs=(), include_env: bool = True) -> Registry:
        """Load shipped profiles, then each user directory in order (later wins):
        :func:`profile_dirs` of ``user_dirs`` (the ``--profiles`` directories). An
        override is not an error: it is kept in :attr:`notes`."""
        notes: list[str] = []
        warn = notes.append
        models: dict[str, ModelProfile] = {}
        gpus: dict[str, HardwareProfile] = {}
        cache = YamlCache()
        for directory in (shipped_dir("model_profiles"), shipped_dir("hardware_profiles")):
            for path in sorted(directory.glob("*.yaml")):
                _add(load_profile_file(path, cache), models, gpus, shipped=True, warn=warn)
        for path in profile_dirs(user_dirs, include_env):
            if not path.is_dir():
                raise CapcalcError(
                    f"profile directory {excerpt(str(path), 300)} does not exist or is not a directory"
                )
            here: dict[tuple[bool, str], str] = {}  # a name twice in one directory is a mistake
            for file in sorted([*path.glob("*.yaml"), *path.glob("*.yml")]):
                if file.name.startswith("calibration"):
                    continue
                profile = load_profile_file(file, cache)
                key = (isinstance(profile, ModelProfile), profile.name)
                if key in here:
                    raise ProfileError(
                        profile.path, "name", f"duplicate name {profile.name!r} (also in {here[key]})"
                    )
                here[key] = profile.path
                _add(profile, models, gpus, shipped=False, warn=warn)
        cache.save()
        registry = cls(models, gpus)
        registry.notes = tuple(notes)
        return registry

    def find_model(self, name: str) -> ModelProfile | None:
        """The model profile named or aliased ``name`` (case-insensitive), else None."""
        found = self._model_index.get(_key(name))
        return None if found is None else self.models[found]

    def model(self, name: str) -> ModelProfile:
        return self._lookup(name, self.models, self._model_index, "model")

    def knows_model(self, name: str) -> bool:
        """``name`` is a model profile's name or alias (case-insensitive)."""
        return _key(name) in self._model_index

    def closest_profiles(self, name: str) -> list[str]:
        """The three model or GPU names closest to ``name``."""
        return self.closest(name, {**self._gpu_index, **self._model_index})

    def gpu(self, name: str) -> HardwareProfile:
        return self._lookup(name, self.gpus, self._gpu_index, "GPU")

    def _lookup(self, name, profiles, index, what):
        found = index.get(_key(name))
        if found is not None:
            return profiles[found]
        listing = "models" if what == "model" else "gpus"
        closest = self.closest(name, index)
        hint = f"closest: {', '.join(closest)}" if closest else f"no {listing} are known"
        raise CapcalcError(f"unknown {what} {excerpt(name)}; {hint} (see `capcalc {listing}`)")

    @staticmethod
    def closest(name: str, index: dict[str, str], n: int = 3) -> list[str]:
        """The ``n`` profile names closest to ``name`` (by name or alias)."""
        scores: dict[str, float] = {}
        for label, target in index.items():
            score = difflib.SequenceMatcher(None, _key(name)[:64], label).ratio()
            scores[target] = max(scores.get(target, 0.0), score)
        return sorted(scores, key=lambda t: (-scores[t], t))[:n]


def _add(profile, models, gpus, shipped, warn):
    table = models if isinstance(profile, ModelProfile) else gpus
    previous = table.get(profile.name)
    if previous is not None:
        if shipped:
            raise ProfileError(
                profile.path, "name", f"duplicate name {profile.name!r} (also in {previous.path})"
            )
        warn(f"user profile {profile.path} overrides {previous.path} ({profile.name})")
    table[profile.name] = profile
