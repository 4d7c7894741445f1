"""Number literals of the language: reading `3e-4`, `1_000`, `20k`, `1.5M` and writing them back.

Values are kept as Python `int` when whole and `float` otherwise; arithmetic that must be exact
(durations to steps) goes through `exact()`, which reads a float as the decimal it prints as.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

Number = int | float

_SUFFIX = {"k": 10**3, "M": 10**6, "B": 10**9}


def read_number(literal: str) -> Number:
    """The value of a NUMBER token: underscores dropped, a k/M/B suffix multiplied in."""
    text = literal.replace("_", "")
    scale = 1
    if text and text[-1] in _SUFFIX:
        scale = _SUFFIX[text[-1]]
        text = text[:-1]
    value = Decimal(text) * scale
    if value == value.to_integral_value() and abs(value) < 2**63:
        return int(value)
    return float(value)


def normal(value: Number) -> Number:
    """Whole floats become ints, so that equal numbers print and serialise alike."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number here")
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def exact(value: Number) -> Fraction:
    """The exact rational a number stands for (a float is read as its shortest decimal)."""
    if isinstance(value, int):
        return Fraction(value)
    return Fraction(repr(float(value)))


def format_number(value: Number) -> str:
    """Canonical text of a number: whole numbers from 10k up with a k/M/B suffix when exact."""
    value = normal(value)
    if isinstance(value, int):
        n = abs(value)
        sign = "-" if value < 0 else ""
        if n >= 10_000:
            for suffix, scale in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
                if n >= scale:
                    whole, rest = divmod(n, scale)
                    digits = str(rest).rjust(len(str(scale)) - 1, "0").rstrip("0")
                    if len(digits) <= 2:  # 2.5M, 12.25k; longer fractions read better in full
                        return f"{sign}{whole}{'.' + digits if digits else ''}{suffix}"
                    break
        return str(value)
    if 0 < abs(value) < 1e-2:  # 3e-4 rather than 0.0003: learning rates read in powers of ten
        for digits in range(17):
            text = f"{value:.{digits}e}"
            if float(text) == value:
                mantissa, exponent = text.split("e")
                return f"{mantissa}e{int(exponent)}"
    return repr(value)
