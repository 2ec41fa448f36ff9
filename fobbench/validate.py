"""Checks of single option values, torch-free, with the one-line messages every layer shares.

The command line runs them before torch is imported (:mod:`fobbench.cli.checks`), and the
configuration objects run the same ones when they are built (a second line of defence for
library callers), so a bad value reads the same wherever it is caught.
"""

from __future__ import annotations

import math

from fobbench.errors import FobbenchError


def word(value: object) -> str:
    """An option value that may arrive as a Typer Enum (CLI) or as its string (``fobbench run``)."""
    return str(getattr(value, "value", value))


def one_of(value: object, allowed: tuple[str, ...], option: str, what: str = "") -> str:
    """``value`` if it is one of ``allowed``; else ``OPTION: unknown WHAT 'value' (choose from ...)``."""
    text = word(value)
    if text not in allowed:
        raise FobbenchError(f"{option}: unknown {what + ' ' if what else ''}'{text}' "
                            f"(choose from {', '.join(allowed)})")
    return text


def integer(value: object, option: str, least: int = 1) -> None:
    """``OPTION must be an integer >= least`` unless ``value`` is one."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise FobbenchError(f"{option} must be an integer >= {least} (got {value})")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def positive(value: object, option: str, unit: str = "") -> None:
    """``OPTION must be > 0`` unless ``value`` is a finite number above 0."""
    if not (_number(value) and value > 0):  # type: ignore[operator]
        raise FobbenchError(f"{option} must be > 0{unit} (got {value})")


def nonnegative(value: object, option: str) -> None:
    """``OPTION must be >= 0`` unless ``value`` is a finite number of at least 0."""
    if not (_number(value) and value >= 0):  # type: ignore[operator]
        raise FobbenchError(f"{option} must be >= 0 (got {value})")
