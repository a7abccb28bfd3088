"""The one exception type the CLI turns into a one-line error and an exit code."""

from __future__ import annotations


class CapcalcError(Exception):
    """Bad input or an impossible request: printed as one line on stderr.

    ``exit_code`` 2 means a usage error (bad value, unknown name, invalid profile);
    1 means the request was understood but cannot be met.

    ``parameter`` names the library parameter at fault (``max_model_len``, ``tp``), or
    several of them as a tuple; the message names it the same way, so that a front end
    can say it in its own terms (the CLI writes ``--max-model-len``:
    :func:`capcalc.cli.usage.error_message`). The library never names a CLI flag.
    Where a parameter's name also occurs as a plain word, the message is given as a
    ``template`` with ``{parameter}`` fields instead (the message is the template with
    each field its own name).
    """

    def __init__(
        self,
        message: str = "",
        exit_code: int = 2,
        parameter: str | tuple[str, ...] | None = None,
        template: str | None = None,
    ):
        self.parameter = parameter
        self.template = template
        if template is not None:
            message = template.format(**{p: p for p in self.parameters})
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    @property
    def parameters(self) -> tuple[str, ...]:
        """``parameter`` as a tuple (empty when none is named)."""
        if self.parameter is None:
            return ()
        return (self.parameter,) if isinstance(self.parameter, str) else tuple(self.parameter)


class ProfileError(CapcalcError):
    """A profile file that fails validation: names the file and the field."""

    def __init__(self, path, field: str, problem: str):
        where = f"{path}: {field}" if field else str(path)
        super().__init__(f"{where}: {problem}", exit_code=2)
        self.path = path
        self.field = field


class Note:
    """A remark that goes with a result: a profile override, a Hub read, the calibration
    used, a prediction that vLLM would not serve as asked. The library returns notes as
    data (:attr:`capcalc.api.Session.notes`); front ends show them (the CLI on stderr,
    with ``parameter`` named as a flag, as for :class:`CapcalcError`)."""

    __slots__ = ("message", "parameter", "template")

    def __init__(
        self, message: str = "", parameter: str | tuple[str, ...] | None = None, template: str | None = None
    ):
        self.parameter = parameter
        self.template = template
        if template is not None:
            message = template.format(**{p: p for p in self.parameters})
        self.message = message

    parameters = CapcalcError.parameters

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"Note({self.message!r})"

    def __eq__(self, other) -> bool:
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(self.message)
