"""Model sources: a profile name, a local checkpoint folder or a Hugging Face repo id,
turned into a :class:`~capcalc.schema.profiles.ModelProfile` and the notes a user should
see about how it was read. Nothing here prints: the notes are data for the caller."""

from __future__ import annotations

from dataclasses import dataclass

from capcalc.schema.profiles import ModelProfile
from capcalc.sources.registry import Registry


@dataclass(frozen=True)
class ResolvedModel:
    """A model and what reading it had to say (empty for a shipped or user profile)."""

    profile: ModelProfile
    notes: tuple[str, ...] = ()


class ModelResolver:
    """Resolves model names against one registry, in this order: profile name or alias; a
    local folder holding config.json; a Hugging Face repo id ``org/name[@revision]`` read
    through huggingface-hub's cache (see :mod:`capcalc.sources.hub`). A name that looks like
    none of these is an unknown model, reported with the closest profile names. A folder or
    Hub id is read once per resolver."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._read: dict[str, ResolvedModel] = {}

    def resolve(self, name: str) -> ResolvedModel:
        found = self.registry.find_model(name)
        if found is not None:
            return ResolvedModel(found)
        from capcalc.sources import hub  # lazy: only names that are not profiles import huggingface-hub

        if hub.classify(name) is None:
            return ResolvedModel(self.registry.model(name))  # raises: unknown, with the closest names
        if name not in self._read:
            imported = hub.load(name)
            counted = (
                f"parameter count from {imported.params_source}"
                if imported.params_checkpoint is not None
                else "parameter count computed from the architecture"
            )
            notes = (
                *imported.warnings,
                f"{name}: read {imported.config_path} ({imported.model_type}; {counted})",
            )
            self._read[name] = ResolvedModel(imported.profile, tuple(notes))
        return self._read[name]

    def model(self, name: str) -> ModelProfile:
        """:meth:`resolve` without the notes."""
        return self.resolve(name).profile
