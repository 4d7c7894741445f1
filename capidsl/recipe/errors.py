"""Where a recipe problem is (`Location`), what it is (`Problem`), and the one error of this stage."""

from __future__ import annotations

from dataclasses import dataclass

from capidsl.errors import CapidslError


@dataclass(frozen=True)
class Location:
    """A character in a recipe file: 1-based line and column, plus the `extends` chain that led
    there (the files that extended `file`, nearest first: (child.yaml, grandchild.yaml, ...))."""

    file: str
    line: int
    column: int
    chain: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    def shifted(self, chain: tuple[str, ...]) -> "Location":
        """The same place, seen from a file further down the extends chain."""
        return Location(self.file, self.line, self.column, self.chain + chain)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe: `file:line:col: path.to.key: message`."""

    location: Location | None
    path: str
    message: str
    hint: str | None = None

    def render(self) -> str:
        parts = []
        if self.location is not None:
            parts.append(str(self.location))
        if self.path:
            parts.append(self.path)
        text = self.message + (f"; {self.hint}" if self.hint else "")
        line = ": ".join(parts + [text])
        if self.location is not None and self.location.chain:
            chain = " -> ".join((*reversed(self.location.chain), self.location.file))
            line += f" (extends chain: {chain})"
        return line

    def to_json(self) -> dict:
        loc = self.location
        return {
            "file": loc.file if loc else None,
            "line": loc.line if loc else None,
            "column": loc.column if loc else None,
            "extends_chain": list(loc.chain) if loc else [],
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }

    def sort_key(self):
        loc = self.location
        return (loc is None, loc.file if loc else "", loc.line if loc else 0, loc.column if loc else 0, self.path)


class RecipeError(CapidslError):
    """Every problem found in one recipe (never just the first), each with a location."""

    exit_code = 1

    def __init__(self, problems):
        self.problems: list[Problem] = sorted(problems, key=Problem.sort_key)
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(p.render() for p in self.problems)

    def __str__(self) -> str:
        return self.render()

    def __reduce__(self):
        return (RecipeError, (self.problems,))
