"""The one exception type the CLI turns into a one-line error and an exit code."""


class CapcalcError(Exception):
    """Bad input or an impossible request: printed as one line on stderr.

    ``exit_code`` 2 means a usage error (bad flag value, unknown name, invalid
    profile); 1 means the request was understood but cannot be met.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ProfileError(CapcalcError):
    """A profile file that fails validation: names the file and the field."""

    def __init__(self, path, field: str, problem: str):
        where = f"{path}: {field}" if field else str(path)
        super().__init__(f"{where}: {problem}", exit_code=2)
        self.path = path
        self.field = field
