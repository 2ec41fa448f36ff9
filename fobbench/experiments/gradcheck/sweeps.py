"""gradcheck's sweeps: error vs K (Fig. 1 top), outer loss (Fig. 1 bottom), error vs ν (Fig. 4),
λ effects (Fig. 5).."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fobbench.estimators import meta_gradient
from fobbench.estimators.nu_rule import AUTO
from fobbench.experiments.gradcheck.config import (
    OUTER_LR_FACTOR,
    Context,
    Done,
    GradcheckConfig,
    _nu_lr,
    _nu_methods,
    _nu_used,
    _rel,
    _row,
    _seconds,
    _variants,
)
from fobbench.experiments.runner import Record
from fobbench.meta_optim import apply, make_outer
from fobbench.problems.quadratic import PARAM, quadratic_loss
from fobbench.results import Measurement


def _error_vs_k_count(config: GradcheckConfig) -> int:
    return len(config.ks) * sum(len(_variants(config, m)) for m in config.methods)


def _error_vs_k(ctx: Context, done: Done) -> Iterator[Record]:
    c, problem = ctx.config, ctx.problem
    lr = c.inner_lr or problem.safe_lr(c.lam, c.nu_bound)
    rho = problem.contraction(c.lam, lr, (0.0, c.nu_bound, -c.nu_bound))
    for k in c.ks:
        for method in c.methods:
            for cg in _variants(c, method):
                point = {"inner_steps": k, "cg_steps": cg, "nu": c.nu, "lam": c.lam}
                if done(method, point):
                    yield _row(method, point, [])
                    continue
                error, seconds, nu = ctx.error_and_nu(method, c.estimator_config(k, lr, c.lam, cg_steps=cg))
                used = _nu_used(nu) if c.nu == AUTO else []
                yield _row(method, point, [_rel(error), _seconds(seconds), *used],
                          {"inner_lr": lr, "contraction": rho})


def _outer_loss_count(config: GradcheckConfig) -> int:
    return (config.iters + 1) * sum(len(_variants(config, m)) for m in config.methods)


def _outer_loss(ctx: Context, done: Done) -> Iterator[Record]:
    c, problem = ctx.config, ctx.problem
    lr = c.inner_lr or problem.safe_lr(c.lam, c.nu_bound)
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


def _nu_points(config: GradcheckConfig) -> list[float | str]:
    """The ν values of ``error_vs_nu``: the grid, then ``auto`` under ``--nu auto``."""
    return [*config.nu_grid, *([AUTO] if config.nu == AUTO else [])]


def _error_vs_nu_count(config: GradcheckConfig) -> int:
    return len(config.nu_ks) * len(_nu_points(config)) * len(_nu_methods(config))


def _error_vs_nu(ctx: Context, done: Done) -> Iterator[Record]:
    c, problem = ctx.config, ctx.problem
    lr = _nu_lr(ctx)
    for k in c.nu_ks:
        delta = problem.inner_precision(c.lam, lr, k)
        for nu in _nu_points(c):
            for method in _nu_methods(c):
                point = {"inner_steps": k, "nu": nu, "lam": c.lam}
                if done(method, point):
                    yield _row(method, point, [])
                    continue
                error, seconds, used = ctx.error_and_nu(method, c.estimator_config(k, lr, c.lam, nu=nu))
                rho = problem.contraction(c.lam, lr, (0.0, used, -used))
                yield _row(method, point,
                          [_rel(error), Measurement("delta", delta, "1", "closed_form"), _seconds(seconds),
                           *(_nu_used(used) if nu == AUTO else [])],
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
