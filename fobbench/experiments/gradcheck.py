"""``gradcheck``: meta-gradient quality of every estimator on quadratic tasks (paper Fig. 1, 4, 5).

Five sub-experiments, each written to its own CSV (``<out>/<name>.csv``, benchmark
``gradcheck.<name>``) in one folder per invocation, because a results file holds one
benchmark with one set of point columns:

``error_vs_k``   normalized error ‖g − ∇F‖/‖∇F‖ of every estimator for each K (Fig. 1 top);
                 iMAML once per ``cg_steps``.
``outer_loss``   meta-training θ from θ₀ with each estimator at K = ``train_k``: F(θ_t) and
                 F(θ_t) − F* per iteration, F* in closed form (Fig. 1 bottom).
``error_vs_nu``  error of FO-B-MAML forward/symmetric against ν for several K (Fig. 4).
``lambda``       adaptation distance ‖φ* − θ₀‖ and cond(A + λI) against λ (Fig. 5).
``rates``        fitted log-log slopes with 95% CIs: error vs ν with a near-exact inner solve
                 (theory 1 and 2, Prop. 2), and error vs inner precision δ at the best ν
                 (theory δ^{1/2} and δ^{2/3}, Corollary 1), both for δ from K GD steps and for
                 the Corollary's own model (exact solution plus an error of norm δ).

The inner step size is one value per sub-experiment, shared by every method and point:
α = 1/(L_max + |ν_max|·L_test + λ) from the tasks' spectra (``safe_lr``), unless ``lr`` is
given; it is recorded as the ``inner_lr`` info column with the GD contraction factor.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import Tensor

from fobbench.errors import FobbenchError
from fobbench.estimators import REGISTRY, EstimatorConfig, meta_gradient, parse_methods
from fobbench.inner import InnerConfig
from fobbench.meta_optim import OUTER, apply, make_outer
from fobbench.params import Params
from fobbench.problems.quadratic import PARAM, QuadraticTasks, make_quadratic, quadratic_loss
from fobbench.results import Measurement, ResultWriter, default_path, read_results

EXPERIMENTS = ("error_vs_k", "outer_loss", "error_vs_nu", "lambda", "rates")
DEFAULT_EXPERIMENTS = ("error_vs_k",)
NU_METHODS = ("fobmaml-forward", "fobmaml-sym")
"""The estimators whose value depends on ν (the ν sweep and the rate fits use only these)."""
KNOBS: dict[str, str] = {"imaml": "cg_steps"}
"""Methods run once per value of a swept knob (iMAML once per CG step count)."""
DISPLAY_ORDER = ("maml", "fomaml", "reptile", "imaml", "esmaml", "fobmaml-forward", "fobmaml-sym", "exact")
"""Row order of tables (the paper's); methods not listed follow alphabetically."""
OUTER_LR_FACTOR = 0.25
"""Default outer step = 0.25/L_F. FO-MAML and Reptile overshoot ∇F several-fold (they lack the
(I + ∇²f̂/λ)⁻¹ shrinkage), so at 1/L_F their meta-training diverges on the default tasks; at
0.25/L_F every estimator is stable and the exact gradient still reaches F* to ~1e-8 in 50 steps."""
THEORY_NU = {"fobmaml-forward": 1.0, "fobmaml-sym": 2.0}
"""Prop. 2: bias O(λν) forward, O(λν²) symmetric, with an exact inner solve."""
THEORY_DELTA = {"fobmaml-forward": 0.5, "fobmaml-sym": 2.0 / 3.0}
"""Corollary 1: error O(λδ^{1/2}) forward, O(λδ^{2/3}) symmetric at the best ν."""


def parse_experiments(text: str) -> tuple[str, ...]:
    """``all`` or a comma-separated subset of :data:`EXPERIMENTS` (one-line error otherwise)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if names == ["all"]:
        return EXPERIMENTS
    if not names:
        raise FobbenchError("--experiments: no experiment given")
    for name in names:
        if name not in EXPERIMENTS:
            raise FobbenchError(
                f"--experiments: unknown experiment '{name}' (choose from all, {', '.join(EXPERIMENTS)})"
            )
    return tuple(dict.fromkeys(names))


def _log_grid(lo: float, hi: float, count: int) -> tuple[float, ...]:
    return tuple(float(v) for v in np.logspace(math.log10(lo), math.log10(hi), count))


@dataclass(frozen=True)
class GradcheckConfig:
    """Everything that defines a gradcheck run (defaults mirror the paper; see module doc).

    Attributes:
        experiments: sub-experiments to run (default ``error_vs_k`` only: the quick start).
        methods: estimators (default: all registered).
        ks: inner steps K of ``error_vs_k`` (default 1, 2, 5, 10, 20, 50, 100).
        nu: ν of FO-B-MAML in ``error_vs_k`` and ``outer_loss`` (default 0.01: App. A's rule
            for K ≥ 50).
        lam: λ (default 2.0, the paper's value).
        nu_grid: ν values of ``error_vs_nu`` and of the δ-rate fit (default 1e-5..1, 11 points).
        nu_ks: K values of ``error_vs_nu`` and of the δ-rate fit (default 5, 10, 20, 50, 100).
        lam_grid: λ values of ``lambda`` (default 0.1..10, 9 log-spaced points).
        rate_nus: ν range of the slope fit with a near-exact inner solve (default 1e-3..1e-1,
            9 points: above round-off, below higher-order terms).
        rate_deltas: δ values of the perturbed-solution rate fit (default 1e-12..1e-4, 9 points).
        train_k: K of ``outer_loss`` (default 20, as in Fig. 1).
        iters: outer iterations of ``outer_loss`` (default 50).
        outer: outer optimizer (sgd, clipped, sngdm, adam; default sgd).
        outer_lr: outer step size (default None: 0.25/L_F, L_F the largest eigenvalue of ∇²F;
            see :data:`OUTER_LR_FACTOR`).
        lr: inner step size α (default None: the safe rule of :meth:`QuadraticTasks.safe_lr`).
        cg_steps: iMAML CG step counts (default 2 and 5, the paper's).
        es_samples, es_sigma: ES-MAML directions and smoothing radius (defaults 16, 0.01).
        dim, tasks, cond: quadratic problem size, task count and cond(A_i) (defaults 20, 10, 25).
        distinct_test: test quadratic ≠ train quadratic (default False, as in the paper).
        seeds: problem/noise seeds; several seeds give repeats (default 0).
        batching: ``vmap`` (default) or ``loop`` over tasks.
    """

    experiments: tuple[str, ...] = DEFAULT_EXPERIMENTS
    methods: tuple[str, ...] = field(default_factory=lambda: tuple(REGISTRY))
    ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)
    nu: float = 0.01
    lam: float = 2.0
    nu_grid: tuple[float, ...] = field(default_factory=lambda: _log_grid(1e-5, 1.0, 11))
    nu_ks: tuple[int, ...] = (5, 10, 20, 50, 100)
    lam_grid: tuple[float, ...] = field(default_factory=lambda: _log_grid(0.1, 10.0, 9))
    rate_nus: tuple[float, ...] = field(default_factory=lambda: _log_grid(1e-3, 1e-1, 9))
    rate_deltas: tuple[float, ...] = field(default_factory=lambda: _log_grid(1e-12, 1e-4, 9))
    train_k: int = 20
    iters: int = 50
    outer: str = "sgd"
    outer_lr: float | None = None
    lr: float | None = None
    cg_steps: tuple[int, ...] = (2, 5)
    es_samples: int = 16
    es_sigma: float = 0.01
    dim: int = 20
    tasks: int = 10
    cond: float = 25.0
    distinct_test: bool = False
    seeds: tuple[int, ...] = (0,)
    batching: str = "vmap"

    def __post_init__(self) -> None:
        for name in self.experiments:
            if name not in EXPERIMENTS:
                raise FobbenchError(f"--experiments: unknown experiment '{name}'")
        parse_methods(",".join(self.methods))
        for option, values in (("--k", self.ks), ("--nu-k", self.nu_ks), ("--cg-steps", self.cg_steps)):
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise FobbenchError(f"{option}: every value must be an integer >= 1 (got {list(values)})")
        for option, floats in (("--nu-grid", self.nu_grid), ("--lam-grid", self.lam_grid),
                               ("--rate-nu", self.rate_nus), ("--rate-delta", self.rate_deltas)):
            if not floats or any(not (math.isfinite(v) and v > 0) for v in floats):
                raise FobbenchError(f"{option}: every value must be > 0 (got {list(floats)})")
        if "rates" in self.experiments and (len(self.rate_nus) < 3 or len(self.rate_deltas) < 3
                                            or len(self.nu_ks) < 3):
            raise FobbenchError("rates: --rate-nu, --rate-delta and --nu-k need at least 3 values each")
        if not (math.isfinite(self.lam) and self.lam > 0):  # B-MAML's closed forms need λ > 0
            raise FobbenchError(f"--lam: lambda must be > 0 (got {self.lam})")
        if self.train_k < 1:
            raise FobbenchError(f"--train-k must be >= 1 (got {self.train_k})")
        if self.iters < 1:
            raise FobbenchError(f"--iters must be >= 1 (got {self.iters})")
        if self.outer not in OUTER:
            raise FobbenchError(f"--outer: unknown optimizer '{self.outer}' (choose from {', '.join(OUTER)})")
        if self.outer_lr is not None and not (math.isfinite(self.outer_lr) and self.outer_lr > 0):
            raise FobbenchError(f"--outer-lr must be > 0 (got {self.outer_lr})")
        if any(s < 0 for s in self.seeds) or not self.seeds:
            raise FobbenchError(f"--seed: seeds must be integers >= 0 (got {list(self.seeds)})")
        if self.batching not in ("vmap", "loop"):
            raise FobbenchError(f"--batching: unknown '{self.batching}' (choose from vmap, loop)")
        # The estimator settings validate ν ≠ 0, λ > 0, lr > 0, es-samples, es-sigma.
        self.estimator_config(steps=1, lr=self.lr or 1.0, lam=self.lam, nu=self.nu)
        for lam in self.lam_grid:
            InnerConfig(steps=1, lr=1.0, lam=lam)
        needs_nu = "error_vs_nu" in self.experiments or "rates" in self.experiments
        if needs_nu and not set(NU_METHODS) & set(self.methods):
            raise FobbenchError("error_vs_nu and rates need fobmaml-forward or fobmaml-sym in --methods")

    def estimator_config(self, steps: int, lr: float, lam: float, nu: float | None = None,
                         cg_steps: int | None = None, optimizer: str = "gd",
                         momentum: float = 0.9) -> EstimatorConfig:
        """The estimator settings of one point (one-line error for bad values)."""
        inner = InnerConfig(steps=steps, lr=lr, lam=lam, optimizer=optimizer, momentum=momentum)
        return EstimatorConfig(inner=inner, nu=self.nu if nu is None else nu,
                               cg_steps=cg_steps or self.cg_steps[-1], es_samples=self.es_samples,
                               es_sigma=self.es_sigma)

    def problem(self, seed: int) -> QuadraticTasks:
        """The quadratic tasks of one seed."""
        return make_quadratic(self.dim, self.tasks, self.cond, distinct_test=self.distinct_test, seed=seed)


@dataclass(frozen=True)
class Row:
    """One point's measurements, ready for :meth:`ResultWriter.write_point`."""

    method: str
    point: dict[str, object]
    measurements: list[Measurement]
    info: dict[str, object] = field(default_factory=dict)


class Context:
    """One seed's problem plus a memo of estimator errors shared by sub-experiments."""

    def __init__(self, config: GradcheckConfig, seed: int) -> None:
        self.config = config
        self.seed = seed
        self.problem = config.problem(seed)
        self._memo: dict[tuple, tuple[float, float]] = {}

    def settings(self) -> dict[str, object]:
        """Settings hashed into every point (problem, ES, batching)."""
        c = self.config
        return {**self.problem.settings, "es_samples": c.es_samples, "es_sigma": c.es_sigma,
                "batching": c.batching, "lr_override": c.lr}

    def estimate(self, method: str, config: EstimatorConfig, theta: Tensor | None = None) -> Params:
        """The estimator's meta-gradient at θ (θ₀ by default), tasks batched as configured."""
        generator = torch.Generator().manual_seed(self.seed)
        return meta_gradient(method, self.problem.params(theta), quadratic_loss, self.problem.support,
                             self.problem.query, config, batching=self.config.batching,
                             generator=generator).grad

    def error(self, method: str, config: EstimatorConfig) -> tuple[float, float]:
        """(‖g − ∇F‖/‖∇F‖, seconds) at θ₀, memoised on the estimator settings."""
        if REGISTRY[method].order == "exact":
            # The exact estimator solves the inner problem to machine precision: K is unused.
            config = replace(config, inner=replace(config.inner, steps=1))
        key = (method, config)
        if key not in self._memo:
            truth = self.problem.meta_gradient(self.problem.theta0, config.inner.lam)
            start = time.perf_counter()
            grad = self.estimate(method, config)[PARAM]
            seconds = time.perf_counter() - start
            self._memo[key] = (float((grad - truth).norm() / truth.norm()), seconds)
        return self._memo[key]


Done = Callable[[str, dict[str, object]], bool]
"""``done(method, point)``: True when a resumed file already holds this point."""


def _variants(config: GradcheckConfig, method: str) -> list[int | None]:
    """The knob values a method is run at (CG steps for iMAML; one run otherwise)."""
    return list(config.cg_steps) if method in KNOBS else [None]


def _rel(value: float) -> Measurement:
    return Measurement("rel_error", value, "1", "closed_form")


def _seconds(value: float) -> Measurement:
    return Measurement("seconds", value, "s", "wall_clock")


# --- the sub-experiments ------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """A sub-experiment: its CSV layout, its point count and its row generator."""

    name: str
    point_columns: tuple[str, ...]
    info_columns: tuple[str, ...]
    count: Callable[[GradcheckConfig], int]
    rows: Callable[[Context, Done], Iterator[Row]]
    extra_settings: Callable[[GradcheckConfig], dict[str, object]] = lambda config: {}
    """Settings beyond the point columns that change this experiment's values (hashed)."""

    @property
    def benchmark(self) -> str:
        """``gradcheck.<name>``."""
        return f"gradcheck.{self.name}"


def _error_vs_k_count(config: GradcheckConfig) -> int:
    return len(config.ks) * sum(len(_variants(config, m)) for m in config.methods)


def _error_vs_k(ctx: Context, done: Done) -> Iterator[Row]:
    c, problem = ctx.config, ctx.problem
    lr = c.lr or problem.safe_lr(c.lam, c.nu)
    rho = problem.contraction(c.lam, lr, (0.0, c.nu, -c.nu))
    for k in c.ks:
        for method in c.methods:
            for cg in _variants(c, method):
                point = {"k": k, "cg_steps": cg, "nu": c.nu, "lam": c.lam}
                if done(method, point):
                    yield Row(method, point, [])
                    continue
                error, seconds = ctx.error(method, c.estimator_config(k, lr, c.lam, cg_steps=cg))
                yield Row(method, point, [_rel(error), _seconds(seconds)],
                          {"inner_lr": lr, "contraction": rho})


def _outer_loss_count(config: GradcheckConfig) -> int:
    return (config.iters + 1) * sum(len(_variants(config, m)) for m in config.methods)


def _outer_loss(ctx: Context, done: Done) -> Iterator[Row]:
    c, problem = ctx.config, ctx.problem
    lr = c.lr or problem.safe_lr(c.lam, c.nu)
    _, f_star = problem.optimum(c.lam)
    outer_lr = c.outer_lr or OUTER_LR_FACTOR / problem.outer_smoothness(c.lam)
    info = {"inner_lr": lr, "outer": c.outer, "outer_lr": outer_lr, "f_star": f_star}
    for method in c.methods:
        for cg in _variants(c, method):
            points = [{"k": c.train_k, "cg_steps": cg, "iteration": t, "nu": c.nu, "lam": c.lam}
                      for t in range(c.iters + 1)]
            if all(done(method, p) for p in points):
                for p in points:
                    yield Row(method, p, [])
                continue
            config = c.estimator_config(c.train_k, lr, c.lam, cg_steps=cg)
            params = {PARAM: problem.theta0.clone().requires_grad_(True)}
            optimizer = make_outer(c.outer, params.values(), outer_lr)
            generator = torch.Generator().manual_seed(ctx.seed)
            for t, point in enumerate(points):
                theta = params[PARAM].detach()
                value = problem.outer_loss(theta, c.lam)
                measurements = [Measurement("outer_loss", value, "1", "closed_form"),
                                Measurement("suboptimality", value - f_star, "1", "closed_form")]
                if t < c.iters:
                    grad = meta_gradient(method, params, quadratic_loss, problem.support, problem.query,
                                         config, batching=c.batching, generator=generator).grad
                    truth = problem.meta_gradient(theta, c.lam)
                    measurements.append(_rel(float((grad[PARAM] - truth).norm() / truth.norm())))
                    apply(optimizer, params, grad)
                yield Row(method, point, [] if done(method, point) else measurements, info)


def _nu_methods(config: GradcheckConfig) -> list[str]:
    return [m for m in config.methods if m in NU_METHODS]


def _error_vs_nu_count(config: GradcheckConfig) -> int:
    return len(config.nu_ks) * len(config.nu_grid) * len(_nu_methods(config))


def _nu_lr(ctx: Context) -> float:
    """One step size for the whole ν grid: safe at its largest ν."""
    c = ctx.config
    return c.lr or ctx.problem.safe_lr(c.lam, max(c.nu_grid))


def _error_vs_nu(ctx: Context, done: Done) -> Iterator[Row]:
    c, problem = ctx.config, ctx.problem
    lr = _nu_lr(ctx)
    for k in c.nu_ks:
        delta = problem.inner_precision(c.lam, lr, k)
        for nu in c.nu_grid:
            rho = problem.contraction(c.lam, lr, (0.0, nu, -nu))
            for method in _nu_methods(c):
                point = {"k": k, "nu": nu, "lam": c.lam}
                if done(method, point):
                    yield Row(method, point, [])
                    continue
                error, seconds = ctx.error(method, c.estimator_config(k, lr, c.lam, nu=nu))
                yield Row(method, point,
                          [_rel(error), Measurement("delta", delta, "1", "closed_form"), _seconds(seconds)],
                          {"inner_lr": lr, "contraction": rho})


def _lambda_count(config: GradcheckConfig) -> int:
    return len(config.lam_grid)


def _lambda(ctx: Context, done: Done) -> Iterator[Row]:
    problem = ctx.problem
    for lam in ctx.config.lam_grid:
        point = {"lam": lam}
        if done("exact", point):
            yield Row("exact", point, [])
            continue
        yield Row("exact", point, [
            Measurement("adaptation_distance", float(problem.adaptation_distances(lam).mean()), "1",
                        "closed_form"),
            Measurement("condition_number", float(problem.condition_numbers(lam).mean()), "1",
                        "closed_form"),
        ])


# --- rates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """A log-log least-squares fit ``log y = slope·log x + b`` with a 95% t-interval."""

    slope: float
    lo: float
    hi: float
    r_squared: float
    points: int


def fit_slope(x: Sequence[float], y: Sequence[float]) -> Fit:
    """Fit the log-log slope of y against x (scipy ``linregress``; CI = slope ± t₀.₉₇₅·stderr)."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    keep = np.isfinite(lx) & np.isfinite(ly)
    lx, ly = lx[keep], ly[keep]
    if len(lx) < 3:
        return Fit(float("nan"), float("nan"), float("nan"), float("nan"), len(lx))
    result = stats.linregress(lx, ly)
    half = float(stats.t.ppf(0.975, len(lx) - 2) * result.stderr)
    return Fit(float(result.slope), float(result.slope) - half, float(result.slope) + half,
               float(result.rvalue**2), len(lx))


def _fit_rows(method: str, point: dict[str, object], fit: Fit, theory: float, span: str) -> Row:
    return Row(method, {**point, "x": None}, [
        Measurement("slope", fit.slope, "1", "linregress"),
        Measurement("slope_lo", fit.lo, "1", "linregress"),
        Measurement("slope_hi", fit.hi, "1", "linregress"),
        Measurement("r_squared", fit.r_squared, "1", "linregress"),
        Measurement("theory_slope", theory, "1", "theory"),
    ], {"fit_points": fit.points, "fit_range": span})


def heavy_ball(problem: QuadraticTasks, lam: float, nus: Sequence[float], tolerance: float = 1e-14
               ) -> tuple[float, float, int]:
    """Polyak's heavy-ball settings (α, β, K) that solve every ±ν inner problem to ``tolerance``.

    With the extreme inner-Hessian eigenvalues m, L over tasks and signs:
    α = 4/(√L + √m)², β = ((√L − √m)/(√L + √m))², rate ρ = (√L − √m)/(√L + √m); K is
    1.5·log(tol)/log ρ (the margin covers the polynomial prefactor of heavy ball).
    """
    eig = torch.cat([problem.inner_eigenvalues(lam, s * nu).flatten() for nu in nus for s in (1, -1)])
    low, high = float(eig.min()), float(eig.max())
    if low <= 0:
        raise FobbenchError(f"rates: the inner problem is not strongly convex at nu={max(nus)}, lambda={lam}")
    root_l, root_m = math.sqrt(high), math.sqrt(low)
    rho = (root_l - root_m) / (root_l + root_m)
    steps = max(10, math.ceil(1.5 * math.log(tolerance) / math.log(rho))) if rho > 0 else 10
    return 4.0 / (root_l + root_m) ** 2, rho**2, steps


def _perturbed_errors(problem: QuadraticTasks, lam: float, delta: float, nus: Sequence[float],
                      generator: torch.Generator) -> dict[str, list[float]]:
    """Error of eqs. (12)/(13) from exact solutions plus random errors of norm δ (Corollary 1).

    Each of the solves φ̃_v = φ*_v + δ·u_v (v ∈ {ν, 0, −ν}, per task) gets its own uniformly
    random unit direction u_v, drawn once per δ so the error is a smooth function of ν.
    """
    theta = problem.theta0
    truth = problem.meta_gradient(theta, lam)

    def unit() -> Tensor:
        u = torch.randn((problem.tasks, problem.dim), generator=generator, dtype=theta.dtype)
        return u / u.norm(dim=-1, keepdim=True)

    u_plus, u_zero, u_minus = unit(), unit(), unit()
    base = problem.solution(theta, lam, 0.0) + delta * u_zero
    out: dict[str, list[float]] = {m: [] for m in NU_METHODS}
    for nu in nus:
        plus = problem.solution(theta, lam, nu) + delta * u_plus
        minus = problem.solution(theta, lam, -nu) + delta * u_minus
        estimates = {"fobmaml-forward": -lam * (plus - base) / nu,
                     "fobmaml-sym": -lam * (plus - minus) / (2 * nu)}
        for method, g in estimates.items():
            out[method].append(float((g.mean(0) - truth).norm() / truth.norm()))
    return out


def _span(values: Sequence[float]) -> str:
    return f"{min(values):.2g}..{max(values):.2g}"


def _rates_count(config: GradcheckConfig) -> int:
    methods = len(_nu_methods(config))
    per_method = (len(config.rate_nus) + 1) + (len(config.nu_ks) + 1) + (len(config.rate_deltas) + 1)
    return methods * per_method


def _rates(ctx: Context, done: Done) -> Iterator[Row]:
    c, problem = ctx.config, ctx.problem
    methods = _nu_methods(c)
    # 1. error vs ν with a near-exact inner solve (heavy ball to 1e-14): Prop. 2's order.
    lr, beta, steps = heavy_ball(problem, c.lam, c.rate_nus)
    for method in methods:
        xs, ys = [], []
        for nu in c.rate_nus:
            point = {"fit": "nu", "solver": "heavy-ball", "k": steps, "lam": c.lam, "x": nu}
            config = c.estimator_config(steps, lr, c.lam, nu=nu, optimizer="momentum", momentum=beta)
            error, _ = ctx.error(method, config)
            xs.append(nu)
            ys.append(error)
            yield Row(method, point, [] if done(method, point) else [_rel(error)],
                      {"inner_lr": lr, "momentum": beta})
        point = {"fit": "nu", "solver": "heavy-ball", "k": steps, "lam": c.lam}
        yield _fit_rows(method, point, fit_slope(xs, ys), THEORY_NU[method], _span(xs))
    # 2. error vs δ at the best ν, δ from K plain GD steps (the estimator code itself).
    lr_gd = _nu_lr(ctx)
    for method in methods:
        xs, ys = [], []
        for k in c.nu_ks:
            errors = [ctx.error(method, c.estimator_config(k, lr_gd, c.lam, nu=nu))[0] for nu in c.nu_grid]
            best = int(np.nanargmin(errors))
            delta = problem.inner_precision(c.lam, lr_gd, k)
            point = {"fit": "delta", "solver": "gd", "k": k, "lam": c.lam, "x": delta}
            xs.append(delta)
            ys.append(errors[best])
            yield Row(method, point, [] if done(method, point) else [
                _rel(errors[best]), Measurement("best_nu", c.nu_grid[best], "1", "grid_search")],
                {"inner_lr": lr_gd})
        point = {"fit": "delta", "solver": "gd", "k": None, "lam": c.lam}
        yield _fit_rows(method, point, fit_slope(xs, ys), THEORY_DELTA[method], _span(xs))
    # 3. error vs δ at the best ν under Corollary 1's model: exact solutions + errors of norm δ.
    fine_nus = _log_grid(1e-7, 1.0, 71)
    generator = torch.Generator().manual_seed(ctx.seed)
    curves = [_perturbed_errors(problem, c.lam, delta, fine_nus, generator) for delta in c.rate_deltas]
    for method in methods:
        xs, ys = [], []
        for delta, curve in zip(c.rate_deltas, curves):
            errors = curve[method]
            best = int(np.nanargmin(errors))
            point = {"fit": "delta", "solver": "perturbed", "k": None, "lam": c.lam, "x": delta}
            xs.append(delta)
            ys.append(errors[best])
            yield Row(method, point, [] if done(method, point) else [
                _rel(errors[best]), Measurement("best_nu", fine_nus[best], "1", "grid_search")])
        point = {"fit": "delta", "solver": "perturbed", "k": None, "lam": c.lam}
        yield _fit_rows(method, point, fit_slope(xs, ys), THEORY_DELTA[method], _span(xs))


REGISTRY_EXPERIMENTS: dict[str, Experiment] = {
    "error_vs_k": Experiment("error_vs_k", ("k", "cg_steps", "nu", "lam"), ("inner_lr", "contraction"),
                             _error_vs_k_count, _error_vs_k),
    "outer_loss": Experiment("outer_loss", ("k", "cg_steps", "iteration", "nu", "lam"),
                             ("inner_lr", "outer", "outer_lr", "f_star"), _outer_loss_count, _outer_loss,
                             lambda c: {"outer": c.outer, "outer_lr": c.outer_lr}),
    "error_vs_nu": Experiment("error_vs_nu", ("k", "nu", "lam"), ("inner_lr", "contraction"),
                              _error_vs_nu_count, _error_vs_nu, lambda c: {"nu_max": max(c.nu_grid)}),
    "lambda": Experiment("lambda", ("lam",), (), _lambda_count, _lambda),
    "rates": Experiment("rates", ("fit", "solver", "k", "lam", "x"),
                        ("inner_lr", "momentum", "fit_points", "fit_range"), _rates_count, _rates,
                        lambda c: {"nu_grid": c.nu_grid, "nu_ks": c.nu_ks, "rate_nus": c.rate_nus,
                                   "rate_deltas": c.rate_deltas}),
}


# --- running and writing --------------------------------------------------------------------


def default_out() -> Path:
    """``results/gradcheck/<UTC stamp>-<commit>/``: one folder per invocation."""
    path = default_path("gradcheck")
    folder = path.with_suffix("")
    suffix = 1
    while folder.exists():
        folder = path.with_name(f"{path.stem}-{suffix}")
        suffix += 1
    return folder


def total_points(config: GradcheckConfig) -> int:
    """Number of points the run visits (for a progress bar)."""
    return len(config.seeds) * sum(REGISTRY_EXPERIMENTS[n].count(config) for n in config.experiments)


@dataclass(frozen=True)
class RunFiles:
    """What a run wrote: each sub-experiment's CSV and the config hashes of its points."""

    paths: dict[str, Path]
    hashes: frozenset[str]

    def frame(self) -> pd.DataFrame:
        """This run's rows (a resumed file may also hold rows of other settings: left out)."""
        frames = [read_results(path) for path in self.paths.values() if path.exists()]
        if not frames:
            return pd.DataFrame()
        frame = pd.concat(frames, ignore_index=True, sort=False)
        return frame[frame["config_hash"].astype(str).isin(self.hashes)].reset_index(drop=True)


def run(config: GradcheckConfig, out_dir: Path, resume: bool = False,
        advance: Callable[[str], None] | None = None) -> RunFiles:
    """Run the selected sub-experiments, writing ``out_dir/<name>.csv`` through ResultWriter.

    Args:
        config: the run's settings.
        out_dir: folder of this invocation. A new run refuses a folder that already holds
            one of its CSV files; ``resume=True`` continues the files found there (new ones are
            created) and skips finished points.
        resume: continue an interrupted run.
        advance: called with the sub-experiment's name after each point (progress bars).

    Returns:
        The CSV file of each sub-experiment and the config hashes of the points visited.
    """
    out_dir = Path(out_dir)
    if resume and not out_dir.is_dir():
        raise FobbenchError(f"--resume: {out_dir} is not a gradcheck results folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise FobbenchError(f"--out: {out_dir} exists and is not a folder (gradcheck writes one CSV per "
                            "sub-experiment into a folder)")
    writers: dict[str, ResultWriter] = {}
    hashes: set[str] = set()
    for name in config.experiments:
        experiment = REGISTRY_EXPERIMENTS[name]
        path = out_dir / f"{name}.csv"
        writers[name] = ResultWriter(path, experiment.benchmark, experiment.point_columns,
                                     experiment.info_columns, resume=resume and path.exists())
    for seed in config.seeds:
        ctx = Context(config, seed)
        for name in config.experiments:
            experiment, writer = REGISTRY_EXPERIMENTS[name], writers[name]
            settings = {**ctx.settings(), **experiment.extra_settings(config)}

            def done(method: str, point: dict[str, object], _w: ResultWriter = writer,
                     _settings: dict[str, object] = settings, _seed: int = seed) -> bool:
                return _w.is_done(method, point, _settings, _seed)

            for row in experiment.rows(ctx, done):
                hashes.add(writer.point_hash(row.method, row.point, settings))
                if row.measurements and not done(row.method, row.point):
                    writer.write_point(row.method, row.point, settings, seed, row.measurements, row.info)
                if advance is not None:
                    advance(name)
    return RunFiles({name: writer.path for name, writer in writers.items()}, frozenset(hashes))


# --- summaries ------------------------------------------------------------------------------


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
    rows["estimator"] = [method_label(m, c) for m, c in zip(rows["method"], rows["cg_steps"])]
    table = rows.pivot_table(index="estimator", columns="k", values="value", aggfunc="mean")
    def rank(label: str) -> tuple[int, str]:
        name = label.split(" ")[0]
        return (DISPLAY_ORDER.index(name) if name in DISPLAY_ORDER else len(DISPLAY_ORDER), label)

    table = table.loc[sorted(table.index, key=rank)]
    table.columns = [int(k) for k in table.columns]
    return table


def _order(label: str) -> str:
    name = label.split(" ")[0]
    return REGISTRY[name].order if name in REGISTRY else ""


def headline(table: pd.DataFrame) -> str:
    """One sentence computed from an :func:`error_table`: who is best at the largest K, who stalls.

    A method "stalls" when its error at the largest K is more than 0.7× its error at the
    previous K (it has stopped shrinking with K).
    """
    if table.empty:
        return "no error-vs-K rows"
    ks = list(table.columns)
    last = ks[-1]
    candidates = table.drop(index=[i for i in table.index if i == "exact"], errors="ignore")[last].dropna()
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
                   if label != "exact" and ratio[label] > 0.7]
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

