"""gradcheck's settings, the per-seed problem context and the helpers its sub-experiments share."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from fobbench.choices import parse_gradcheck_experiments
from fobbench.errors import FobbenchError
from fobbench.estimators import BATCHING, EstimatorConfig, get, meta_gradient, names, parse_methods
from fobbench.estimators.nu_rule import AUTO, MAX_NU
from fobbench.experiments.runner import Record
from fobbench.inner import InnerConfig
from fobbench.meta_optim import OUTER
from fobbench.params import Params
from fobbench.problems.quadratic import PARAM, QuadraticTasks, make_quadratic, quadratic_loss
from fobbench.ranges import parse_range
from fobbench.results import Measurement
from fobbench.validate import one_of, positive

DTYPES = {"float64": torch.float64, "float32": torch.float32}
"""``--dtype``: the floating type the estimators run in (the truth is always float64)."""
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


parse_experiments = parse_gradcheck_experiments
"""``all`` or a comma-separated subset of :data:`EXPERIMENTS` (one-line error otherwise); the
torch-free parser the command line checks with (:func:`fobbench.choices.parse_gradcheck_experiments`)."""


def rate_grid(low: float, high: float) -> tuple[float, ...]:
    """:data:`RATE_POINTS` log-spaced ν values from ``low`` to ``high``, exactly as the option
    syntax ``low..high@9`` gives them (so a default fit equals one asked for on the command line)."""
    return tuple(parse_range(f"{low!r}..{high!r}@{RATE_POINTS}", "--rate-nu", float))


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
            for K ≥ 50), or ``auto`` (:mod:`fobbench.estimators.nu_rule`; each row records the
            ν chosen as ``nu_used``, and ``error_vs_nu`` adds an ``auto`` point per K beside
            the grid, so the rule is compared with every fixed ν).
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
        dtype: ``float64`` (default) or ``float32``: θ and the task data are cast to it for the
            estimators; the closed-form truth stays float64 (hashed when not float64).
    """

    experiments: tuple[str, ...] = DEFAULT_EXPERIMENTS
    methods: tuple[str, ...] = field(default_factory=lambda: tuple(names()))
    ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)
    nu: float | str = 0.01
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
    dtype: str = "float64"

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
        one_of(self.dtype, tuple(DTYPES), "--dtype")
        one_of(self.batching, BATCHING, "--batching")
        # B-MAML's closed forms (the ground truth) need λ > 0; the inner solver itself allows 0.
        for option, lams in (("--lam", (self.lam,)), ("--lam-grid", self.lam_grid)):
            for lam in lams:
                positive(lam, f"{option} (λ)")
        # The estimator settings validate ν ≠ 0, lr > 0, es-samples, es-sigma.
        self.estimator_config(steps=1, lr=self.inner_lr or 1.0, lam=self.lam, nu=self.nu)
        needs_nu = "error_vs_nu" in self.experiments or "rates" in self.experiments
        if needs_nu and not _nu_methods(self):
            raise FobbenchError(f"error_vs_nu and rates need a method that uses nu in --methods "
                                f"({', '.join(names(uses_nu=True))})")

    @property
    def nu_bound(self) -> float:
        """The largest |ν| ``error_vs_k`` and ``outer_loss`` may run at (for the safe step size):
        ``nu``, or :data:`~fobbench.estimators.nu_rule.MAX_NU` under ``auto``."""
        return MAX_NU if self.nu == AUTO else abs(float(self.nu))

    def fit_nus(self, method: str) -> tuple[float, ...]:
        """ν values of ``method``'s ν-rate fit: ``rate_nus`` if given, else its registered span."""
        if self.rate_nus is not None:
            return self.rate_nus
        low, high = get(method).fit_nus or RATE_NUS
        return rate_grid(low, high)

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
        self._memo: dict[tuple, tuple[float, float, float | None]] = {}

    def settings(self) -> dict[str, object]:
        """Settings hashed into every point (problem, ES, batching)."""
        c = self.config
        extra = {} if c.dtype == "float64" else {"dtype": c.dtype}  # float64 hashes as before
        return {**self.problem.settings, "es_samples": c.es_samples, "es_sigma": c.es_sigma,
                "batching": c.batching, "inner_lr_override": c.inner_lr, **extra}

    def estimate(self, method: str, config: EstimatorConfig, theta: Tensor | None = None) -> Params:
        """The estimator's meta-gradient at θ (θ₀ by default), tasks batched as configured."""
        return self.estimate_with_nu(method, config, theta)[0]

    def estimate_with_nu(self, method: str, config: EstimatorConfig, theta: Tensor | None = None
                         ) -> tuple[Params, float | None]:
        """(meta-gradient, the ν it ran with) at θ (θ₀ by default), in ``--dtype``."""
        dtype = DTYPES[self.config.dtype]
        generator = torch.Generator().manual_seed(self.seed)
        cast = lambda data: tuple(t.to(dtype) if t.is_floating_point() else t for t in data)  # noqa: E731
        params = {n: p.to(dtype) for n, p in self.problem.params(theta).items()}
        result = meta_gradient(method, params, quadratic_loss, cast(self.problem.support),
                               cast(self.problem.query), config, batching=self.config.batching,
                               generator=generator)
        return {n: g.to(torch.float64) for n, g in result.grad.items()}, result.nu

    def error(self, method: str, config: EstimatorConfig) -> tuple[float, float]:
        """(‖g − ∇F‖/‖∇F‖, seconds) at θ₀, memoised on the estimator settings."""
        error, seconds, _ = self.error_and_nu(method, config)
        return error, seconds

    def error_and_nu(self, method: str, config: EstimatorConfig) -> tuple[float, float, float | None]:
        """(‖g − ∇F‖/‖∇F‖, seconds, ν used or None) at θ₀, memoised on the estimator settings."""
        if get(method).is_exact:
            # The exact estimator solves the inner problem to machine precision: K is unused.
            config = replace(config, inner=replace(config.inner, steps=1))
        key = (method, config)
        if key not in self._memo:
            truth = self.problem.meta_gradient(self.problem.theta0, config.inner.lam)
            start = time.perf_counter()
            grad, nu = self.estimate_with_nu(method, config)
            seconds = time.perf_counter() - start
            self._memo[key] = (float((grad[PARAM] - truth).norm() / truth.norm()), seconds, nu)
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



def _nu_used(value: float | None) -> list[Measurement]:
    """The ``nu_used`` measurement of an ``auto`` row (none for methods without ν)."""
    return [] if value is None else [Measurement("nu_used", value, "1", "auto_rule")]


def _nu_methods(config: GradcheckConfig) -> list[str]:
    return [m for m in config.methods if get(m).uses_nu]


def _nu_lr(ctx: Context) -> float:
    """One step size for the whole ν grid: safe at its largest ν."""
    c = ctx.config
    largest = max(*c.nu_grid, MAX_NU) if c.nu == AUTO else max(c.nu_grid)  # auto's choice is ≤ MAX_NU
    return c.inner_lr or ctx.problem.safe_lr(c.lam, largest)
