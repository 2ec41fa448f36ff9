"""Figures of the memory benchmark: peak memory vs size on a log scale (paper Fig. 3 and 6).

One figure per benchmark (``memory.convnet``, ``memory.transformer``), swept size (``sweep``
info column: ``channels``, ``d_model`` or ``seq``) and setting of the other point columns (runs
at different batch sizes are never drawn on one axis). One line per method, measurement kind
and device (:data:`fobbench.figures.common.SERIES_KEYS`), so estimates and measurements, or CPU
and GPU numbers, never share a line; estimates are dashed. Points that ran out of memory are
marked with an ``x`` on the top edge of the axes at their size.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.transforms import blended_transform_factory

from fobbench.figures.common import SERIES_KEYS, aggregate, save, series, style_of
from fobbench.results.schema import HEAD_COLUMNS, PROVENANCE_COLUMNS, VALUE_COLUMNS

METRIC = "peak_mib"
MARKERS = ("o", "s", "^", "D", "v", "P", "*", "X", "<", ">")
"""Distinct markers, so methods with identical memory (FO-MAML and Reptile) stay visible."""
NON_POINT = {*HEAD_COLUMNS, *VALUE_COLUMNS, *PROVENANCE_COLUMNS, "source", "status", "sweep",
             "sdpa_backend", "message"}


def _groups(frame: pd.DataFrame, x: str) -> list[tuple[str, pd.DataFrame]]:
    """Split rows by the point columns other than ``x`` (one figure each)."""
    fixed = [c for c in frame.columns if c not in NON_POINT and c != x and frame[c].notna().any()]
    varying = [c for c in fixed if frame[c].astype(str).nunique() > 1]
    if not varying:
        return [("", frame)]
    groups = []
    for values, group in frame.groupby([frame[c].astype(str) for c in varying], sort=True):
        values = values if isinstance(values, tuple) else (values,)
        groups.append(("_".join(f"{c}{v}" for c, v in zip(varying, values, strict=False)), group))
    return groups


def _styles(frame: pd.DataFrame) -> tuple[dict[str, tuple[object, str]], dict[tuple[str, str], object]]:
    """Colour and marker per method (:func:`style_of`); line style per (measured_by, device_name),
    estimates dashed, when several kinds share the figure (else the method's own line style)."""
    methods = sorted(frame["method"].astype(str).unique())
    # The fixed per-method colour and marker shared by every figure (figures.common.style_of).
    by_method = {m: (style_of(m)["color"], style_of(m)["marker"]) for m in methods}
    measured = frame["measured_by"] if "measured_by" in frame else pd.Series("", index=frame.index)
    devices = frame["device_name"] if "device_name" in frame else pd.Series("", index=frame.index)
    kinds = sorted({(str(a), str(b)) for a, b in zip(measured, devices, strict=False)})
    solid = iter(["-", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))] * 4)
    by_kind = {kind: ("--" if kind[0] == "estimate" else next(solid)) for kind in kinds}
    return by_method, by_kind


def _draw_one(frame: pd.DataFrame, x: str, title: str) -> plt.Figure:
    lines = series(frame)
    fig, ax = plt.subplots(figsize=(6.4 if len(lines) <= 8 else 9.6, 4.4))
    edge = blended_transform_factory(ax.transData, ax.transAxes)
    by_method, by_kind = _styles(frame)
    for label, rows in lines:
        color, marker = by_method[str(rows["method"].iloc[0])]
        kind = (str(rows["measured_by"].iloc[0]) if "measured_by" in rows else "",
                str(rows["device_name"].iloc[0]) if "device_name" in rows else "")
        ok = rows[rows["status"].astype(str) != "oom"]
        oom = rows[rows["status"].astype(str) == "oom"]
        if not ok.empty:
            stats = aggregate(ok, [x]).sort_values(x)
            ax.plot(stats[x], stats["mean"], marker=marker, markersize=5, color=color, label=label,
                    linestyle=by_kind.get(kind, "-") if len(by_kind) > 1
                    else style_of(str(rows["method"].iloc[0]))["linestyle"])
            if (stats["hi"] > stats["lo"]).any():
                ax.fill_between(stats[x], stats["lo"], stats["hi"], color=color, alpha=0.2)
        if not oom.empty:
            sizes = np.unique(oom[x].to_numpy(dtype=float))
            ax.plot(sizes, np.full(len(sizes), 0.98), linestyle="none", marker="x", markersize=9,
                    markeredgewidth=2, color=color, transform=edge, clip_on=False,
                    label=f"{label} (oom)" if ok.empty else None)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    values = np.unique(frame[x].to_numpy(dtype=float))
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.set_xlabel(x)
    ax.set_ylabel("peak memory above baseline (MiB)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if len(lines) <= 8:
        ax.legend(fontsize=7, loc="upper left")
    else:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def draw(frame: pd.DataFrame, out_dir: Path, fmt: str = "png") -> list[Path]:
    """Draw every memory figure in ``frame`` (rows of ``memory*`` benchmarks) into ``out_dir``.

    Returns the written paths, e.g. ``memory_transformer_seq.png``; OOM points are marked
    with ``x`` on the top edge. Frames without ``peak_mib`` rows give no figure.
    """
    out_dir = Path(out_dir)
    rows = frame[frame["metric"] == METRIC] if "metric" in frame else frame.iloc[0:0]
    paths: list[Path] = []
    if rows.empty:
        return paths
    if "status" not in rows:
        rows = rows.assign(status="ok")
    for benchmark, by_bench in rows.groupby("benchmark", sort=True):
        arch = str(benchmark).split(".", 1)[-1]
        sweeps = by_bench["sweep"] if "sweep" in by_bench else pd.Series("", index=by_bench.index)
        for x, by_sweep in by_bench.groupby(sweeps, sort=True):
            x = str(x)
            if x not in by_sweep or by_sweep[x].isna().all():
                continue
            for suffix, group in _groups(by_sweep, x):
                name = f"memory_{arch}_{x}" + (f"_{suffix}" if suffix else "")
                fixed = [k for k in SERIES_KEYS if k in group and group[k].nunique() == 1 and k != "method"]
                subtitle = ", ".join(str(group[k].iloc[0]) for k in fixed)
                title = f"{benchmark}: peak memory vs {x}" + (f"\n{subtitle}" if subtitle else "")
                paths.append(save(_draw_one(group, x, title), out_dir, name, fmt))
    return paths
