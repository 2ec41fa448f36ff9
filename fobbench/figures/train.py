"""Figures and the summary table of the training benchmark (paper Fig. 2, Table 2).

For each benchmark (``train.mnist1d``, ``train.omniglot``) and task shape (ways, shots,
queries), :func:`draw` writes:

* ``<bench>_<N>way<K>shot_accuracy.<fmt>``: held-out query accuracy after adaptation vs
  meta-iteration, one line per method (and per setting that differs between runs), with a
  95% band: over evaluation tasks when a line has one seed, over seeds otherwise;
* ``..._speed.<fmt>``: seconds per meta-iteration against the method's plain fwd+bwd floor;
* ``..._final.<fmt>`` and ``..._final.md``: the final-accuracy table (figure and markdown;
  never a CSV, so results folders only hold results).

:func:`summarize` is the same table as a DataFrame; ``fobbench train`` prints it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from fobbench.figures.common import SERIES_KEYS, method_rank, save, style_of
from fobbench.stats import t_half_width

LINE_KEYS = tuple(k for k in SERIES_KEYS if k != "measured_by")
"""Lines split by method and device. Not by ``measured_by``: here it names each metric's own
kind (accuracy, interval, wall clock), so the metrics of one point share a row."""

CONFIG_COLUMNS = (
    "problem", "split", "ways", "shots", "queries", "meta_batch", "inner_steps", "inner_lr",
    "inner_optimizer", "lam", "nu", "cg_steps", "outer", "meta_lr", "eval_tasks", "inner_protocol",
)
"""Point columns (besides ``iteration``) that distinguish training set-ups."""

TASK_COLUMNS = ("benchmark", "ways", "shots", "queries")
"""One figure per value of these: lines on one axis share the task shape."""

SUMMARY_ITERATION = 100
"""The early checkpoint of the table (the paper: FO-B-MAML > 0.85 "within 100 iterations")."""


def _wide(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, method, seed, setting, iteration) with a column per metric."""
    rows = frame[frame["benchmark"].astype(str).str.startswith("train")]
    keys = [c for c in ("benchmark", *LINE_KEYS, *CONFIG_COLUMNS, "run_id", "seed", "iteration")
            if c in rows.columns]
    rows = rows.assign(**{k: rows[k].fillna("") for k in keys if rows[k].dtype == object})
    wide = rows.pivot_table(index=keys, columns="metric", values="value", aggfunc="mean")
    return wide.reset_index()


def _line_keys(wide: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(columns that separate lines, those of them shown in labels: method + what varies)."""
    keys = [c for c in (*TASK_COLUMNS, *LINE_KEYS, *CONFIG_COLUMNS) if c in wide.columns]
    shown = [c for c in keys
             if c == "method" or (c not in TASK_COLUMNS and wide[c].astype(str).nunique() > 1)]
    return keys, shown


def _label(named: dict[str, object], shown: list[str]) -> str:
    return " · ".join(str(named[c]) if c in LINE_KEYS else f"{c}={named[c]}" for c in shown)


def _interval(values: np.ndarray) -> float:
    return t_half_width(values[np.isfinite(values)])


def _curve(line: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy and 95% half-width per iteration: over tasks (one repeat) or repeats."""
    out = []
    for iteration, rows in line.groupby("iteration"):
        acc = rows["eval_acc"].to_numpy(dtype=float)
        if len(acc) == 1:
            half = float(rows["eval_acc_ci95"].iloc[0]) if "eval_acc_ci95" in rows else 0.0
            over = "tasks"
        else:
            half, over = _interval(acc), "seeds"
        out.append({"iteration": iteration, "mean": float(np.nanmean(acc)), "half": half,
                    "over": over, "n": len(acc)})
    return pd.DataFrame(out)


def summarize(frame: pd.DataFrame, at: int = SUMMARY_ITERATION) -> pd.DataFrame:
    """The final-accuracy table: one row per line (benchmark, task shape, method, setting).

    Columns: ``benchmark, label, method, seeds, iteration`` (final), ``final_acc``,
    ``final_ci95`` with ``ci_over`` (``tasks`` for one seed, ``seeds`` otherwise),
    ``early_iteration`` (the evaluated iteration nearest ``at``) and ``early_acc``,
    ``sec_per_iter``, ``floor_sec``, ``floor_ratio``, ``wall_time`` (mean over repeats at the
    final iteration; timing NaN when the final row has none).
    """
    wide = _wide(frame)
    if wide.empty or "eval_acc" not in wide:
        return pd.DataFrame()
    wide = wide[wide["eval_acc"].notna()]
    keys, shown = _line_keys(wide)
    rows = []
    for values, line in wide.groupby(keys, dropna=False, sort=True):
        named = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=False))
        curve = _curve(line)
        final = curve.iloc[curve["iteration"].idxmax()]
        nearest = curve.iloc[(curve["iteration"] - at).abs().argsort(kind="stable").iloc[0]]
        last = line[line["iteration"] == final["iteration"]]

        def mean(metric: str, last: pd.DataFrame = last) -> float:
            present = metric in last and last[metric].notna().any()
            return float(last[metric].mean()) if present else float("nan")

        rows.append({
            "benchmark": named.get("benchmark", ""), "label": _label(named, shown),
            "method": named.get("method", ""), "ways": named.get("ways"), "shots": named.get("shots"),
            "seeds": int(final["n"]), "iteration": int(final["iteration"]),
            "final_acc": float(final["mean"]), "final_ci95": float(final["half"]), "ci_over": final["over"],
            "early_iteration": int(nearest["iteration"]), "early_acc": float(nearest["mean"]),
            "sec_per_iter": mean("sec_per_iter"), "floor_sec": mean("floor_sec"),
            "floor_ratio": mean("floor_ratio"), "wall_time": mean("wall_time"),
        })
    rows.sort(key=lambda row: method_rank(str(row["method"])))  # stable: other keys keep their order
    return pd.DataFrame(rows)


def _title(named: dict[str, object]) -> str:
    bench = str(named.get("benchmark", "train")).split(".", 1)[-1]
    return f"{bench}: {named.get('ways')}-way {named.get('shots')}-shot, {named.get('queries')} queries/class"


def _stem(named: dict[str, object]) -> str:
    bench = str(named.get("benchmark", "train")).replace(".", "_")
    return f"{bench}_{named.get('ways')}way{named.get('shots')}shot"


def _accuracy_figure(group: pd.DataFrame, named: dict[str, object]) -> plt.Figure:
    keys, shown = _line_keys(group)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    overs = set()
    variants: dict[str, int] = {}
    for values, line in group.groupby(keys, dropna=False, sort=True):
        named_line = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=False))
        label = _label(named_line, shown)
        curve = _curve(line).sort_values("iteration")
        overs.update(curve["over"])
        method = str(named_line.get("method", ""))
        style = {"markersize": 4, **style_of(method, variants.get(method, 0))}
        variants[method] = variants.get(method, 0) + 1
        drawn, = ax.plot(curve["iteration"], curve["mean"], label=label, **style)
        ax.fill_between(curve["iteration"], curve["mean"] - curve["half"], curve["mean"] + curve["half"],
                        color=drawn.get_color(), alpha=0.2, linewidth=0)
    ways = named.get("ways")
    if isinstance(ways, (int, float, np.integer)) and ways > 0:
        ax.axhline(1.0 / float(ways), color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel("meta-iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are whole numbers
    ax.set_ylabel("held-out query accuracy after adaptation")
    band = " / ".join(sorted(overs)) or "tasks"
    ax.set_title(f"{_title(named)}\n(band: 95% interval over {band})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def _speed_figure(table: pd.DataFrame, named: dict[str, object]) -> plt.Figure | None:
    table = table[table["sec_per_iter"].notna()]
    if table.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(table) + 1.8))
    y = np.arange(len(table))
    # The iteration in the floor's own clock (process CPU time on CPU, wall clock on CUDA).
    same_clock = table["floor_sec"] * table["floor_ratio"]
    ax.barh(y + 0.2, same_clock * 1e3, height=0.4, label="time per meta-iteration")
    ax.barh(y - 0.2, table["floor_sec"] * 1e3, height=0.4, label="floor: plain fwd+bwd passes")
    for i, (per_iter, ratio) in enumerate(zip(same_clock, table["floor_ratio"], strict=False)):
        ax.text(per_iter * 1e3, i + 0.2, f" ×{ratio:.2f}", va="center", fontsize=8)
    ax.set_yticks(y, table["label"])
    ax.set_xlabel("milliseconds")
    ax.set_title(f"{_title(named)}\nspeed against the floor of plain fwd+bwd passes", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def _rows_text(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["method", "seeds", "final acc ± 95% CI", "acc @ iter", "ms/iter", "floor ratio", "wall (s)"]
    body = []
    for _, row in table.iterrows():
        body.append([
            str(row["label"]), str(row["seeds"]),
            f"{row['final_acc']:.3f} ± {row['final_ci95']:.3f} ({row['ci_over']}, iter {row['iteration']})",
            f"{row['early_acc']:.3f} @ {row['early_iteration']}",
            "–" if pd.isna(row["sec_per_iter"]) else f"{row['sec_per_iter'] * 1e3:.0f}",
            "–" if pd.isna(row["floor_ratio"]) else f"{row['floor_ratio']:.2f}",
            "–" if pd.isna(row["wall_time"]) else f"{row['wall_time']:.0f}",
        ])
    return header, body


def _table_figure(table: pd.DataFrame, named: dict[str, object]) -> plt.Figure:
    header, body = _rows_text(table)
    fig, ax = plt.subplots(figsize=(9, max(2.0, 0.3 * len(body) + 1.0)))
    ax.axis("off")
    drawn = ax.table(cellText=body, colLabels=header, loc="center", cellLoc="left")
    drawn.auto_set_font_size(False)
    drawn.set_fontsize(8)
    drawn.auto_set_column_width(list(range(len(header))))
    ax.set_title(f"{_title(named)}: final held-out accuracy", fontsize=10)
    return fig


def _markdown(table: pd.DataFrame, named: dict[str, object]) -> str:
    header, body = _rows_text(table)
    lines = [f"# {_title(named)}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def draw(frame: pd.DataFrame, out_dir: Path, fmt: str = "png") -> list[Path]:
    """Draw the training figures of ``frame`` (rows of ``train*`` benchmarks) into ``out_dir``.

    Returns the written paths (accuracy curve, speed bars, final table figure and markdown
    per benchmark and task shape); frames without ``eval_acc`` rows give nothing.
    """
    out_dir = Path(out_dir)
    if frame.empty or "metric" not in frame or not (frame["metric"] == "eval_acc").any():
        return []
    wide = _wide(frame)
    wide = wide[wide["eval_acc"].notna()]
    task_keys = [c for c in TASK_COLUMNS if c in wide.columns]
    written: list[Path] = []
    for values, group in wide.groupby(task_keys, dropna=False, sort=True):
        named = dict(zip(task_keys, values if isinstance(values, tuple) else (values,), strict=False))
        stem = _stem(named)
        written.append(save(_accuracy_figure(group, named), out_dir, f"{stem}_accuracy", fmt))
        mask = np.ones(len(frame), dtype=bool)
        for key, value in named.items():
            mask &= (frame[key].astype(str) == str(value)).to_numpy()
        table = summarize(frame[mask])
        speed = _speed_figure(table, named)
        if speed is not None:
            written.append(save(speed, out_dir, f"{stem}_speed", fmt))
        written.append(save(_table_figure(table, named), out_dir, f"{stem}_final", fmt))
        markdown = out_dir / f"{stem}_final.md"
        markdown.write_text(_markdown(table, named))
        written.append(markdown)
    return written
