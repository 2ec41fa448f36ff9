"""Range and list syntax shared by every command-line option that takes several values.

Accepted forms (``option`` names the option in error messages):

- ``32..512``      doubling from 32 to 512 inclusive: 32, 64, 128, 256, 512
- ``16..256:16``   arithmetic step: 16, 32, ..., 256
- ``1e-5..1@11``   11 log-spaced values from 1e-5 to 1 inclusive (geometric grid)
- ``1,2,5,10``     an explicit list
- ``7``            a single value

An empty value and an empty list item (``32,`` or ``1,,2``) are errors, never "use the default".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TypeVar

from fobbench.errors import FobbenchError

T = TypeVar("T", int, float)


def _number(text: str, kind: Callable[[str], T], option: str, spec: str) -> T:
    try:
        value = kind(text.strip())
    except ValueError:
        raise FobbenchError(
            f"{option}: '{spec}' is not a valid {kind.__name__} range "
            "(use 32..512, 16..256:16, 1e-5..1@11, 1,2,5 or a single value)"
        ) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise FobbenchError(f"{option}: '{spec}' contains a non-finite value")
    return value


def parse_range(
    spec: str,
    option: str,
    kind: Callable[[str], T] = int,
    positive: bool = True,
) -> list[T]:
    """Expand a range/list string into its values.

    Args:
        spec: the text given on the command line.
        option: the option's name (e.g. ``--seq``), used in error messages.
        kind: ``int`` or ``float``.
        positive: sizes and scales must be > 0 (default True).

    Raises:
        FobbenchError: a one-line message naming ``option`` for descending or empty
            ranges, non-numbers, and non-positive values where a size is meant.
    """
    text = spec.strip()
    if not text:
        raise FobbenchError(f"{option}: empty value")
    if ".." in text:
        values = _expand(text, spec, option, kind, positive)
    else:
        parts = text.split(",")
        if any(not part.strip() for part in parts):
            raise FobbenchError(f"{option}: '{spec}' has an empty item (a stray comma?)")
        values = [_number(part, kind, option, spec) for part in parts]
    if positive and any(v <= 0 for v in values):
        raise FobbenchError(f"{option}: '{spec}' must be above 0")
    return values


def _expand(text: str, spec: str, option: str, kind: Callable[[str], T], positive: bool) -> list[T]:
    """The values of ``a..b`` (doubling), ``a..b:step`` (linear) or ``a..b@n`` (log-spaced)."""
    lo_text, _, rest = text.partition("..")
    step_text: str | None = None
    count_text: str | None = None
    if ":" in rest:
        rest, _, step_text = rest.partition(":")
    elif "@" in rest:
        rest, _, count_text = rest.partition("@")
    lo = _number(lo_text, kind, option, spec)
    hi = _number(rest, kind, option, spec)
    if positive and lo <= 0:
        raise FobbenchError(f"{option}: '{spec}' must start above 0")
    if hi < lo:
        raise FobbenchError(f"{option}: '{spec}' is descending (write the smaller bound first)")
    if step_text is not None:
        step = _number(step_text, kind, option, spec)
        if step <= 0:
            raise FobbenchError(f"{option}: '{spec}' needs a step above 0")
        count = math.floor((hi - lo) / step + 1e-9) + 1
        return [kind(lo + i * step) for i in range(count)]
    if count_text is not None:
        count = _number(count_text, int, option, spec)
        if count < 2:
            raise FobbenchError(f"{option}: '{spec}' needs at least 2 points after @")
        if lo <= 0:
            raise FobbenchError(f"{option}: '{spec}' log spacing needs a start above 0")
        ratio = (hi / lo) ** (1.0 / (count - 1))
        values = [lo * ratio**i for i in range(count)]
        values[-1] = hi
        return sorted({round(v) for v in values}) if kind is int else [kind(v) for v in values]
    if lo <= 0:
        raise FobbenchError(f"{option}: '{spec}' doubling needs a start above 0")
    values = []
    value = lo
    while value <= hi * (1 + 1e-12):
        values.append(kind(value))
        value = value * 2
    return values


def parse_seeds(spec: str, option: str = "--seeds") -> tuple[int, ...]:
    """Seeds: ``a..b`` is every integer from a to b inclusive (``0..4`` → 0, 1, 2, 3, 4);
    otherwise the list/range syntax above. Seeds are >= 0; duplicates are dropped."""
    match = re.fullmatch(r"\s*(\d+)\s*\.\.\s*(\d+)\s*", spec)
    if match:
        lo, hi = int(match.group(1)), int(match.group(2))
        if hi < lo:
            raise FobbenchError(f"{option}: '{spec}' is descending (write the smaller seed first)")
        return tuple(range(lo, hi + 1))
    values = parse_range(spec, option, kind=int, positive=False)
    if any(v < 0 for v in values):
        raise FobbenchError(f"{option}: '{spec}' must be >= 0")
    return tuple(dict.fromkeys(values))
