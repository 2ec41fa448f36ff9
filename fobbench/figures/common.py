"""Shared pieces of every figure: aggregation over repeats and honest line grouping.

Contract for each ``fobbench/figures/<benchmark-prefix>.py`` module::

    def draw(frame: pandas.DataFrame, out_dir: Path, fmt: str = "png") -> list[Path]

``frame`` holds the rows of one benchmark prefix (``gradcheck``, ``train``, ``memory``) from any
number of runs; ``draw`` writes its figures and returns their paths. Lines are split by
:data:`SERIES_KEYS` so values measured differently (``measured_by``) or on another device are
never merged; repeats of the same point (seeds, runs) are aggregated with :func:`aggregate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from fobbench.errors import FobbenchError
from fobbench.stats import t_half_width

FORMATS = ("png", "svg", "pdf")
"""Figure formats every command writes."""


def check_format(fmt: str) -> None:
    """A one-line FobbenchError for a figure format outside :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise FobbenchError(f"--format: '{fmt}' is not one of {', '.join(FORMATS)}")


METHOD_STYLES: dict[str, dict[str, object]] = {
    "maml": {"color": "tab:blue", "linestyle": "-", "marker": "o"},
    "fomaml": {"color": "tab:orange", "linestyle": "--", "marker": "s"},
    "reptile": {"color": "tab:green", "linestyle": ":", "marker": "^"},
    "imaml": {"color": "tab:red", "linestyle": "-.", "marker": "D"},
    "esmaml": {"color": "tab:purple", "linestyle": (0, (1, 1)), "marker": "v"},
    "fobmaml-forward": {"color": "tab:brown", "linestyle": (0, (5, 1)), "marker": "P"},
    "fobmaml-sym": {"color": "black", "linestyle": "-", "marker": "*"},
    "fobmaml-richardson": {"color": "darkgoldenrod", "linestyle": (0, (5, 2, 1, 2)), "marker": "X"},
    "exact": {"color": "tab:gray", "linestyle": (0, (3, 1, 1, 1)), "marker": "x"},
}
"""Colour, line style and marker of every registry method: the same in every figure, so a
reader learns them once, and distinguishable in greyscale (style and marker differ too)."""

_SPARE_COLORS = ("tab:pink", "tab:olive", "tab:cyan", "navy", "gold", "teal")
_SPARE_MARKERS = ("h", "<", ">", "p", "d", "8")
_VARIANT_LINESTYLES = ("-", "--", ":", (0, (3, 1, 1, 1)), "-.")


def style_of(method: str, variant: int = 0) -> dict[str, object]:
    """Matplotlib keywords (``color``, ``linestyle``, ``marker``) for ``method``.

    Args:
        method: a registry name (:data:`METHOD_STYLES`); other names (plugins) get a stable
            style derived from the name.
        variant: 0 for the method's own style; 1, 2, ... for further lines of the same
            method (iMAML at several CG step counts): same colour and marker, another line
            style and a hollow marker.
    """
    if method in METHOD_STYLES:
        style = dict(METHOD_STYLES[method])
    else:
        index = sum(map(ord, method))
        style = {"color": _SPARE_COLORS[index % len(_SPARE_COLORS)], "linestyle": "-",
                 "marker": _SPARE_MARKERS[index % len(_SPARE_MARKERS)]}
    if variant:
        own = style["linestyle"]
        others = [s for s in _VARIANT_LINESTYLES if s != own]
        style["linestyle"] = others[(variant - 1) % len(others)]
        style["markerfacecolor"] = "white"
    return style


SERIES_KEYS = ("method", "measured_by", "device_name")
"""Columns that separate lines: one line never mixes methods, measurement kinds or devices."""


def aggregate(frame: pd.DataFrame, by: Sequence[str], value: str = "value") -> pd.DataFrame:
    """Mean, 95% t-interval and count of ``value`` for each group of ``by``.

    Returns columns ``*by, mean, lo, hi, n``; a group of one sample has ``lo == hi == mean``.
    """
    keys = [k for k in by if k in frame.columns]

    def summary(values: pd.Series) -> pd.Series:
        data = values.to_numpy(dtype=float)
        data = data[np.isfinite(data)]
        n = len(data)
        mean = float(data.mean()) if n else float("nan")
        half = t_half_width(data)
        return pd.Series({"mean": mean, "lo": mean - half, "hi": mean + half, "n": n})

    grouped = frame.groupby(keys, dropna=False)[value].apply(summary).unstack()
    return grouped.reset_index()


def series(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Split rows into lines by :data:`SERIES_KEYS`; the label names what differs."""
    keys = [k for k in SERIES_KEYS if k in frame.columns]
    varying = [k for k in keys if k == "method" or frame[k].nunique(dropna=False) > 1]
    out = []
    for values, group in frame.groupby(keys, dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        named = dict(zip(keys, values, strict=False))
        label = " · ".join(str(named[k]) for k in varying) or "all"
        out.append((label, group, named.get("method", "")))
    return [(label, group) for label, group, _ in sorted(out, key=lambda item: method_rank(str(item[2])))]


def method_rank(method: str) -> tuple[float, str]:
    """Sort key putting methods in the registry's display order (unknown names last)."""
    from fobbench.estimators import rank_of  # the registry; imported only when figures are drawn

    return rank_of(method)


def save(fig: plt.Figure, out_dir: Path, name: str, fmt: str = "png") -> Path:
    """Write ``fig`` as ``out_dir/name.fmt`` (png, svg or pdf), close it, return the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.{fmt}"
    fig.tight_layout()
    fig.savefig(path, dpi=120 if fmt == "png" else None)
    plt.close(fig)
    return path
