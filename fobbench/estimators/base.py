"""The estimator protocol, its settings and the one registry of methods."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch

from fobbench.errors import FobbenchError
from fobbench.estimators.nu_rule import AUTO, CURVATURE, auto_nu
from fobbench.inner import InnerConfig
from fobbench.params import Data, LossFn, Params

PROTOCOLS = ("proximal", "published")
"""Inner-objective protocols of a run (DESIGN.md, "One inner solver for all"):

- ``proximal``: every method adapts on f̂ + λ/2‖φ − θ‖², so differences between methods
  come from the estimator alone (B-MAML's set-up).
- ``published``: each method adapts on the inner problem it was published with. MAML,
  FO-MAML, Reptile and ES-MAML take plain gradient steps on f̂ (λ = 0; Finn et al. 2017,
  Nichol et al. 2018, Song et al. 2020); FO-B-MAML and iMAML keep λ, which their
  estimators need (registry flag ``proximal``).
"""


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
    nu: float | str = field(default=0.1, metadata={"help": "ν, the FO-B-MAML perturbation (≠ 0)."})
    cg_steps: int = field(default=5, metadata={"help": "iMAML conjugate-gradient steps."})
    es_samples: int = field(default=16, metadata={"help": "ES-MAML antithetic Gaussian directions."})
    es_sigma: float = field(default=0.01, metadata={"help": "ES-MAML smoothing radius σ."})
    exact_newton_steps: int = field(default=30, metadata={"help": "Newton iterations of the exact solve."})
    inner_protocol: str = field(default="proximal", metadata={
        "help": "Inner problem: proximal (every method on f̂ + λ/2‖φ−θ‖²) or published (the methods "
                "published without a proximal term on f̂ alone, λ = 0; the others keep λ)."})
    cg_damping: tuple[float, float] | None = None
    in_place: bool = field(default=False, compare=False, repr=False)

    def imaml_damping(self) -> tuple[float, float]:
        """(ρ, τ) of iMAML's CG operator under this configuration (see ``cg_damping``)."""
        if self.cg_damping is not None:
            return self.cg_damping
        return PUBLISHED_IMAML_DAMPING if self.inner_protocol == "published" else (0.0, 0.0)

    def __post_init__(self) -> None:
        if self.inner_protocol not in PROTOCOLS:
            raise FobbenchError(
                f"--inner-protocol: unknown '{self.inner_protocol}' (choose from {', '.join(PROTOCOLS)})")
        if self.nu != AUTO and (isinstance(self.nu, str) or not math.isfinite(self.nu) or self.nu == 0):
            raise FobbenchError(f"--nu (ν) must be a non-zero finite number or 'auto' (got {self.nu})")
        if not isinstance(self.cg_steps, int) or self.cg_steps < 1:
            raise FobbenchError(f"--cg-steps must be an integer >= 1 (got {self.cg_steps})")
        if self.cg_damping is not None and not all(math.isfinite(d) and d >= 0 for d in self.cg_damping):
            raise FobbenchError(f"--cg-damping must be two numbers >= 0 (got {self.cg_damping})")
        if not isinstance(self.es_samples, int) or self.es_samples < 1:
            raise FobbenchError(f"--es-samples must be an integer >= 1 (got {self.es_samples})")
        if not (self.es_sigma > 0 and math.isfinite(self.es_sigma)):
            raise FobbenchError(f"--es-sigma must be > 0 (got {self.es_sigma})")


def hyperparameter_help(name: str) -> str:
    """The help text of the :class:`EstimatorConfig` field ``name`` (for CLI options and docs)."""
    return EstimatorConfig.__dataclass_fields__[name].metadata.get("help", "")


class FloorPasses(NamedTuple):
    """Plain fwd+bwd passes per task that a method cannot avoid (its speed floor).

    Attributes:
        both: gradients of f̂ + f (support and query losses summed, one backward).
        support: gradients of the support loss f̂ alone.
        query: gradients of the query loss f alone.
    """

    both: int
    support: int
    query: int


FloorFn = Callable[[EstimatorConfig], FloorPasses]
"""``floor(config) -> FloorPasses``: the method's speed floor under its settings."""


def solve_and_query(config: EstimatorConfig) -> FloorPasses:
    """The floor of one K-step support solve plus one query gradient (K + 1 passes)."""
    return FloorPasses(both=0, support=config.inner.steps, query=1)


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
        rank: position in tables, figures and default method lists (ascending; the paper's
            order for the built-in methods).
        floor: the plain fwd+bwd passes the method cannot avoid (``train``'s speed floor).
        hyperparameters: the :class:`EstimatorConfig` fields the method reads besides the
            inner solver (their help text is on the field).
        sweeps: a hyperparameter ``gradcheck`` runs the method once per value of (iMAML's
            ``cg_steps``); None: one run.
        theory_nu: exponent of the bias in ν with an exact inner solve (Prop. 2), or None.
            ``--nu auto`` balances a bias of this order against rounding
            (:func:`fobbench.estimators.nu_rule.auto_nu`).
        theory_delta: exponent of the error in the inner precision δ at the best ν
            (Corollary 1), or None.
        stencil: for a finite difference of perturbed proximal solutions, its
            (multiple of ν, coefficient) pairs: g = −λ/ν · Σ c·φ_{m·ν}. gradcheck's
            Corollary 1 model evaluates it on perturbed closed-form solutions; its largest
            |m| bounds ``--nu auto``'s choice (the farthest perturbation stays ≤ 0.5).
        fit_nus: (low, high) ν span on which the bias term dominates on gradcheck's default
            quadratic (the ν-rate fit's default range), or None for gradcheck's own default.
        proximal: True when the method's estimator needs the proximal term (λ > 0) in every
            protocol (FO-B-MAML, iMAML, exact); False when its published inner problem is
            plain steps on f̂ (λ = 0 under the ``published`` protocol).
    """

    name: str
    fn: PerTaskFn
    summary: str
    order: str
    vmappable: bool = True
    needs_noise: bool = False
    accumulate_fn: AccumulateFn | None = None
    rank: float = 1000.0
    floor: FloorFn = solve_and_query
    hyperparameters: tuple[str, ...] = ()
    sweeps: str | None = None
    theory_nu: float | None = None
    theory_delta: float | None = None
    stencil: tuple[tuple[float, float], ...] | None = None
    fit_nus: tuple[float, float] | None = None
    proximal: bool = True

    @property
    def uses_nu(self) -> bool:
        """True when the estimate depends on ν (gradcheck's ν sweep and rate fits use these)."""
        return "nu" in self.hyperparameters

    @property
    def is_exact(self) -> bool:
        """True for ground-truth methods (order ``exact``): they solve the inner problem to
        machine precision, so the inner steps K do not apply, and need a dense Hessian."""
        return self.order == "exact"

    @property
    def trainable(self) -> bool:
        """False for exact methods, which need a dense Hessian (no network training)."""
        return not self.is_exact

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


def register(name: str, summary: str, order: str, **facts: object) -> Callable[[PerTaskFn], PerTaskFn]:
    """Decorator adding a per-task function to the registry under ``name``.

    ``facts`` are the other :class:`Estimator` fields (rank, floor, hyperparameters, theory
    slopes, ...): everything a consumer needs is declared here, next to the method.
    """
    reserved = {"name", "fn", "summary", "order", "accumulate_fn"}
    unknown = (set(facts) - set(Estimator.__dataclass_fields__)) | (reserved & set(facts))
    if unknown:
        raise TypeError(f"register({name!r}): unknown facts {sorted(unknown)}")
    for field_name in facts.get("hyperparameters", ()):  # type: ignore[union-attr]
        if field_name not in EstimatorConfig.__dataclass_fields__:
            raise TypeError(f"register({name!r}): {field_name!r} is not an EstimatorConfig field")

    def wrap(fn: PerTaskFn) -> PerTaskFn:
        REGISTRY[name] = Estimator(name, fn, summary, order, **facts)  # type: ignore[arg-type]
        return fn

    return wrap


def names(trainable: bool = False, uses_nu: bool = False) -> list[str]:
    """Registered method names in display order (:attr:`Estimator.rank`, then name).

    Args:
        trainable: only methods that can train a network (not ``exact``-order ones).
        uses_nu: only methods whose estimate depends on ν.
    """
    chosen = [e for e in REGISTRY.values()
              if (not trainable or e.trainable) and (not uses_nu or e.uses_nu)]
    return [e.name for e in sorted(chosen, key=lambda e: (e.rank, e.name))]


def rank_of(name: str) -> tuple[float, str]:
    """Sort key of a method name in display order; unknown names go last, alphabetically."""
    estimator = REGISTRY.get(name)
    return (estimator.rank if estimator is not None else math.inf, name)


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


def parse_methods(text: str, option: str = "--methods", allow_exact: bool = True) -> list[str]:
    """Split a comma-separated method list and check every name against the registry.

    ``all`` is every registered method in display order (trainable ones only when
    ``allow_exact`` is False). Empty lists and empty items (a stray comma) are errors.
    """
    allowed = names(trainable=not allow_exact)
    if text.strip() == "all":
        return allowed
    if not text.strip():
        raise FobbenchError(f"{option}: no method given")
    chosen = [part.strip() for part in text.split(",")]
    if not all(chosen):
        raise FobbenchError(f"{option}: '{text}' has an empty item (a stray comma?)")
    for name in chosen:
        if name in REGISTRY and name not in allowed:
            raise FobbenchError(
                f"{option}: {name} is gradcheck-only (the closed-form meta-gradient of the quadratic "
                "tasks); choose an estimator"
            )
        if name not in allowed:
            raise FobbenchError(f"{option}: unknown method '{name}' (choose from {', '.join(allowed)})")
    return chosen
