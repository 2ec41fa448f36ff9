"""The estimator protocol, its settings and the one registry of methods."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from fobbench.errors import FobbenchError
from fobbench.estimators.nu_rule import AUTO, CURVATURE, auto_nu
from fobbench.inner import InnerConfig
from fobbench.methods import (
    HYPERPARAMETER_HELP,
    METHODS,
    PROTOCOLS,
    FloorFn,
    FloorPasses,
    Method,
    declare,
    forget,
    hyperparameter_help,
    names,
    parse_methods,
    rank_of,
    solve_and_query,
)
from fobbench.params import Data, LossFn, Params
from fobbench.validate import integer, one_of, positive

__all__ = [
    "METHODS", "PROTOCOLS", "REGISTRY", "AccumulateFn", "Estimator", "EstimatorConfig", "FloorFn",
    "FloorPasses", "PerTaskFn", "accumulates", "get", "hyperparameter_help", "method_config", "names",
    "nu_of", "parse_methods", "rank_of", "register", "solve_and_query", "unregister",
]

PUBLISHED_IMAML_DAMPING = (1.0, 10.0)
"""(ρ, τ) of the iMAML authors' code (aravindr93/imaml_dev: ``matrix_evaluator(task, lam,
regu_coef=cg_damping=1.0, lam_damping=10.0)``, operator (1 + ρ)v + Hv/(λ + τ)); their
Omniglot command uses λ = 2, 5 CG steps, 16 inner GD steps at inner lr 0.1."""


@dataclass(frozen=True)
class EstimatorConfig:
    """Settings shared by every estimator.

    Attributes:
        inner: the inner solver (K, α, λ, optimizer) used by every method alike.
        nu: ν, the FO-B-MAML perturbation (default 0.1, the paper's value); ν ≠ 0, or
            ``"auto"``: chosen per call from θ's dtype by :func:`fobbench.estimators.nu_rule.auto_nu`.
        cg_steps: conjugate-gradient steps of iMAML (default 5; the paper also uses 2).
        es_samples: antithetic Gaussian directions of ES-MAML (default 16).
        es_sigma: smoothing radius σ of ES-MAML (default 0.01).
        exact_newton_steps: Newton iterations of ``exact`` on a dense Hessian (default 30).
        inner_protocol: ``proximal`` (default: every method on the proximal problem) or
            ``published`` (each method's own inner problem; see :data:`PROTOCOLS`).
        cg_damping: iMAML's damping (ρ, τ) of the CG operator (1 + ρ)·v + ∇²f̂·v/(λ + τ);
            None (default): (0, 0), the undamped B-MAML system (eq. 8) under ``proximal``,
            and the iMAML authors' (1.0, 10.0) under ``published`` (their released code,
            ``regu_coef=1`` with ``lam_damping=10``, at λ = 2 and 5 CG steps).
        in_place: set by the batching code (never by users, never hashed): True when tasks run
            one at a time outside any torch.func transform, so first-order methods may solve in
            place and take query gradients with plain autograd (``inner.solve(in_place=...)``).
    """

    inner: InnerConfig = field(default_factory=InnerConfig)
    nu: float | str = field(default=0.1, metadata={"help": HYPERPARAMETER_HELP["nu"]})
    cg_steps: int = field(default=5, metadata={"help": HYPERPARAMETER_HELP["cg_steps"]})
    es_samples: int = field(default=16, metadata={"help": HYPERPARAMETER_HELP["es_samples"]})
    es_sigma: float = field(default=0.01, metadata={"help": HYPERPARAMETER_HELP["es_sigma"]})
    exact_newton_steps: int = field(default=30, metadata={"help": HYPERPARAMETER_HELP["exact_newton_steps"]})
    inner_protocol: str = field(default="proximal", metadata={"help": HYPERPARAMETER_HELP["inner_protocol"]})
    cg_damping: tuple[float, float] | None = None
    in_place: bool = field(default=False, compare=False, repr=False)

    def imaml_damping(self) -> tuple[float, float]:
        """(ρ, τ) of iMAML's CG operator under this configuration (see ``cg_damping``)."""
        if self.cg_damping is not None:
            return self.cg_damping
        return PUBLISHED_IMAML_DAMPING if self.inner_protocol == "published" else (0.0, 0.0)

    def __post_init__(self) -> None:
        one_of(self.inner_protocol, PROTOCOLS, "--inner-protocol")
        if self.nu != AUTO and (isinstance(self.nu, str) or not math.isfinite(self.nu) or self.nu == 0):
            raise FobbenchError(f"--nu (ν) must be a non-zero finite number or 'auto' (got {self.nu})")
        integer(self.cg_steps, "--cg-steps")
        if self.cg_damping is not None and not all(math.isfinite(d) and d >= 0 for d in self.cg_damping):
            raise FobbenchError(f"--cg-damping must be two numbers >= 0 (got {self.cg_damping})")
        integer(self.es_samples, "--es-samples")
        positive(self.es_sigma, "--es-sigma")


PerTaskFn = Callable[[Params, LossFn, Data, Data, EstimatorConfig, "Params | None"], Params]
"""``fn(θ, loss, support, query, config, noise) -> meta-gradient of one task``."""

AccumulateFn = Callable[[Params, LossFn, Data, Data, EstimatorConfig, "Params | None", Params], None]
"""``fn(θ, loss, support, query, config, noise, total)``: adds one task's meta-gradient into
``total`` in place."""


@dataclass(frozen=True, kw_only=True)
class Estimator(Method):
    """A meta-gradient method: its declared facts (:class:`fobbench.methods.Method`: name,
    summary, order, rank, floor, hyperparameters, theory slopes, ...) plus its torch functions.

    Attributes:
        fn: the per-task estimate; pure, so it can be vmapped over tasks.
        accumulate_fn: adds the estimate into a running sum in place, folding partial results
            in early (see :meth:`accumulate`); None: add the result of ``fn``.
    """

    fn: PerTaskFn
    accumulate_fn: AccumulateFn | None = None

    @property
    def solves_unperturbed(self) -> bool:
        """True when the method's stencil solves the unperturbed problem (a v = 0 term, the
        forward estimator): ``--nu auto`` then measures that solve's error (the rule's ε)."""
        return self.stencil is not None and any(m == 0.0 for m, _ in self.stencil)

    def nu(self, config: EstimatorConfig, dtype: torch.dtype, solve_error: float = 0.0,
           curvature: float = CURVATURE) -> float | None:
        """The ν this method runs with for θ of ``dtype``: ``config.nu``, or the ``auto`` rule
        (:func:`fobbench.estimators.nu_rule.auto_nu`, from the registered bias order
        ``theory_nu``, the stencil's reach and the batch's measured inner-solve error and
        curvature, :func:`fobbench.estimators.nu_rule.measure`; without them: ε = 0 and
        L̂ = :data:`~fobbench.estimators.nu_rule.CURVATURE`); None for methods without ν."""
        if not self.uses_nu:
            return None
        if config.nu == AUTO:
            if self.theory_nu is None:
                raise FobbenchError(f"--nu auto: {self.name} declares no bias order in ν (theory_nu)")
            reach = max(abs(m) for m, _ in self.stencil) if self.stencil else 1.0
            return auto_nu(dtype, self.theory_nu, config.inner.lam, reach, solve_error, curvature)
        return float(config.nu)

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


def register(name: str, summary: str | None = None, order: str | None = None,
             **facts: object) -> Callable[[PerTaskFn], PerTaskFn]:
    """Decorator adding a per-task function to the registry under ``name``.

    A built-in method is declared in :mod:`fobbench.methods` (torch-free, so the command line
    knows it without importing torch) and registers by name alone: ``@register("maml")``.
    A method made at run time (a test, a script) passes its ``summary``, ``order`` and
    other facts (:class:`fobbench.methods.Method` fields), which declare it first.
    """
    if summary is not None or order is not None or facts:
        if summary is None or order is None:
            raise TypeError(f"register({name!r}): a new method needs a summary and an order")
        reserved = {"fn", "accumulate_fn", "name"}
        unknown = (set(facts) - set(Estimator.__dataclass_fields__)) | (reserved & set(facts))
        if unknown:
            raise TypeError(f"register({name!r}): unknown facts {sorted(unknown)}")
        for field_name in facts.get("hyperparameters", ()):  # type: ignore[union-attr]
            if field_name not in EstimatorConfig.__dataclass_fields__:
                raise TypeError(f"register({name!r}): {field_name!r} is not an EstimatorConfig field")
        declare(name, summary, order, **facts)
    elif name not in METHODS:
        raise TypeError(f"register({name!r}): not declared in fobbench.methods (declare its facts there, "
                        "or pass summary, order and facts)")

    def wrap(fn: PerTaskFn) -> PerTaskFn:
        REGISTRY[name] = Estimator(**METHODS[name].facts(), fn=fn)
        return fn

    return wrap


def unregister(name: str) -> None:
    """Remove a method registered at run time (its implementation and its declaration)."""
    REGISTRY.pop(name, None)
    forget(name)


def accumulates(name: str) -> Callable[[AccumulateFn], AccumulateFn]:
    """Decorator giving the registered method ``name`` an in-place accumulating form.

    It must add exactly what ``fn`` returns (tests check both forms agree).
    """

    def wrap(fn: AccumulateFn) -> AccumulateFn:
        REGISTRY[name] = replace(REGISTRY[name], accumulate_fn=fn)
        return fn

    return wrap


def method_config(estimator: Estimator, config: EstimatorConfig) -> EstimatorConfig:
    """The settings ``estimator`` actually runs with under ``config.inner_protocol``.

    ``published``: a method with ``proximal=False`` adapts with λ = 0. A method that needs
    the proximal term refuses λ = 0 with a one-line error naming ``--lam``.
    """
    if estimator.proximal:
        if config.inner.lam <= 0:
            raise FobbenchError(
                f"--lam (λ) must be > 0 for {estimator.name} (its estimator needs the proximal term)")
        return config
    if config.inner_protocol == "published" and config.inner.lam != 0:
        return replace(config, inner=replace(config.inner, lam=0.0))
    return config


def nu_of(name: str, config: EstimatorConfig, theta: Params) -> float:
    """The ν the registered method ``name`` runs with on θ: ``config.nu``, or ``--nu auto``'s
    choice for θ's dtype (:meth:`Estimator.nu`, which also reports it)."""
    nu = get(name).nu(config, next(iter(theta.values())).dtype)
    if nu is None:
        raise FobbenchError(f"{name} does not use ν (declare hyperparameters=('nu',))")
    return nu


def get(name: str) -> Estimator:
    """The estimator registered as ``name``; a one-line FobbenchError otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise FobbenchError(
            f"unknown method '{name}' (choose from {', '.join(names())})"
        ) from None
