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
