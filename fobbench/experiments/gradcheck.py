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
from torch import Tensor

from fobbench.errors import FobbenchError
from fobbench.estimators import REGISTRY, EstimatorConfig, get, meta_gradient, names, parse_methods, rank_of
from fobbench.experiments.runner import Output, Record, RunFiles, Sink, Tick, execute
from fobbench.inner import InnerConfig
from fobbench.meta_optim import OUTER, apply, make_outer
from fobbench.params import Params
from fobbench.problems.quadratic import PARAM, QuadraticTasks, make_quadratic, quadratic_loss
from fobbench.results import Measurement, default_path
from fobbench.stats import Fit, fit_slope

EXPERIMENTS = ("error_vs_k", "outer_loss", "error_vs_nu", "lambda", "rates")
DEFAULT_EXPERIMENTS = ("error_vs_k",)
OUTER_LR_FACTOR = 0.25
"""Default outer step = 0.25/L_F. FO-MAML and Reptile overshoot ∇F several-fold (they lack the
(I + ∇²f̂/λ)⁻¹ shrinkage), so at 1/L_F their meta-training diverges on the default tasks; at
0.25/L_F every estimator is stable and the exact gradient still reaches F* to ~1e-8 in 50 steps."""
RATE_NUS = (1e-3, 1e-1)
"""Default ν span of the ν-rate fit for methods that register none (:attr:`Estimator.fit_nus`)."""
RATE_POINTS = 9
"""Log-spaced ν values of the ν-rate fit."""


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
        rate_nus: ν values of the slope fit with a near-exact inner solve (default None: each
            method's registered span, :attr:`Estimator.fit_nus`, else 1e-3..1e-1, 9 points:
            above round-off, below higher-order terms).
        rate_deltas: δ values of the perturbed-solution rate fit (default 1e-12..1e-4, 9 points).
        train_k: K of ``outer_loss`` (default 20, as in Fig. 1).
        iters: outer iterations of ``outer_loss`` (default 50).
        outer: outer optimizer (sgd, clipped, sngdm, adam; default sgd).
        meta_lr: outer (meta) step size (default None: 0.25/L_F, L_F the largest eigenvalue of ∇²F;
            see :data:`OUTER_LR_FACTOR`).
        inner_lr: inner step size α (default None: the safe rule of :meth:`QuadraticTasks.safe_lr`).
        cg_steps: iMAML CG step counts (default 2 and 5, the paper's).
        es_samples, es_sigma: ES-MAML directions and smoothing radius (defaults 16, 0.01).
        dim, tasks, cond: quadratic problem size, task count and cond(A_i) (defaults 20, 10, 25).
        distinct_test: test quadratic ≠ train quadratic (default False, as in the paper).
        seeds: problem/noise seeds; several seeds give repeats (default 0).
        batching: ``vmap`` (default) or ``loop`` over tasks.
    """

    experiments: tuple[str, ...] = DEFAULT_EXPERIMENTS
    methods: tuple[str, ...] = field(default_factory=lambda: tuple(names()))
    ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)
    nu: float = 0.01
    lam: float = 2.0
    nu_grid: tuple[float, ...] = field(default_factory=lambda: _log_grid(1e-5, 1.0, 11))
    nu_ks: tuple[int, ...] = (5, 10, 20, 50, 100)
    lam_grid: tuple[float, ...] = field(default_factory=lambda: _log_grid(0.1, 10.0, 9))
    rate_nus: tuple[float, ...] | None = None
    rate_deltas: tuple[float, ...] = field(default_factory=lambda: _log_grid(1e-12, 1e-4, 9))
    train_k: int = 20
    iters: int = 50
    outer: str = "sgd"
    meta_lr: float | None = None
    inner_lr: float | None = None
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
        int_options = (("--inner-steps", self.ks), ("--nu-inner-steps", self.nu_ks),
                       ("--cg-steps", self.cg_steps))
        for option, values in int_options:
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise FobbenchError(f"{option}: every value must be an integer >= 1 (got {list(values)})")
        for option, floats in (("--nu-grid", self.nu_grid), ("--lam-grid", self.lam_grid),
                               ("--rate-nu", self.rate_nus or RATE_NUS), ("--rate-delta", self.rate_deltas)):
            if not floats or any(not (math.isfinite(v) and v > 0) for v in floats):
                raise FobbenchError(f"{option}: every value must be > 0 (got {list(floats)})")
        if "rates" in self.experiments and (len(self.rate_nus or (0,) * RATE_POINTS) < 3
                                            or len(self.rate_deltas) < 3
                                            or len(self.nu_ks) < 3):
            raise FobbenchError("rates: --rate-nu, --rate-delta and --nu-inner-steps need at least 3 values "
                                "each")
        if self.train_k < 1:
            raise FobbenchError(f"--train-inner-steps must be >= 1 (got {self.train_k})")
        if self.iters < 1:
            raise FobbenchError(f"--iters must be >= 1 (got {self.iters})")
        if self.outer not in OUTER:
            raise FobbenchError(f"--outer: unknown optimizer '{self.outer}' (choose from {', '.join(OUTER)})")
        if self.meta_lr is not None and not (math.isfinite(self.meta_lr) and self.meta_lr > 0):
            raise FobbenchError(f"--meta-lr must be > 0 (got {self.meta_lr})")
        if any(s < 0 for s in self.seeds) or not self.seeds:
            raise FobbenchError(f"--seeds: seeds must be integers >= 0 (got {list(self.seeds)})")
        if self.batching not in ("vmap", "loop"):
            raise FobbenchError(f"--batching: unknown '{self.batching}' (choose from vmap, loop)")
        # The estimator settings validate ν ≠ 0, λ > 0, lr > 0, es-samples, es-sigma.
        self.estimator_config(steps=1, lr=self.inner_lr or 1.0, lam=self.lam, nu=self.nu)
        for lam in self.lam_grid:
            InnerConfig(steps=1, lr=1.0, lam=lam)
        needs_nu = "error_vs_nu" in self.experiments or "rates" in self.experiments
        if needs_nu and not _nu_methods(self):
            raise FobbenchError(f"error_vs_nu and rates need a method that uses nu in --methods "
                                f"({', '.join(names(uses_nu=True))})")

    def fit_nus(self, method: str) -> tuple[float, ...]:
        """ν values of ``method``'s ν-rate fit: ``rate_nus`` if given, else its registered span."""
        if self.rate_nus is not None:
            return self.rate_nus
        low, high = get(method).fit_nus or RATE_NUS
        return _log_grid(low, high, RATE_POINTS)

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


def _row(method: str, point: dict[str, object], measurements: list[Measurement],
         info: dict[str, object] | None = None) -> Record:
    """A sub-experiment's record; :class:`GradcheckRun` adds settings, seed and output."""
    return Record(method, point, measurements=measurements, info=info or {})


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
                "batching": c.batching, "inner_lr_override": c.inner_lr}

    def estimate(self, method: str, config: EstimatorConfig, theta: Tensor | None = None) -> Params:
        """The estimator's meta-gradient at θ (θ₀ by default), tasks batched as configured."""
        generator = torch.Generator().manual_seed(self.seed)
        return meta_gradient(method, self.problem.params(theta), quadratic_loss, self.problem.support,
                             self.problem.query, config, batching=self.config.batching,
                             generator=generator).grad

    def error(self, method: str, config: EstimatorConfig) -> tuple[float, float]:
        """(‖g − ∇F‖/‖∇F‖, seconds) at θ₀, memoised on the estimator settings."""
        if get(method).is_exact:
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
    return list(config.cg_steps) if get(method).sweeps == "cg_steps" else [None]


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
    rows: Callable[[Context, Done], Iterator[Record]]
    extra_settings: Callable[[GradcheckConfig], dict[str, object]] = lambda config: {}
    """Settings beyond the point columns that change this experiment's values (hashed)."""

    @property
    def benchmark(self) -> str:
        """``gradcheck.<name>``."""
        return f"gradcheck.{self.name}"


def _error_vs_k_count(config: GradcheckConfig) -> int:
    return len(config.ks) * sum(len(_variants(config, m)) for m in config.methods)


def _error_vs_k(ctx: Context, done: Done) -> Iterator[Record]:
    c, problem = ctx.config, ctx.problem
    lr = c.inner_lr or problem.safe_lr(c.lam, c.nu)
    rho = problem.contraction(c.lam, lr, (0.0, c.nu, -c.nu))
    for k in c.ks:
        for method in c.methods:
            for cg in _variants(c, method):
                point = {"inner_steps": k, "cg_steps": cg, "nu": c.nu, "lam": c.lam}
                if done(method, point):
                    yield _row(method, point, [])
                    continue
                error, seconds = ctx.error(method, c.estimator_config(k, lr, c.lam, cg_steps=cg))
                yield _row(method, point, [_rel(error), _seconds(seconds)],
                          {"inner_lr": lr, "contraction": rho})


def _outer_loss_count(config: GradcheckConfig) -> int:
    return (config.iters + 1) * sum(len(_variants(config, m)) for m in config.methods)


def _outer_loss(ctx: Context, done: Done) -> Iterator[Record]:
    c, problem = ctx.config, ctx.problem
    lr = c.inner_lr or problem.safe_lr(c.lam, c.nu)
    _, f_star = problem.optimum(c.lam)
    outer_lr = c.meta_lr or OUTER_LR_FACTOR / problem.outer_smoothness(c.lam)
    info = {"inner_lr": lr, "outer": c.outer, "meta_lr": outer_lr, "f_star": f_star}
    for method in c.methods:
        for cg in _variants(c, method):
            points = [{"inner_steps": c.train_k, "cg_steps": cg, "iteration": t, "nu": c.nu, "lam": c.lam}
                      for t in range(c.iters + 1)]
            if all(done(method, p) for p in points):
                for p in points:
                    yield _row(method, p, [])
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
                yield _row(method, point, [] if done(method, point) else measurements, info)


def _nu_methods(config: GradcheckConfig) -> list[str]:
    return [m for m in config.methods if get(m).uses_nu]


def _error_vs_nu_count(config: GradcheckConfig) -> int:
    return len(config.nu_ks) * len(config.nu_grid) * len(_nu_methods(config))


def _nu_lr(ctx: Context) -> float:
    """One step size for the whole ν grid: safe at its largest ν."""
    c = ctx.config
    return c.inner_lr or ctx.problem.safe_lr(c.lam, max(c.nu_grid))


def _error_vs_nu(ctx: Context, done: Done) -> Iterator[Record]:
    c, problem = ctx.config, ctx.problem
    lr = _nu_lr(ctx)
    for k in c.nu_ks:
        delta = problem.inner_precision(c.lam, lr, k)
        for nu in c.nu_grid:
            rho = problem.contraction(c.lam, lr, (0.0, nu, -nu))
            for method in _nu_methods(c):
                point = {"inner_steps": k, "nu": nu, "lam": c.lam}
                if done(method, point):
                    yield _row(method, point, [])
                    continue
                error, seconds = ctx.error(method, c.estimator_config(k, lr, c.lam, nu=nu))
                yield _row(method, point,
                          [_rel(error), Measurement("delta", delta, "1", "closed_form"), _seconds(seconds)],
                          {"inner_lr": lr, "contraction": rho})


def _lambda_count(config: GradcheckConfig) -> int:
    return len(config.lam_grid)


def _lambda(ctx: Context, done: Done) -> Iterator[Record]:
    problem = ctx.problem
    for lam in ctx.config.lam_grid:
        point = {"lam": lam}
        if done("exact", point):
            yield _row("exact", point, [])
            continue
        yield _row("exact", point, [
            Measurement("adaptation_distance", float(problem.adaptation_distances(lam).mean()), "1",
                        "closed_form"),
            Measurement("condition_number", float(problem.condition_numbers(lam).mean()), "1",
                        "closed_form"),
        ])


# --- rates ----------------------------------------------------------------------------------


def _fit_rows(method: str, point: dict[str, object], fit: Fit, theory: float, span: str) -> Record:
    return _row(method, {**point, "x": None}, [
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


def _stencil_multiples(methods: Sequence[str]) -> list[float]:
    """Every ν multiple the methods' stencils solve at: 1, 0, −1 first (in that order, so
    their random directions do not depend on which other methods run), then the rest."""
    extra = sorted({m for name in methods for m, _ in get(name).stencil or ()} - {1.0, 0.0, -1.0})
    return [1.0, 0.0, -1.0, *extra]


def _perturbed_errors(problem: QuadraticTasks, lam: float, delta: float, nus: Sequence[float],
                      methods: Sequence[str], generator: torch.Generator, extra_generator: torch.Generator
                      ) -> dict[str, list[float]]:
    """Error of each method's stencil from exact solutions plus random errors of norm δ (Corollary 1).

    Each solve φ̃_v = φ*_v + δ·u_v (v = m·ν for every stencil multiple m, per task) gets its own
    uniformly random unit direction u_v, drawn once per δ so the error is a smooth function of
    ν: those of v ∈ {ν, 0, −ν} from ``generator``, any other multiple's from ``extra_generator``.
    """
    theta = problem.theta0
    truth = problem.meta_gradient(theta, lam)

    def unit(source: torch.Generator) -> Tensor:
        u = torch.randn((problem.tasks, problem.dim), generator=source, dtype=theta.dtype)
        return u / u.norm(dim=-1, keepdim=True)

    multiples = _stencil_multiples(methods)
    directions = {m: unit(generator if i < 3 else extra_generator) for i, m in enumerate(multiples)}
    base = problem.solution(theta, lam, 0.0) + delta * directions[0.0]
    out: dict[str, list[float]] = {m: [] for m in methods}
    for nu in nus:
        solved = {m: base if m == 0.0 else problem.solution(theta, lam, m * nu) + delta * directions[m]
                  for m in multiples}
        for method in methods:
            combination = sum_stencil(get(method).stencil or (), solved)
            g = -lam * combination / nu
            out[method].append(float((g.mean(0) - truth).norm() / truth.norm()))
    return out


def sum_stencil(stencil: Sequence[tuple[float, float]], solved: dict[float, Tensor]) -> Tensor:
    """Σ c·φ_m over a stencil, in its order; a leading unit coefficient is not multiplied, so
    (1, φ_a), (−1, φ_b) gives φ_a − φ_b bit for bit."""
    total: Tensor | None = None
    for multiple, coefficient in stencil:
        term = solved[multiple]
        if total is None:
            total = term if coefficient == 1.0 else coefficient * term
        elif coefficient == -1.0:
            total = total - term
        else:
            total = total + coefficient * term
    if total is None:
        raise FobbenchError("rates: a method with an empty stencil cannot be fitted")
    return total


def _theory(slope: float | None) -> float:
    """A registered theory slope, NaN where the paper gives none."""
    return float("nan") if slope is None else slope


def _span(values: Sequence[float]) -> str:
    return f"{min(values):.2g}..{max(values):.2g}"


def _rates_count(config: GradcheckConfig) -> int:
    per_method = (len(config.nu_ks) + 1) + (len(config.rate_deltas) + 1)
    return sum(len(config.fit_nus(m)) + 1 + per_method for m in _nu_methods(config))


def _rates(ctx: Context, done: Done) -> Iterator[Record]:
    c, problem = ctx.config, ctx.problem
    methods = _nu_methods(c)
    # 1. error vs ν with a near-exact inner solve (heavy ball to 1e-14): Prop. 2's order.
    for method in methods:
        xs, ys = [], []
        reach = max(abs(m) for m, _ in get(method).stencil or ((1.0, 1.0),))
        lr, beta, steps = heavy_ball(problem, c.lam, [reach * nu for nu in c.fit_nus(method)])
        for nu in c.fit_nus(method):
            point = {"fit": "nu", "solver": "heavy-ball", "inner_steps": steps, "lam": c.lam, "x": nu}
            config = c.estimator_config(steps, lr, c.lam, nu=nu, optimizer="momentum", momentum=beta)
            error, _ = ctx.error(method, config)
            xs.append(nu)
            ys.append(error)
            yield _row(method, point, [] if done(method, point) else [_rel(error)],
                      {"inner_lr": lr, "momentum": beta})
        point = {"fit": "nu", "solver": "heavy-ball", "inner_steps": steps, "lam": c.lam}
        yield _fit_rows(method, point, fit_slope(xs, ys), _theory(get(method).theory_nu), _span(xs))
    # 2. error vs δ at the best ν, δ from K plain GD steps (the estimator code itself).
    lr_gd = _nu_lr(ctx)
    for method in methods:
        xs, ys = [], []
        for k in c.nu_ks:
            errors = [ctx.error(method, c.estimator_config(k, lr_gd, c.lam, nu=nu))[0] for nu in c.nu_grid]
            best = int(np.nanargmin(errors))
            delta = problem.inner_precision(c.lam, lr_gd, k)
            point = {"fit": "delta", "solver": "gd", "inner_steps": k, "lam": c.lam, "x": delta}
            xs.append(delta)
            ys.append(errors[best])
            yield _row(method, point, [] if done(method, point) else [
                _rel(errors[best]), Measurement("best_nu", c.nu_grid[best], "1", "grid_search")],
                {"inner_lr": lr_gd})
        point = {"fit": "delta", "solver": "gd", "inner_steps": None, "lam": c.lam}
        yield _fit_rows(method, point, fit_slope(xs, ys), _theory(get(method).theory_delta), _span(xs))
    # 3. error vs δ at the best ν under Corollary 1's model: exact solutions + errors of norm δ.
    fine_nus = _log_grid(1e-7, 1.0, 71)
    generator = torch.Generator().manual_seed(ctx.seed)
    extra_generator = torch.Generator().manual_seed(ctx.seed + 1)
    curves = [_perturbed_errors(problem, c.lam, delta, fine_nus, methods, generator, extra_generator)
              for delta in c.rate_deltas]
    for method in methods:
        xs, ys = [], []
        for delta, curve in zip(c.rate_deltas, curves, strict=False):
            errors = curve[method]
            best = int(np.nanargmin(errors))
            point = {"fit": "delta", "solver": "perturbed", "inner_steps": None, "lam": c.lam, "x": delta}
            xs.append(delta)
            ys.append(errors[best])
            yield _row(method, point, [] if done(method, point) else [
                _rel(errors[best]), Measurement("best_nu", fine_nus[best], "1", "grid_search")])
        point = {"fit": "delta", "solver": "perturbed", "inner_steps": None, "lam": c.lam}
        yield _fit_rows(method, point, fit_slope(xs, ys), _theory(get(method).theory_delta), _span(xs))


REGISTRY_EXPERIMENTS: dict[str, Experiment] = {
    "error_vs_k": Experiment("error_vs_k", ("inner_steps", "cg_steps", "nu", "lam"),
                             ("inner_lr", "contraction"),
                             _error_vs_k_count, _error_vs_k),
    "outer_loss": Experiment("outer_loss", ("inner_steps", "cg_steps", "iteration", "nu", "lam"),
                             ("inner_lr", "outer", "meta_lr", "f_star"), _outer_loss_count, _outer_loss,
                             lambda c: {"outer": c.outer, "meta_lr": c.meta_lr}),
    "error_vs_nu": Experiment("error_vs_nu", ("inner_steps", "nu", "lam"), ("inner_lr", "contraction"),
                              _error_vs_nu_count, _error_vs_nu, lambda c: {"nu_max": max(c.nu_grid)}),
    "lambda": Experiment("lambda", ("lam",), (), _lambda_count, _lambda),
    "rates": Experiment("rates", ("fit", "solver", "inner_steps", "lam", "x"),
                        ("inner_lr", "momentum", "fit_points", "fit_range"), _rates_count, _rates,
                        lambda c: {"nu_grid": c.nu_grid, "nu_ks": c.nu_ks,
                                   "rate_nus": c.rate_nus or _log_grid(*RATE_NUS, RATE_POINTS),
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
class GradcheckRun:
    """The runner's spec of a gradcheck invocation: one CSV per sub-experiment, in one folder."""

    config: GradcheckConfig

    def outputs(self) -> list[Output]:
        """One output per selected sub-experiment (``<folder>/<name>.csv``)."""
        return [Output(name, REGISTRY_EXPERIMENTS[name].benchmark, REGISTRY_EXPERIMENTS[name].point_columns,
                       REGISTRY_EXPERIMENTS[name].info_columns) for name in self.config.experiments]

    def total(self) -> int:
        """Points visited, over seeds and sub-experiments."""
        return total_points(self.config)

    def records(self, sink: Sink) -> Iterator[Record | Tick]:
        """Each seed's problem, then every selected sub-experiment's records in turn."""
        for seed in self.config.seeds:
            ctx = Context(self.config, seed)
            for name in self.config.experiments:
                experiment = REGISTRY_EXPERIMENTS[name]
                settings = {**ctx.settings(), **experiment.extra_settings(self.config)}

                def done(method: str, point: dict[str, object], _name: str = name,
                         _settings: dict[str, object] = settings, _seed: int = seed) -> bool:
                    return sink.done(Record(method, point, _settings, _seed, output=_name))

                yield Tick(0, name)
                for row in experiment.rows(ctx, done):
                    yield replace(row, settings=settings, seed=seed, output=name)


def run(config: GradcheckConfig, out_dir: Path, resume: bool = False, quiet: bool = True) -> RunFiles:
    """Run the selected sub-experiments through the runner, into ``out_dir/<name>.csv``.

    A new run refuses a folder that already holds one of its CSV files; ``resume=True``
    continues the files found there (new ones are created) and skips finished points.
    """
    return execute(GradcheckRun(config), Path(out_dir), resume=resume, quiet=quiet, label="gradcheck")


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
    rows["estimator"] = [method_label(m, c) for m, c in zip(rows["method"], rows["cg_steps"], strict=False)]
    table = rows.pivot_table(index="estimator", columns="inner_steps", values="value", aggfunc="mean")
    table = table.loc[sorted(table.index, key=lambda label: (rank_of(label.split(" ")[0]), label))]
    table.columns = [int(k) for k in table.columns]
    return table


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

