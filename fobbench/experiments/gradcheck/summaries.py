"""Tables and the headline computed from gradcheck's rows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from fobbench.estimators import REGISTRY, rank_of

if TYPE_CHECKING:
    from fobbench.stats import Fit


def method_label(method: str, cg_steps: object) -> str:
    """``imaml (cg 5)`` for a method run at a knob value, the plain name otherwise."""
    if cg_steps is None or (isinstance(cg_steps, float) and math.isnan(cg_steps)):
        return method
    return f"{method} (cg {int(cg_steps)})"


def error_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean normalized error by estimator (rows, registry order) and K (columns)."""
    rows = frame[(frame["benchmark"] == "gradcheck.error_vs_k") & (frame["metric"] == "rel_error")].copy()
    if rows.empty:
        return pd.DataFrame()
    rows["estimator"] = [method_label(m, c) for m, c in zip(rows["method"], rows["cg_steps"], strict=False)]
    table = rows.pivot_table(index="estimator", columns="inner_steps", values="value", aggfunc="mean")
    table = table.loc[sorted(table.index, key=lambda label: (rank_of(label.split(" ")[0]), label))]
    table.columns = [int(k) for k in table.columns]
    return table


AUTO_SOURCES = {"gradcheck.error_vs_nu": "quadratic", "gradcheck.network_error_vs_k": "network"}
"""The sweeps whose ``auto`` rows sit beside a grid of fixed ν (``--nu auto``)."""


def auto_table(frame: pd.DataFrame) -> pd.DataFrame:
    """``--nu auto`` against the best fixed ν of the grid, per sweep, method and K.

    Columns: ν auto (``nu_used``), err auto, ν best (the grid ν with the least error), err best,
    and ratio = auto error / best error (the issue's criterion: ≤ 2). Errors are means over
    seeds. Empty when the frame holds no ``auto`` rows.
    """
    rows = frame[frame["benchmark"].isin(AUTO_SOURCES) & frame["metric"].isin(("rel_error", "nu_used"))]
    if rows.empty or not (rows["nu"].astype(str) == "auto").any():
        return pd.DataFrame()
    rows = rows.assign(auto=rows["nu"].astype(str) == "auto")
    keys = ["benchmark", "method", "inner_steps"]
    out = []
    for key, group in rows.groupby(keys, sort=False):
        auto = group[group["auto"]]
        fixed = group[~group["auto"] & (group["metric"] == "rel_error")]
        if auto.empty or fixed.empty:
            continue
        by_nu = fixed.assign(nu=pd.to_numeric(fixed["nu"])).groupby("nu")["value"].mean()
        error = float(auto.loc[auto["metric"] == "rel_error", "value"].mean())
        used = float(auto.loc[auto["metric"] == "nu_used", "value"].mean())
        out.append({"sweep": AUTO_SOURCES[key[0]], "method": key[1], "K": int(key[2]), "ν auto": used,
                    "err auto": error, "ν best": float(by_nu.idxmin()), "err best": float(by_nu.min()),
                    "ratio": error / float(by_nu.min())})
    if not out:
        return pd.DataFrame()
    table = pd.DataFrame(out)
    table["rank"] = [rank_of(m) for m in table["method"]]
    return table.sort_values(["sweep", "rank", "K"]).drop(columns="rank").reset_index(drop=True)


def _order(label: str) -> str:
    """The registry order of a table label's method (``""`` for an unknown name)."""
    name = label.split(" ")[0]
    return REGISTRY[name].order if name in REGISTRY else ""


def _is_exact(label: str) -> bool:
    """True when a table label's method is a ground-truth (exact) one."""
    name = label.split(" ")[0]
    return name in REGISTRY and REGISTRY[name].is_exact


def headline(table: pd.DataFrame) -> str:
    """One sentence computed from an :func:`error_table`: who is best at the largest K, who stalls.

    A method "stalls" when its error at the largest K is more than 0.7× its error at the
    previous K (it has stopped shrinking with K).
    """
    if table.empty:
        return "no error-vs-K rows"
    ks = list(table.columns)
    last = ks[-1]
    candidates = table.drop(index=[i for i in table.index if _is_exact(i)])[last].dropna()
    if candidates.empty:
        return f"K={last}: only the exact meta-gradient was run"
    best = candidates.idxmin()
    parts = [f"at K={last} the most accurate estimator is {best} ({candidates[best]:.1e})"]
    first_order = candidates[[i for i in candidates.index if _order(i) == "first"]]
    if not first_order.empty and first_order.idxmin() != best:
        parts[0] += f", the best first-order one {first_order.idxmin()} ({first_order.min():.1e})"
    if len(ks) > 1:
        previous = ks[-2]
        ratio = (table[last] / table[previous]).dropna()
        stalled = [f"{label} {table.loc[label, last]:.1e}" for label in ratio.index
                   if not _is_exact(label) and ratio[label] > 0.7]
        if stalled:
            parts.append(f"no longer shrinking from K={previous} to K={last}: " + ", ".join(stalled))
    return "; ".join(parts)


def rates_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Fitted slopes with 95% CIs and the theory slope, one row per (fit, solver, method)."""
    rows = frame[frame["benchmark"] == "gradcheck.rates"]
    if rows.empty:
        return pd.DataFrame()
    fits = rows[rows["metric"].isin(["slope", "slope_lo", "slope_hi", "theory_slope"])]
    keys = ["fit", "solver", "method"]
    table = fits.pivot_table(index=keys, columns="metric", values="value", aggfunc="mean").reset_index()
    ranges = rows.dropna(subset=["fit_range"]).groupby(keys)["fit_range"].first()
    table["range"] = [ranges.get(tuple(r[k] for k in keys), "") for _, r in table.iterrows()]
    return table


def _network(frame: pd.DataFrame, name: str, metric: str | None = None) -> pd.DataFrame:
    rows = frame[frame["benchmark"] == f"gradcheck.{name}"]
    return rows if metric is None else rows[rows["metric"] == metric]


def network_tables(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) pairs of ``gradcheck --problem``: the truth per task, error by method × K,
    bias by method × ν (cells are floats, or a status string where no error exists)."""
    tables: list[tuple[str, pd.DataFrame]] = []
    truth = _network(frame, "network_truth")
    if not truth.empty:
        wide = truth.pivot_table(index="task", columns="metric", values="value", aggfunc="first")
        keep = [c for c in ("inner_residual", "cg_residual", "lambda_min", "lambda_max",
                            "route2_inner_residual",
                            "route_agreement") if c in wide.columns]
        wide = wide[keep]
        wide.insert(0, "status", truth.groupby("task")["status"].first())
        tables.append(("truth per task (Newton–CG + CG, float64); route_agreement: ‖g₁ − g₂‖/‖g₂‖ vs "
                       "GD + dense solve", wide))
    for name, column, title in (("network_error_vs_k", "inner_steps", "relative error ‖g − ∇F‖/‖∇F‖ by K"),
                                ("network_error_vs_nu", "nu", "bias with converged solves by ν")):
        rows = _network(frame, name)
        if rows.empty:
            continue
        rows = rows.copy()
        auto = rows["nu"].astype(str) == "auto"
        if name == "network_error_vs_k" and auto.any():  # the grid ν rows are for auto_table
            rows, title = rows[auto], title + " (ν = auto)"
        cg = rows["cg_steps"] if "cg_steps" in rows.columns else [None] * len(rows)
        rows["estimator"] = [method_label(m, c) for m, c in zip(rows["method"], cg, strict=False)]
        errors = rows[rows["metric"] == "rel_error"]
        if errors.empty:
            status = rows.groupby("estimator")["status"].first()
            tables.append((f"{title}: no truth ({', '.join(sorted(set(status)))})", status.to_frame()))
            continue
        table = errors.pivot_table(index="estimator", columns=column, values="value", aggfunc="mean")
        table = table.loc[sorted(table.index, key=lambda label: (rank_of(label.split(" ")[0]), label))]
        table.columns = [f"K={int(k)}" if column == "inner_steps" else f"{k:.2g}" for k in table.columns]
        table.index.name = "estimator"
        tables.append((title, table))
    return tables


FLOOR_FACTOR = 10.0
"""A ν point enters a slope fit only when its error is at least this many times its estimated
floor (the ``floor`` metric: solve tolerance, rounding and the truth's own error)."""


@dataclass(frozen=True)
class NetworkSlope:
    """One method's fit of log error against log ν on the points above the floor.

    Attributes:
        method: the estimator.
        fit: the fit (NaN fields with fewer than three points above the floor).
        theory: Prop. 2's slope, or None.
        kept, total: ν points above ``FLOOR_FACTOR`` × floor, and all ν points.
        span: ``low..high`` of the ν fitted ("" when none).
        floor: the largest estimated floor over the ν points.
    """

    method: str
    fit: Fit
    theory: float | None
    kept: int
    total: int
    span: str
    floor: float


def network_slopes(frame: pd.DataFrame) -> list[NetworkSlope]:
    """Per method of the ν sweep, the log-log slope of its error against ν, fitted only where the
    error is at least :data:`FLOOR_FACTOR` times its estimated floor (rows without a ``floor``
    metric, written before it existed, are all used): below that the error is tolerance and
    rounding, whose slope says nothing about the bias order."""
    from fobbench.stats import fit_slope

    rows = _network(frame, "network_error_vs_nu")
    errors = rows[rows["metric"] == "rel_error"]
    floors = rows[rows["metric"] == "floor"]
    fits = []
    for method in sorted(dict.fromkeys(errors["method"]), key=rank_of):
        mine = errors[errors["method"] == method].groupby("nu")["value"].mean()
        floor = floors[floors["method"] == method].groupby("nu")["value"].mean()
        floor = floor.reindex(mine.index).fillna(0.0)
        keep = mine >= FLOOR_FACTOR * floor
        xs, ys = list(mine.index[keep]), list(mine.values[keep])
        theory = REGISTRY[method].theory_nu if method in REGISTRY else None
        span = f"{min(xs):.2g}..{max(xs):.2g}" if xs else ""
        fits.append(NetworkSlope(method, fit_slope(xs, ys), theory, len(xs), len(mine), span,
                                 float(floor.max()) if len(floor) else float("nan")))
    return fits


def network_notes(frame: pd.DataFrame) -> list[str]:
    """One line per ν slope against theory (with the ν range fitted above the floor), and how
    many tasks had a trustworthy truth."""
    lines = []
    truth = _network(frame, "network_truth")
    if not truth.empty:
        status = truth.groupby("task")["status"].first()
        counts = ", ".join(f"{n} {s}" for s, n in status.value_counts().items())
        residual = truth[truth["metric"] == "inner_residual"]["value"].max()
        lines.append(f"truth: {len(status)} tasks ({counts}); worst inner residual ‖∇‖ = {residual:.1e}")
        agree = truth[truth["metric"] == "route_agreement"]["value"]
        if not agree.empty:
            lines.append(f"truth by two routes: relative difference ≤ {agree.max():.1e}")
    for s in network_slopes(frame):
        theory = f" (theory {s.theory:g})" if s.theory is not None else ""
        if s.kept < 3:
            lines.append(f"slope of bias vs ν, {s.method}: no range above the floor ({s.kept} of {s.total} ν "
                         f"points ≥ {FLOOR_FACTOR:g}× the estimated floor ≤ {s.floor:.1e}; 3 needed){theory}")
            continue
        lines.append(f"slope of bias vs ν, {s.method}: {s.fit.slope:.3f} [{s.fit.lo:.2f}, {s.fit.hi:.2f}] "
                     f"on ν {s.span} ({s.kept} of {s.total} points ≥ {FLOOR_FACTOR:g}× floor){theory}")
    return lines
