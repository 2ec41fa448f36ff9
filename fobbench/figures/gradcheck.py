"""Figures of the ``gradcheck.*`` benchmarks (paper Fig. 1, 4, 5 and the rate fits).

``draw(frame, out_dir, fmt)`` writes one figure per sub-experiment present in ``frame``:

- ``gradcheck_error_vs_k``  normalized error vs K, log-log, one line per estimator (iMAML per
  CG step count), mean over seeds/runs with a 95% band;
- ``gradcheck_outer_loss``  F(θ_t) − F* vs outer iteration (log y) and F(θ_t) with F* dashed;
- ``gradcheck_error_vs_nu`` error vs ν, one panel per FO-B-MAML variant, one line per K;
- ``gradcheck_lambda``      adaptation distance (left axis) and cond(A + λI) (right axis) vs λ;
- ``gradcheck_rates``       the points behind each rate fit with the fitted slope ± 95% CI;
- ``gradcheck_network_error_vs_k``, ``gradcheck_network_error_vs_nu`` (``gradcheck --problem``):
  error against the float64 implicit truth vs K and the bias vs ν, log-log, one figure per
  problem, the truth's worst residuals and route agreement in the caption.

Lines never merge methods, measurement kinds or devices (:func:`fobbench.figures.common.series`),
nor different values of ``nu``/``lam``/``cg_steps`` within one figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from fobbench.figures.common import aggregate, save, series, style_of

SPLIT = ("cg_steps", "nu", "lam")
"""Point columns that also separate lines when they vary within a method."""

DIVERGED = 10.0
"""A method diverges on the outer loss when its final F − F* exceeds this factor × its first."""


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: object) -> str:
    """``0.001`` for a number (also one read back as text), the text itself otherwise (ν = auto)."""
    try:
        return format(float(value), "g")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)


def _lines(frame: pd.DataFrame, split: Sequence[str] = SPLIT) -> Iterator[tuple[str, pd.DataFrame]]:
    """Series by method/measured_by/device, further split by the ``split`` columns that vary."""
    for label, group in series(frame):
        keys = [k for k in split if k in group.columns and group[k].nunique(dropna=True) > 1]
        always = ["cg_steps"] if "cg_steps" in group.columns and group["cg_steps"].notna().any() else []
        keys = list(dict.fromkeys(always + keys))
        if not keys:
            yield label, group
            continue
        for values, sub in group.groupby(keys, dropna=False, sort=True):
            values = values if isinstance(values, tuple) else (values,)
            extra = []
            for key, value in zip(keys, values, strict=False):
                if _blank(value):
                    continue
                symbol = {"cg_steps": "cg ", "lam": "λ=", "nu": "ν="}[key]
                text = _number(value)
                extra.append(f"{symbol}{int(value) if key == 'cg_steps' else text}")
            yield (f"{label} ({', '.join(extra)})" if extra else label), sub


def _styled(frame: pd.DataFrame, split: Sequence[str] = SPLIT
            ) -> Iterator[tuple[str, pd.DataFrame, dict[str, object]]]:
    """:func:`_lines` with each line's fixed method style (variants of a method: other dashes)."""
    seen: dict[str, int] = {}
    for label, group in _lines(frame, split):
        method = str(group["method"].iloc[0])
        yield label, group, style_of(method, seen.get(method, 0))
        seen[method] = seen.get(method, 0) + 1


def _setting(rows: pd.DataFrame, column: str, symbol: str) -> str | None:
    """``ν=0.01`` when every row has one value of ``column``; None when it varies or is absent."""
    if column not in rows.columns:
        return None
    values = rows[column].dropna().unique()
    return f"{symbol}={float(values[0]):g}" if len(values) == 1 else None


def _settings(rows: pd.DataFrame, *columns: tuple[str, str]) -> str:
    shown = [s for s in (_setting(rows, c, symbol) for c, symbol in columns) if s]
    return f" ({', '.join(shown)})" if shown else ""


def _band(ax: plt.Axes, stats_frame: pd.DataFrame, x: str, label: str, **style: object) -> None:
    stats_frame = stats_frame.sort_values(x)
    style = {"marker": "o", "markersize": 4, **style}
    line, = ax.plot(stats_frame[x], stats_frame["mean"], label=label, **style)
    if (stats_frame["n"] > 1).any():
        ax.fill_between(stats_frame[x], stats_frame["lo"].clip(lower=1e-300), stats_frame["hi"],
                        color=line.get_color(), alpha=0.2)


def _rows(frame: pd.DataFrame, benchmark: str, metric: str) -> pd.DataFrame:
    return frame[(frame["benchmark"] == benchmark) & (frame["metric"] == metric)]


def _error_vs_k(frame: pd.DataFrame, out_dir: Path, fmt: str) -> Path | None:
    rows = _rows(frame, "gradcheck.error_vs_k", "rel_error")
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    exact = rows[rows["method"] == "exact"]
    estimators = rows[rows["method"] != "exact"]
    for label, group, style in _styled(rows if estimators.empty else estimators):
        _band(ax, aggregate(group, ["inner_steps"]), "inner_steps", label, **style)
    ax.set(xscale="log", yscale="log", xlabel="inner steps K", ylabel="‖g − ∇F‖ / ‖∇F‖",
           title="Meta-gradient error vs inner steps K, quadratic"
           + _settings(rows, ("nu", "ν"), ("lam", "λ")))
    if not exact.empty and not estimators.empty:
        # The exact gradient sits at float64 roundoff (~1e-16): drawing it would stretch the
        # axis over many decades below every estimator. Clip at the estimators' floor; say so.
        floor = estimators.groupby(["method", "inner_steps"])["value"].mean()
        floor = floor[floor > 0].min()
        if np.isfinite(floor):
            ax.set_ylim(bottom=floor / 3)
        ax.text(0.01, 0.01, f"exact (closed form) not drawn: error ≤ {exact['value'].max():.0e} at every K",
                transform=ax.transAxes, fontsize=7, color="dimgray", va="bottom")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save(fig, out_dir, "gradcheck_error_vs_k", fmt)


def _outer_loss(frame: pd.DataFrame, out_dir: Path, fmt: str) -> Path | None:
    rows = frame[frame["benchmark"] == "gradcheck.outer_loss"]
    if rows.empty:
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 7.0), sharex=True)
    diverged: set[str] = set()
    for label, group, style in _styled(rows[rows["metric"] == "suboptimality"]):
        curve = aggregate(group, ["iteration"]).sort_values("iteration")["mean"].to_numpy(dtype=float)
        if len(curve) > 1 and (not np.isfinite(curve[-1]) or curve[-1] > DIVERGED * max(curve[0], 1e-300)):
            diverged.add(label)
            label = f"{label} — diverges (F − F* = {curve[-1]:.0e} at the end)"
        positive = group.assign(value=group["value"].clip(lower=1e-16))
        _band(top, aggregate(positive, ["iteration"]), "iteration", label, **style)
    kept: list[np.ndarray] = []
    for label, group, style in _styled(rows[rows["metric"] == "outer_loss"]):
        stats_frame = aggregate(group, ["iteration"])
        if label not in diverged:
            kept.append(stats_frame["mean"].to_numpy(dtype=float))
        shown = label if label not in diverged else f"{label} (off scale ↑)"
        _band(bottom, stats_frame, "iteration", shown, **style)
    if "f_star" in rows.columns and rows["f_star"].notna().any():
        for f_star in sorted(set(np.round(rows["f_star"].dropna().astype(float), 12))):
            bottom.axhline(f_star, color="black", linestyle="--", linewidth=1)
            kept.append(np.array([f_star]))
        bottom.plot([], [], color="black", linestyle="--", label="F* (closed form)")
    if diverged and kept:
        # A diverging method (Reptile at 3e10) would flatten every other line of this linear
        # panel: clip to the converging ones; the log panel above shows the divergence.
        finite = np.concatenate(kept)
        finite = finite[np.isfinite(finite)]
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            pad = 0.05 * (hi - lo) or 0.05 * abs(hi) or 1.0
            bottom.set_ylim(lo - pad, hi + pad)
    top.set(yscale="log", ylabel="F(θ_t) − F*",
            title="Meta-training on the quadratic" + _settings(rows, ("nu", "ν"), ("lam", "λ")))
    bottom.set(xlabel="outer iteration", ylabel="F(θ_t)")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (top, bottom):
        ax.grid(True, which="both", alpha=0.3)
    top.legend(fontsize=7, ncol=2)
    bottom.legend(fontsize=7, ncol=2)
    return save(fig, out_dir, "gradcheck_outer_loss", fmt)


def _error_vs_nu(frame: pd.DataFrame, out_dir: Path, fmt: str) -> Path | None:
    rows = _rows(frame, "gradcheck.error_vs_nu", "rel_error")
    if rows.empty:
        return None
    auto = rows["nu"].astype(str) == "auto"  # --nu auto: a marker at the ν it chose
    chosen = _rows(frame, "gradcheck.error_vs_nu", "nu_used")
    rows = rows[~auto].assign(nu=pd.to_numeric(rows.loc[~auto, "nu"]))
    methods = sorted(rows["method"].unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(5.2 * len(methods), 4.2), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=False):
        subset = rows[rows["method"] == method]
        for k, group in subset.groupby("inner_steps", sort=True):
            for label, line in _lines(group, split=("lam",)):
                _band(ax, aggregate(line, ["nu"]), "nu", f"K={int(k)}" + label.removeprefix(method))
            mine = _rows(frame, "gradcheck.error_vs_nu", "rel_error")
            mine = mine[auto & (mine["method"] == method) & (mine["inner_steps"] == k)]
            used = chosen[(chosen["method"] == method) & (chosen["inner_steps"] == k)]
            if not mine.empty and not used.empty:
                ax.plot([used["value"].mean()], [mine["value"].mean()], marker="*", markersize=11,
                        linestyle="none", color=ax.lines[-1].get_color(), label=f"K={int(k)} auto")
        ax.set(xscale="log", yscale="log", xlabel="perturbation ν", ylabel="‖g − ∇F‖ / ‖∇F‖",
               title=method + _settings(subset, ("lam", "λ")))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return save(fig, out_dir, "gradcheck_error_vs_nu", fmt)


def _lambda(frame: pd.DataFrame, out_dir: Path, fmt: str) -> Path | None:
    rows = frame[frame["benchmark"] == "gradcheck.lambda"]
    if rows.empty:
        return None
    fig, left = plt.subplots(figsize=(6.4, 4.2))
    right = left.twinx()
    for label, group in series(rows[rows["metric"] == "adaptation_distance"]):
        _band(left, aggregate(group, ["lam"]), "lam", f"‖φ* − θ‖ · {label}", color="tab:blue")
    for label, group in series(rows[rows["metric"] == "condition_number"]):
        _band(right, aggregate(group, ["lam"]), "lam", f"cond(A + λI) · {label}", color="tab:red",
              linestyle="--")
    left.set(xscale="log", xlabel="λ", ylabel="adaptation distance ‖φ* − θ‖",
             title="Effect of λ on adaptation and conditioning")
    right.set_ylabel("condition number of A + λI")
    handles = left.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    left.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="upper center")
    left.grid(True, which="both", alpha=0.3)
    return save(fig, out_dir, "gradcheck_lambda", fmt)


def _rates(frame: pd.DataFrame, out_dir: Path, fmt: str) -> Path | None:
    rows = frame[frame["benchmark"] == "gradcheck.rates"]
    if rows.empty or "x" not in rows.columns:
        return None
    points = rows[(rows["metric"] == "rel_error") & rows["x"].notna()]
    if points.empty:
        return None
    fits = rows[rows["metric"].isin(["slope", "slope_lo", "slope_hi", "theory_slope"])]
    panels = sorted({(f, s) for f, s in zip(points["fit"], points["solver"], strict=False)})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.2), squeeze=False)
    for ax, (fit, solver) in zip(axes[0], panels, strict=False):
        panel = points[(points["fit"] == fit) & (points["solver"] == solver)]
        for label, group in series(panel):
            method = group["method"].iloc[0]
            chosen = fits[(fits["fit"] == fit) & (fits["solver"] == solver) & (fits["method"] == method)]
            values = chosen.groupby("metric")["value"].mean()
            if {"slope", "slope_lo", "slope_hi", "theory_slope"} <= set(values.index):
                label = (f"{label}: slope {values['slope']:.2f} [{values['slope_lo']:.2f}, "
                         f"{values['slope_hi']:.2f}], theory {values['theory_slope']:.2f}")
            _band(ax, aggregate(group, ["x"]), "x", label, **style_of(method))
        xlabel = "perturbation ν" if fit == "nu" else "inner precision δ"
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="‖g − ∇F‖ / ‖∇F‖",
               title=f"error vs {'ν' if fit == 'nu' else 'δ (best ν)'} · {solver}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    return save(fig, out_dir, "gradcheck_rates", fmt)


def draw(frame: pd.DataFrame, out_dir: Path, fmt: str = "png") -> list[Path]:
    """Write every gradcheck figure the rows of ``frame`` allow; return their paths."""
    out_dir = Path(out_dir)
    paths = []
    for figure in (_error_vs_k, _outer_loss, _error_vs_nu, _lambda, _rates, *_NETWORK):
        path = figure(frame, out_dir, fmt)
        if path is not None:
            paths.append(path)
    return paths


def _truth_caption(frame: pd.DataFrame, problem: str) -> str:
    """The truth's own residuals for a network figure's caption."""
    truth = frame[(frame["benchmark"] == "gradcheck.network_truth") & (frame["problem"] == problem)]
    if truth.empty:
        return ""

    def worst(metric: str) -> str:
        values = truth[truth["metric"] == metric]["value"]
        return "–" if values.empty else f"{values.max():.1e}"

    ok = int((truth.groupby("task")["status"].first() == "ok").sum())
    return (f"truth: {ok}/{truth['task'].nunique()} tasks ok; ‖∇‖ ≤ {worst('inner_residual')}, "
            f"CG residual ≤ {worst('cg_residual')}, two routes differ ≤ {worst('route_agreement')}")


def _network(frame: pd.DataFrame, out_dir: Path, fmt: str, name: str, x: str, xlabel: str) -> Path | None:
    rows = _rows(frame, f"gradcheck.{name}", "rel_error")
    if rows.empty:
        return None
    path = None
    for problem, mine in rows.groupby("problem"):
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        for label, group in _lines(mine, tuple(k for k in SPLIT if k != x)):
            _band(ax, aggregate(group, [x]), x, label)
        floors = _rows(frame, f"gradcheck.{name}", "floor")
        floors = floors[floors["problem"] == problem] if not floors.empty else floors
        if not floors.empty:  # the estimated error floor (tolerance, rounding, truth): below it, no bias
            worst = floors.groupby(x)["value"].max()
            ax.plot(worst.index, worst.values, color="0.5", linestyle=":", linewidth=1.0,
                    label="estimated floor (max over methods)")
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="‖g − ∇F‖ / ‖∇F‖",
               title=f"{problem}: meta-gradient error vs {xlabel.split(' ')[-1]} (float64 implicit truth)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.text(0.01, 0.005, _truth_caption(frame, str(problem)), fontsize=6.5)
        suffix = "" if rows["problem"].nunique() == 1 else f"_{problem}"
        path = save(fig, out_dir, f"gradcheck_{name}{suffix}", fmt)
    return path


_NETWORK = (
    lambda frame, out_dir, fmt: _network(frame, out_dir, fmt, "network_error_vs_k", "inner_steps",
                                         "inner steps K"),
    lambda frame, out_dir, fmt: _network(frame, out_dir, fmt, "network_error_vs_nu", "nu",
                                         "perturbation ν"),
)
