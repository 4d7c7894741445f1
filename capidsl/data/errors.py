"""The data stage's error type."""

from capidsl.errors import CapidslError


class DataError(CapidslError):
    """A data source that cannot be read or does not fit the plan; names the source and a fix."""

    def __init__(self, message: str, *, subject: str = "data", hint: str | None = None):
        super().__init__(message)
        self.subject, self.hint = subject, hint

    def render(self) -> str:
        text = f"{self.subject}: {self.args[0]}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text
