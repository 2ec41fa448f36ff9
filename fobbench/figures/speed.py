"""Figure of the speed benchmark: median time of one meta-gradient per contender.

One figure per benchmark and meta-batch size: horizontal bars per method (registry order),
one bar per implementation · batching (fobbench's vmap/loop/compiled, the peer libraries, the
floors), the interquartile range as an error bar and the median's ratio to the method's
honest floor written beside each bar (a compiled row's also to the compiled floor). Rows measured on
different devices or thread counts are drawn in separate figures.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from fobbench.figures.common import method_rank, save


def _bars(rows: pd.DataFrame) -> pd.DataFrame:
    wide = rows.pivot_table(index=["method", "impl", "batching"], columns="metric", values="value",
                            aggfunc="last").reset_index()
    for column in ("seconds_median", "seconds_iqr", "floor_ratio", "compiled_floor_ratio"):
        if column not in wide:
            wide[column] = float("nan")
    order = {"fobbench": 0, "floor": 2}
    wide["_key"] = [(method_rank(r.method), order.get(r.impl, 1), r.impl, r.batching)
                    for r in wide.itertuples()]
    return wide.sort_values("_key", ascending=False).reset_index(drop=True)


def draw(frame: pd.DataFrame, out_dir: Path, fmt: str = "png") -> list[Path]:
    """Draw every speed figure in ``frame`` (rows of ``speed.*`` benchmarks) into ``out_dir``."""
    paths: list[Path] = []
    if "metric" not in frame or frame[frame["metric"] == "seconds_median"].empty:
        return paths
    keys = [k for k in ("benchmark", "meta_batch", "device_name", "threads") if k in frame]
    for values, rows in frame.groupby(keys, sort=True, dropna=False):
        named = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=False))
        bars = _bars(rows).dropna(subset=["seconds_median"])
        if bars.empty:
            continue
        fig, ax = plt.subplots(figsize=(7.2, 0.32 * len(bars) + 1.4))
        colors = ["#999999" if impl == "floor" else "#1f77b4" if impl == "fobbench" else "#ff7f0e"
                  for impl in bars["impl"]]
        ax.barh(range(len(bars)), bars["seconds_median"] * 1e3, xerr=bars["seconds_iqr"] * 1e3, color=colors)
        ax.set_yticks(range(len(bars)), [f"{r.method} · {r.impl} · {r.batching}" for r in bars.itertuples()],
                     fontsize=7)
        for i, r in enumerate(bars.itertuples()):
            if pd.notna(r.floor_ratio):
                end = (r.seconds_median + (r.seconds_iqr if pd.notna(r.seconds_iqr) else 0.0) / 2) * 1e3
                label = f"  {r.floor_ratio:.2f}× floor"
                if pd.notna(r.compiled_floor_ratio):
                    label += f", {r.compiled_floor_ratio:.2f}× compiled floor"
                ax.text(end, i, label, va="center", fontsize=6)
        ax.set_xlabel("median ms per meta-gradient (bars: IQR)")
        extra = " · ".join(f"{k}={named[k]}" for k in keys if k != "benchmark")
        ax.set_title(f"{named.get('benchmark', 'speed')}: {extra}\nblue fobbench, orange peers, grey floors",
                     fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
        name = f"{str(named.get('benchmark', 'speed')).replace('.', '_')}_B{named.get('meta_batch', '')}"
        paths.append(save(fig, Path(out_dir), name, fmt))
    return paths
