"""LangError: a problem in a recipe-language expression, pointing at one character of it."""

from __future__ import annotations

from capidsl.errors import CapidslError


class LangError(CapidslError):
    """An invalid expression: what is wrong, where (1-based column in `text`), what was expected.

    `column` counts characters from the start of `text` (a text with line breaks is counted
    as one string), so `capidsl.recipe` can map it to the character inside a YAML string.
    `column` is None when the error is about the expression as a whole.
    """

    def __init__(
        self,
        message: str,
        text: str = "",
        column: int | None = None,
        expected: str | None = None,
        hint: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.text = text
        self.column = column
        self.expected = expected
        self.hint = hint

    @property
    def offset(self) -> int | None:
        """0-based index of the offending character in `text`."""
        return None if self.column is None else self.column - 1

    def with_text(self, text: str, shift: int = 0) -> "LangError":
        """The same error re-anchored in a larger text whose expression starts at `shift`."""
        column = None if self.column is None else self.column + shift
        return LangError(self.message, text, column, self.expected, self.hint)

    def render(self) -> str:
        """The message, the expression with a caret under the column, then expected and hint."""
        lines = [f"error: {self.message}"]
        if self.text:
            if self.column is None:
                lines.append(f"  {self.text}")
            else:
                # show the line of `text` holding the column, caret beneath
                start = self.text.rfind("\n", 0, self.offset) + 1
                end = self.text.find("\n", self.offset)
                line = self.text[start : None if end < 0 else end]
                lines.append(f"  {line}")
                lines.append("  " + " " * (self.offset - start) + "^")
        if self.expected:
            lines.append(f"  expected {self.expected}")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        where = f" (column {self.column})" if self.column is not None else ""
        return f"{self.message}{where}"

    def __reduce__(self):
        return (LangError, (self.message, self.text, self.column, self.expected, self.hint))
