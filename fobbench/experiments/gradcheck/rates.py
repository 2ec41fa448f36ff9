"""gradcheck's rate fits: error vs ν with a near-exact solve (Prop. 2), vs δ at the best ν (Corollary 1)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from fobbench.errors import FobbenchError
from fobbench.estimators import get
from fobbench.experiments.gradcheck.config import (
    Context,
    Done,
    GradcheckConfig,
    _log_grid,
    _nu_lr,
    _nu_methods,
    _rel,
    _row,
)
from fobbench.experiments.runner import Record
from fobbench.problems.quadratic import QuadraticTasks
from fobbench.results import Measurement
from fobbench.stats import Fit, fit_slope


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


def count(config: GradcheckConfig) -> int:
    """Rows of the rates sub-experiment (per method: each fit's points plus its fit row)."""
    per_method = (len(config.nu_ks) + 1) + (len(config.rate_deltas) + 1)
    return sum(len(config.fit_nus(m)) + 1 + per_method for m in _nu_methods(config))


def records(ctx: Context, done: Done) -> Iterator[Record]:
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
