"""Compare two sets of results point by point: better, worse or the same.

The model is asv's ``compare``: a change counts only when it is *real* and *large*. Real
depends on the metric's kind (:func:`kind_of`):

- **deterministic** metrics (bytes counted by the CPU allocator tracker, gradient errors at a
  fixed seed, closed forms, estimates) give the same number on every run, so any change beyond
  a tight relative tolerance (``rtol``, default 1e-6; plus ``atol``, default 1e-12, for values
  at roundoff level) is real and counts, however small;
- **noisy** metrics (wall-clock times, accuracy across seeds) need repeated samples on both
  sides and a statistical decision: the change must be significant (two-sided Mann–Whitney U
  with p < ``alpha``, or non-overlapping 95% t-intervals) *and* beyond ``factor`` (default
  1.10, i.e. 10%). With fewer than two samples on a side nothing can be decided: the verdict
  is "insufficient samples" (not "same"; it does not fail the gate).

Baseline points absent from NEW are "missing" and fail the gate unless allowed
(:func:`failed`); when no point of BASE can be compared with NEW at all the comparison is
refused (:func:`check_comparable`). A report written with :func:`write_csv` carries its own
schema name, :data:`REPORT_SCHEMA`, so results readers recognise and skip it.

Rows are matched by benchmark, method, point columns, metric, ``measured_by`` and device
(plus the seed for deterministic metrics), and only within one ``config_hash``: rows of the
same point whose hashes differ were run with different settings and are reported as
"not comparable", never compared. :func:`run` is pure (DataFrames in, DataFrame out) so it
can be tested without files; the CLI in :mod:`fobbench.cli.compare` only parses and prints.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from fobbench.errors import FobbenchError
from fobbench.results.schema import HEAD_COLUMNS, PROVENANCE_COLUMNS, REPORT_SCHEMA, VALUE_COLUMNS
from fobbench.stats import t_half_width

KNOWN_INFO_COLUMNS = (
    "status", "message", "sweep", "sdpa_backend", "contraction", "f_star", "momentum",
    "fit_points", "fit_range", "note", "error", "world_size",
)
"""Descriptive per-point columns outside the config hash that the commands write (fallback only:
see :func:`point_columns`)."""

NON_POINT_COLUMNS = frozenset(
    (*HEAD_COLUMNS, *VALUE_COLUMNS, *PROVENANCE_COLUMNS, *KNOWN_INFO_COLUMNS, "source")
)

BETTER, WORSE, SAME, CHANGED = "better", "worse", "same", "changed"
INSUFFICIENT = "insufficient samples"
NOT_COMPARABLE, MISSING, NEW = "not comparable", "missing", "new"
VERDICTS = (WORSE, CHANGED, MISSING, BETTER, SAME, INSUFFICIENT, NOT_COMPARABLE, NEW)
"""Every verdict, in the order summaries list them."""

FAILING = frozenset({WORSE, CHANGED})
"""Verdicts that always make ``fobbench compare`` exit with status 1 (``missing`` does too,
unless ``--allow-missing``)."""

COMPARED = frozenset({WORSE, CHANGED, BETTER, SAME, INSUFFICIENT})
"""Verdicts of a point found on both sides with the same config hash."""

DETERMINISTIC, NOISY = "deterministic", "noisy"
LOWER, HIGHER, EITHER = "lower", "higher", "either"

REPORT_COLUMNS = (
    "benchmark", "method", "point", "metric", "unit", "measured_by", "kind",
    "base", "new", "ratio", "n_base", "n_new", "verdict", "note",
)


@dataclass(frozen=True)
class MetricRule:
    """How to judge one metric.

    Attributes:
        direction: ``lower`` (errors, memory, time, loss), ``higher`` (accuracy) or
            ``either`` (descriptive quantities such as a condition number: any real change
            is reported as "changed").
        kind: ``deterministic`` or ``noisy``; None lets ``measured_by`` decide.
    """

    direction: str
    kind: str | None = None


METRICS: dict[str, MetricRule] = {
    # gradient quality (gradcheck): deterministic at a fixed seed
    "rel_error": MetricRule(LOWER),
    "outer_loss": MetricRule(LOWER),
    "adaptation_distance": MetricRule(EITHER),
    "condition_number": MetricRule(EITHER),
    "suboptimality": MetricRule(LOWER),
    "delta": MetricRule(EITHER),
    "best_nu": MetricRule(EITHER),
    "slope": MetricRule(EITHER),
    "slope_lo": MetricRule(EITHER),
    "slope_hi": MetricRule(EITHER),
    "theory_slope": MetricRule(EITHER),
    "r_squared": MetricRule(HIGHER),
    # gradcheck --problem (real networks): the estimate against the float64 truth, and the truth's own checks
    "cosine": MetricRule(HIGHER),
    "truth_inner_residual": MetricRule(LOWER),
    "truth_cg_residual": MetricRule(LOWER),
    "truth_lambda_min": MetricRule(EITHER),
    "inner_residual": MetricRule(LOWER),
    "cg_residual": MetricRule(LOWER),
    "lambda_min": MetricRule(EITHER),
    "lambda_max": MetricRule(EITHER),
    "newton_iters": MetricRule(EITHER),
    "cg_iters": MetricRule(EITHER),
    "route2_inner_residual": MetricRule(LOWER),
    "route2_gd_steps": MetricRule(EITHER),
    "route2_lambda_min": MetricRule(EITHER),
    "route_agreement": MetricRule(LOWER),
    "perturbed_residual": MetricRule(LOWER),
    "floor": MetricRule(LOWER),
    # memory: kind follows measured_by (CPU tracker and estimates are exact counts)
    "peak_bytes": MetricRule(LOWER),
    "peak_mib": MetricRule(LOWER),
    "peak_abs_bytes": MetricRule(LOWER),
    "reserved_bytes": MetricRule(LOWER),
    "baseline_bytes": MetricRule(EITHER),
    # time: always noisy
    "seconds": MetricRule(LOWER, NOISY),
    "sec_per_iter": MetricRule(LOWER, NOISY),
    "wall_time": MetricRule(LOWER, NOISY),
    "grad_sec": MetricRule(LOWER, NOISY),
    "cpu_sec_per_iter": MetricRule(LOWER, NOISY),
    "floor_sec": MetricRule(LOWER, NOISY),
    "floor_ratio": MetricRule(LOWER, NOISY),
    "compiled_floor_sec": MetricRule(LOWER, NOISY),
    "compiled_floor_ratio": MetricRule(LOWER, NOISY),
    "seconds_median": MetricRule(LOWER, NOISY),
    "seconds_iqr": MetricRule(EITHER, NOISY),
    "compile_sec": MetricRule(LOWER, NOISY),
    # speed: agreement of a contender's meta-gradient with fobbench's (float64, fixed seed)
    "agreement": MetricRule(LOWER, DETERMINISTIC),
    "passes": MetricRule(EITHER, DETERMINISTIC),
    # few-shot training: accuracy and loss vary across seeds
    "eval_acc": MetricRule(HIGHER, NOISY),
    "train_acc": MetricRule(HIGHER, NOISY),
    "eval_acc_ci95": MetricRule(EITHER, NOISY),
    "eval_loss": MetricRule(LOWER, NOISY),
    "train_loss": MetricRule(LOWER, NOISY),
}
"""Direction and kind of each known metric: the one table compare and its docs rely on."""

MEASURED_BY_KIND: dict[str, str] = {
    "closed_form": DETERMINISTIC,
    "exact": DETERMINISTIC,
    "cpu_dispatch_tracker": DETERMINISTIC,
    "meta_device_tracker": DETERMINISTIC,
    "estimate": DETERMINISTIC,
    "linregress": DETERMINISTIC,
    "grid_search": DETERMINISTIC,
    "theory": DETERMINISTIC,
    "implicit_truth": DETERMINISTIC,
    "newton_cg": DETERMINISTIC,
    "cg_relative": DETERMINISTIC,
    "cg": DETERMINISTIC,
    "lanczos": DETERMINISTIC,
    "distance_to_phi_star": DETERMINISTIC,
    "gd": DETERMINISTIC,
    "dense_eigvalsh": DETERMINISTIC,
    "relative_difference": DETERMINISTIC,
    "cuda_max_memory_reserved": DETERMINISTIC,
    "cuda_max_memory_allocated": DETERMINISTIC,
    "wall_clock": NOISY,
    "torch_benchmark_timer": NOISY,
    "timer": NOISY,
    "perf_counter": NOISY,
    "cuda_event": NOISY,
}
"""Kind implied by how a value was measured, for metrics whose rule leaves the kind open."""

_DETERMINISTIC_HINTS = ("closed_form", "tracker", "estimate", "exact", "analytic", "allocated", "count")
_NOISY_HINTS = ("clock", "timer", "time", "event")


def direction_of(metric: str) -> str:
    """``lower``/``higher``/``either`` for ``metric``; unknown: ``higher`` if it names an accuracy."""
    rule = METRICS.get(metric)
    if rule is not None:
        return rule.direction
    return HIGHER if "acc" in metric.lower() else LOWER


def kind_of(metric: str, measured_by: str) -> str:
    """``deterministic`` or ``noisy`` for a metric measured this way.

    The metric's rule wins; otherwise :data:`MEASURED_BY_KIND`, then name hints (a tracker,
    closed form or estimate is deterministic; a clock or timer is noisy). Anything still
    unknown is treated as noisy, which never reports a change from a single sample.
    """
    rule = METRICS.get(metric)
    if rule is not None and rule.kind is not None:
        return rule.kind
    how = str(measured_by).lower()
    if how in MEASURED_BY_KIND:
        return MEASURED_BY_KIND[how]
    if any(hint in how for hint in _DETERMINISTIC_HINTS):
        return DETERMINISTIC
    if any(hint in how for hint in _NOISY_HINTS):
        return NOISY
    return NOISY


@lru_cache(maxsize=256)
def _header_points(path: str, mtime: float) -> tuple[str, ...] | None:
    """The columns between ``method`` and ``metric`` of a results file's header, if readable."""
    try:
        with open(path, newline="") as handle:
            header = next(csv.reader(handle))
    except (OSError, StopIteration, csv.Error):
        return None
    if "method" not in header or "metric" not in header:
        return None
    return tuple(header[header.index("method") + 1: header.index("metric")])


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0


def point_columns(frame: pd.DataFrame) -> list[str]:
    """The point-parameter columns of a results frame (in column order).

    In a file they are the columns between ``method`` and ``metric`` of its header. A frame
    from :func:`fobbench.results.read_results` names its files in ``source``: their headers
    are read back, which is exact even when one command's info column is another's point
    column. Without readable sources, every column that is not a head, value, provenance or
    known info column (:data:`KNOWN_INFO_COLUMNS`), nor ``source``, counts as a point column.
    """
    if "source" in frame.columns and len(frame):
        headers = [_header_points(str(p), _mtime(str(p))) for p in frame["source"].dropna().unique()]
        if headers and all(h is not None for h in headers):
            wanted = {c for h in headers for c in h}
            return [c for c in frame.columns if c in wanted]
    return [c for c in frame.columns if c not in NON_POINT_COLUMNS]


def _format_number(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(value).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if number.is_integer() and abs(number) < 1e15:
            return str(int(number))
        return f"{number:.12g}"
    return str(value)


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _point_labels(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    present = [c for c in columns if c in frame.columns]
    labels = []
    for row in frame[present].itertuples(index=False, name=None) if present else [()] * len(frame):
        parts = [f"{c}={_format_number(v)}" for c, v in zip(present, row, strict=False) if not _is_missing(v)]
        labels.append(" ".join(parts))
    return labels


def _require(frame: pd.DataFrame, side: str) -> None:
    needed = ("benchmark", "method", "metric", "value", "measured_by", "config_hash")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise FobbenchError(f"{side}: not a fobbench results table (missing columns {', '.join(missing)})")


def _varying(frames: Sequence[pd.DataFrame], columns: Sequence[str]) -> dict[str, list[str]]:
    """Per benchmark, the point columns whose values differ between its rows (both sides).

    Columns that hold one value throughout are settings of the sweep, not what tells its
    points apart; leaving them out of the shown label keeps tables readable.
    """
    parts = [f[["benchmark", *[c for c in columns if c in f.columns]]] for f in frames]
    combined = pd.concat(parts, ignore_index=True, sort=False).astype(object)
    shown: dict[str, list[str]] = {}
    for benchmark, rows in combined.groupby("benchmark", sort=False):
        shown[str(benchmark)] = [
            c for c in columns if c in rows.columns and rows[c].map(_format_number).nunique(dropna=False) > 1
        ]
    return shown


def _prepare(frame: pd.DataFrame, columns: Sequence[str], shown: dict[str, list[str]]) -> pd.DataFrame:
    """One row per measured value with the matching key spelled out as strings."""
    benchmarks = frame["benchmark"].astype(str)
    labels = pd.Series("", index=frame.index, dtype=object)
    for benchmark, rows in frame.groupby(benchmarks, sort=False):
        labels.loc[rows.index] = _point_labels(rows, shown.get(str(benchmark), []))
    out = pd.DataFrame(
        {
            "benchmark": benchmarks,
            "method": frame["method"].astype(str),
            "point": _point_labels(frame, columns),
            "label": labels,
            "metric": frame["metric"].astype(str),
            "measured_by": frame["measured_by"].astype(str),
            "device": frame["device"].astype(str) if "device" in frame else "",
            "device_name": frame["device_name"].astype(str) if "device_name" in frame else "",
            "unit": frame["unit"].astype(str) if "unit" in frame else "",
            "config_hash": frame["config_hash"].astype(str),
            "seed": frame["seed"].map(_format_number) if "seed" in frame else "",
            "value": pd.to_numeric(frame["value"], errors="coerce").astype(float),
        }
    )
    out["kind"] = [kind_of(m, b) for m, b in zip(out["metric"], out["measured_by"], strict=False)]
    # Deterministic values are compared seed by seed; noisy ones pool every seed as samples.
    out["seed_key"] = np.where(out["kind"] == DETERMINISTIC, out["seed"], "")
    return out


KEY = ("benchmark", "method", "point", "metric", "measured_by", "device", "seed_key")


@dataclass
class _Group:
    values: np.ndarray
    unit: str
    kind: str
    device_names: frozenset[str]
    hashes: tuple[str, ...]
    label: str = ""


def _groups(frame: pd.DataFrame) -> dict[tuple, dict[str, _Group]]:
    """key -> config_hash -> values, in order of first appearance."""
    out: dict[tuple, dict[str, _Group]] = {}
    for (key_hash), rows in frame.groupby([*KEY, "config_hash"], sort=False, dropna=False):
        key, digest = tuple(key_hash[:-1]), str(key_hash[-1])
        out.setdefault(key, {})[digest] = _Group(
            values=rows["value"].to_numpy(dtype=float),
            unit=str(rows["unit"].iloc[0]),
            kind=str(rows["kind"].iloc[0]),
            device_names=frozenset(rows["device_name"]),
            hashes=(digest,),
            label=str(rows["label"].iloc[0]),
        )
    return out


def _pool(groups: Iterable[_Group]) -> _Group:
    groups = list(groups)
    return _Group(
        values=np.concatenate([g.values for g in groups]),
        unit=groups[0].unit,
        kind=groups[0].kind,
        device_names=frozenset().union(*(g.device_names for g in groups)),
        hashes=tuple(h for g in groups for h in g.hashes),
        label=groups[0].label,
    )


def _center(group: _Group | None) -> float:
    if group is None:
        return float("nan")
    finite = group.values[np.isfinite(group.values)]
    if not len(finite):
        return float("nan")
    return float(np.median(finite)) if group.kind == DETERMINISTIC else float(finite.mean())


def _ratio(base: float, new: float) -> float:
    if not (math.isfinite(base) and math.isfinite(new)):
        return float("nan")
    if base == 0:
        return 1.0 if new == 0 else math.copysign(math.inf, new)
    return new / base


def _by_direction(direction: str, new_is_higher: bool) -> str:
    if direction == EITHER:
        return CHANGED
    worse = new_is_higher if direction == LOWER else not new_is_higher
    return WORSE if worse else BETTER


def _interval(values: np.ndarray) -> tuple[float, float]:
    mean = float(values.mean())
    half = t_half_width(values)
    return mean - half, mean + half


def _judge(metric: str, base: _Group, new: _Group, factor: float, rtol: float, atol: float,
           alpha: float) -> tuple[str, str]:
    """(verdict, note) for one matched pair of groups."""
    direction = direction_of(metric)
    b = base.values[np.isfinite(base.values)]
    n = new.values[np.isfinite(new.values)]
    if not len(b) and not len(n):
        return SAME, "no finite value on either side"
    if not len(n):
        return (CHANGED if direction == EITHER else WORSE), "new has no finite value (base had one)"
    if not len(b):
        return (CHANGED if direction == EITHER else BETTER), "base had no finite value (new has one)"
    if base.kind == DETERMINISTIC:
        vb, vn = float(np.median(b)), float(np.median(n))
        if vb == vn or abs(vn - vb) <= atol + rtol * max(abs(vb), abs(vn)):
            return SAME, f"deterministic, within rtol {rtol:g} / atol {atol:g}"
        return _by_direction(direction,
                             vn > vb), f"deterministic, differs beyond rtol {rtol:g} / atol {atol:g}"
    if len(b) < 2 or len(n) < 2:
        return INSUFFICIENT, f"{len(b)} vs {len(n)} samples: at least 2 per side are needed to decide"
    if base.device_names != new.device_names:
        return NOT_COMPARABLE, (
            f"timed on different hardware ({', '.join(sorted(base.device_names))} vs "
            f"{', '.join(sorted(new.device_names))})"
        )
    mb, mn = float(b.mean()), float(n.mean())
    ratio = _ratio(mb, mn)
    if np.all(b == b[0]) and np.all(n == n[0]) and b[0] == n[0]:
        return SAME, "identical samples"
    p = float(stats.mannwhitneyu(b, n, alternative="two-sided").pvalue)
    lo_b, hi_b = _interval(b)
    lo_n, hi_n = _interval(n)
    separate = hi_b < lo_n or hi_n < lo_b
    significant = p < alpha or separate
    beyond = not math.isfinite(ratio) or ratio > factor or (ratio > 0 and ratio < 1 / factor)
    note = f"p={p:.3g}, 95% intervals {'separate' if separate else 'overlap'}"
    if not significant:
        return SAME, f"{note}: not significant"
    if not beyond:
        return SAME, f"{note}: significant but within factor {factor:g}"
    return _by_direction(direction, mn > mb), f"{note}, beyond factor {factor:g}"


def run(
    base: pd.DataFrame,
    new: pd.DataFrame,
    factor: float = 1.10,
    rtol: float = 1e-6,
    atol: float = 1e-12,
    alpha: float = 0.05,
    kinds: Sequence[str] = (DETERMINISTIC, NOISY),
) -> pd.DataFrame:
    """Compare results ``new`` against ``base`` (frames as :func:`read_results` returns them).

    Args:
        base: the reference rows.
        new: the rows to judge.
        factor: a noisy change counts only beyond this ratio (default 1.10: 10%).
        rtol: relative tolerance of deterministic metrics (default 1e-6).
        atol: absolute tolerance of deterministic metrics, in the metric's unit (default
            1e-12: values that differ only by floating-point roundoff, such as the ~1e-16
            relative error of the exact gradient on another CPU, are the same).
        alpha: significance level of the Mann–Whitney U test (default 0.05).
        kinds: which metric kinds to compare (default both).

    Returns:
        One row per matched point and metric with :data:`REPORT_COLUMNS`: ``point`` shows the
        point columns that vary within the benchmark (plus the seed of deterministic rows),
        ``base`` and ``new`` are the median (deterministic) or mean (noisy) values, ``ratio``
        is new/base.
    """
    _check_settings(factor, rtol, atol, alpha)
    _require(base, "BASE")
    _require(new, "NEW")
    columns = list(dict.fromkeys([*point_columns(base), *point_columns(new)]))
    shown = _varying([base, new], columns)
    prepared_base, prepared_new = _prepare(base, columns, shown), _prepare(new, columns, shown)
    groups_base = _groups(prepared_base[prepared_base["kind"].isin(kinds)])
    groups_new = _groups(prepared_new[prepared_new["kind"].isin(kinds)])
    rows: list[dict[str, object]] = []
    for key in list(dict.fromkeys([*groups_base, *groups_new])):
        for b, n, verdict, note in _matched(key, groups_base.get(key, {}), groups_new.get(key, {}),
                                            factor, rtol, atol, alpha):
            rows.append(_report_row(key, b, n, verdict, note))
    return pd.DataFrame(rows, columns=list(REPORT_COLUMNS))


def _check_settings(factor: float, rtol: float, atol: float, alpha: float) -> None:
    """One-line errors for thresholds that make no sense (they name the option)."""
    if not factor > 1:
        raise FobbenchError(f"--factor must be > 1 (got {factor})")
    if not rtol >= 0:
        raise FobbenchError(f"--rtol must be >= 0 (got {rtol})")
    if not atol >= 0:
        raise FobbenchError(f"--atol must be >= 0 (got {atol})")
    if not 0 < alpha < 1:
        raise FobbenchError(f"alpha must be in (0, 1) (got {alpha})")


def _matched(key: tuple, by_hash_b: Mapping[str, _Group], by_hash_n: Mapping[str, _Group], factor: float,
             rtol: float, atol: float, alpha: float
             ) -> list[tuple[_Group | None, _Group | None, str, str]]:
    """(base group, new group, verdict, note) of one key: each config hash present on both sides
    is judged; what is left on one side only is missing, new, or (both) not comparable."""
    judged: list[tuple[_Group | None, _Group | None, str, str]] = []
    for digest in [h for h in by_hash_b if h in by_hash_n]:
        b, n = by_hash_b[digest], by_hash_n[digest]
        judged.append((b, n, *_judge(key[3], b, n, factor, rtol, atol, alpha)))
    only_b = [g for h, g in by_hash_b.items() if h not in by_hash_n]
    only_n = [g for h, g in by_hash_n.items() if h not in by_hash_b]
    if only_b and only_n:
        b, n = _pool(only_b), _pool(only_n)
        judged.append((b, n, NOT_COMPARABLE,
                       f"config differs (config_hash {','.join(b.hashes)} vs {','.join(n.hashes)})"))
    elif only_b:
        judged.append((_pool(only_b), None, MISSING, "in BASE only"))
    elif only_n:
        judged.append((None, _pool(only_n), NEW, "in NEW only"))
    return judged


def _report_row(key: tuple, b: _Group | None, n: _Group | None, verdict: str, note: str) -> dict[str, object]:
    """One row of the report (:data:`REPORT_COLUMNS`) for a key and its base/new groups."""
    named = dict(zip(KEY, key, strict=False))
    either = b or n
    point = either.label if either else named["point"]
    if named["seed_key"]:
        point = f"{point} seed={named['seed_key']}".strip()
    if named["device"] not in ("", "cpu", "nan"):
        point = f"{point} device={named['device']}".strip()
    vb, vn = _center(b), _center(n)
    return {
        "benchmark": named["benchmark"], "method": named["method"], "point": point,
        "metric": named["metric"], "unit": either.unit if either else "",
        "measured_by": named["measured_by"], "kind": either.kind if either else "",
        "base": vb, "new": vn, "ratio": _ratio(vb, vn),
        "n_base": len(b.values) if b else 0, "n_new": len(n.values) if n else 0,
        "verdict": verdict, "note": note,
    }


def counts(report: pd.DataFrame) -> dict[str, int]:
    """Number of report rows per verdict, in :data:`VERDICTS` order (zeros left out)."""
    tally = report["verdict"].value_counts()
    return {v: int(tally[v]) for v in VERDICTS if v in tally}


def summary(report: pd.DataFrame) -> str:
    """One line: counts per verdict, e.g. ``1 worse, 40 same, 2 new (43 compared points)``."""
    tally = counts(report)
    if not len(report):
        return "nothing to compare (no rows of the selected kinds)"
    parts = ", ".join(f"{n} {v}" for v, n in tally.items())
    return f"{parts} ({len(report)} rows)"


def failed(report: pd.DataFrame, allow_missing: bool = False) -> bool:
    """True when any row is worse, a direction-less metric changed, or (unless
    ``allow_missing``) a baseline point is missing from NEW."""
    failing = FAILING if allow_missing else FAILING | {MISSING}
    return bool(report["verdict"].isin(failing).any())


def check_comparable(report: pd.DataFrame, base: pd.DataFrame, new: pd.DataFrame) -> None:
    """Raise a one-line FobbenchError when not one point could be compared.

    A gate that compared nothing has checked nothing: comparing gradcheck results with
    memory results, or two runs whose every setting differs, is a mistake, not a pass.
    """
    if report["verdict"].isin(COMPARED).any():
        return

    def held(frame: pd.DataFrame) -> str:
        names = sorted(frame["benchmark"].astype(str).unique()) if "benchmark" in frame else []
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "") or "nothing"

    why = "every shared point has another config hash" if (report["verdict"] == NOT_COMPARABLE).any() \
        else "no point in common"
    raise FobbenchError(f"nothing comparable ({why}): BASE holds {held(base)}; NEW holds {held(new)}")


def write_csv(report: pd.DataFrame, path: Path | str) -> None:
    """Write a report as CSV with ``schema`` = :data:`REPORT_SCHEMA` first, so that
    ``plot``/``compare`` recognise it as a report (and skip it) when it lies among results."""
    frame = report.copy()
    frame.insert(0, "schema", REPORT_SCHEMA)
    frame.to_csv(path, index=False)


def format_value(value: float, unit: str = "") -> str:
    """A report cell: 4 significant digits and the unit, ``-`` for no value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.4g}"
    return f"{text} {unit}" if unit and unit not in ("1", "nan") else text


def format_ratio(value: float) -> str:
    """A ratio cell such as ``1.23x``; ``-`` when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}x"


def to_markdown(report: pd.DataFrame, title: str = "fobbench compare") -> str:
    """The report as a GitHub-flavoured Markdown section (for CI job summaries)."""

    def cell(text: object) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [f"### {title}", "", f"**{summary(report)}**", ""]
    header = ("benchmark", "method", "point", "metric", "base", "new", "ratio", "verdict", "note")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in report.itertuples(index=False):
        verdict = f"**{row.verdict}**" if row.verdict in FAILING else row.verdict
        cells = (
            row.benchmark, row.method, row.point, row.metric, format_value(row.base, row.unit),
            format_value(row.new, row.unit), format_ratio(row.ratio), verdict, row.note,
        )
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
