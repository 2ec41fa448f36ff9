"""The estimator protocol, its settings and the one registry of methods."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from fobbench.errors import FobbenchError
from fobbench.inner import InnerConfig
from fobbench.params import Data, LossFn, Params


@dataclass(frozen=True)
class EstimatorConfig:
    """Settings shared by every estimator.

    Attributes:
        inner: the inner solver (K, α, λ, optimizer) used by every method alike.
        nu: ν, the FO-B-MAML perturbation (default 0.1, the paper's value); ν ≠ 0.
        cg_steps: conjugate-gradient steps of iMAML (default 5; the paper also uses 2).
        es_samples: antithetic Gaussian directions of ES-MAML (default 16).
        es_sigma: smoothing radius σ of ES-MAML (default 0.01).
        exact_newton_steps: Newton iterations of ``exact`` on a dense Hessian (default 30).
    """

    inner: InnerConfig = field(default_factory=InnerConfig)
    nu: float = 0.1
    cg_steps: int = 5
    es_samples: int = 16
    es_sigma: float = 0.01
    exact_newton_steps: int = 30

    def __post_init__(self) -> None:
        if not math.isfinite(self.nu) or self.nu == 0:
            raise FobbenchError(f"--nu (ν) must be a non-zero finite number (got {self.nu})")
        if not isinstance(self.cg_steps, int) or self.cg_steps < 1:
            raise FobbenchError(f"--cg-steps must be an integer >= 1 (got {self.cg_steps})")
        if not isinstance(self.es_samples, int) or self.es_samples < 1:
            raise FobbenchError(f"--es-samples must be an integer >= 1 (got {self.es_samples})")
        if not (self.es_sigma > 0 and math.isfinite(self.es_sigma)):
            raise FobbenchError(f"--es-sigma must be > 0 (got {self.es_sigma})")


PerTaskFn = Callable[[Params, LossFn, Data, Data, EstimatorConfig, "Params | None"], Params]
"""``fn(θ, loss, support, query, config, noise) -> meta-gradient of one task``."""

AccumulateFn = Callable[[Params, LossFn, Data, Data, EstimatorConfig, "Params | None", Params], None]
"""``fn(θ, loss, support, query, config, noise, total)``: adds one task's meta-gradient into
``total`` in place."""


@dataclass(frozen=True)
class Estimator:
    """A meta-gradient method.

    Attributes:
        name: registry key (``maml``, ``fobmaml-sym``, ...).
        fn: the per-task estimate; pure, so it can be vmapped over tasks.
        summary: one line for help texts and tables.
        order: ``second`` (differentiates through the solver or uses Hessian products),
            ``first`` (gradients only), ``zeroth`` (function values only) or ``exact``.
        vmappable: False when the method has data-dependent control flow.
        needs_noise: True for ES-MAML: Gaussian directions are drawn outside the per-task
            function from a seeded generator, so vmap and loop see the same ones.
        accumulate_fn: adds the estimate into a running sum in place, folding partial results
            in early (see :meth:`accumulate`); None: add the result of ``fn``.
    """

    name: str
    fn: PerTaskFn
    summary: str
    order: str
    vmappable: bool = True
    needs_noise: bool = False
    accumulate_fn: AccumulateFn | None = None

    def accumulate(self, theta: Params, loss: LossFn, support: Data, query: Data,
                   config: EstimatorConfig, noise: Params | None, total: Params) -> None:
        """Add one task's estimate into ``total`` (the meta-gradient buffer) in place.

        This is how tasks are summed one at a time. A method whose estimate is a sum of
        solve results (FO-B-MAML) adds each one as soon as it is computed, so it never
        holds two solutions at once (paper §5.3: "computing the first estimate and then
        accumulating the second").
        """
        if self.accumulate_fn is not None:
            self.accumulate_fn(theta, loss, support, query, config, noise, total)
            return
        estimate = self.fn(theta, loss, support, query, config, noise)
        for name, value in total.items():
            value.add_(estimate[name])


REGISTRY: dict[str, Estimator] = {}


def register(name: str, summary: str, order: str, vmappable: bool = True,
             needs_noise: bool = False) -> Callable[[PerTaskFn], PerTaskFn]:
    """Decorator adding a per-task function to the registry under ``name``."""

    def wrap(fn: PerTaskFn) -> PerTaskFn:
        REGISTRY[name] = Estimator(name, fn, summary, order, vmappable, needs_noise)
        return fn

    return wrap


def accumulates(name: str) -> Callable[[AccumulateFn], AccumulateFn]:
    """Decorator giving the registered method ``name`` an in-place accumulating form.

    It must add exactly what ``fn`` returns (tests check both forms agree).
    """

    def wrap(fn: AccumulateFn) -> AccumulateFn:
        REGISTRY[name] = replace(REGISTRY[name], accumulate_fn=fn)
        return fn

    return wrap


def get(name: str) -> Estimator:
    """The estimator registered as ``name``; a one-line FobbenchError otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise FobbenchError(
            f"unknown method '{name}' (choose from {', '.join(REGISTRY)})"
        ) from None


def parse_methods(text: str, option: str = "--methods", allow_exact: bool = True) -> list[str]:
    """Split a comma-separated method list and check every name against the registry."""
    if not text.strip():
        raise FobbenchError(f"{option}: no method given")
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise FobbenchError(f"{option}: '{text}' has an empty item (a stray comma?)")
    for name in names:
        if name == "exact" and not allow_exact and name in REGISTRY:
            raise FobbenchError(
                f"{option}: exact is gradcheck-only (the closed-form meta-gradient of the quadratic "
                "tasks); choose an estimator"
            )
        if name not in REGISTRY:
            choices = [n for n in REGISTRY if allow_exact or n != "exact"]
            raise FobbenchError(f"{option}: unknown method '{name}' (choose from {', '.join(choices)})")
    return names
