"""The estimator protocol, its settings and the one registry of methods."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from fobbench.errors import FobbenchError
import torch

from fobbench.estimators.nu_rule import AUTO, auto_nu
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
    """

    inner: InnerConfig = field(default_factory=InnerConfig)
    nu: float | str = 0.1
    cg_steps: int = 5
    es_samples: int = 16
    es_sigma: float = 0.01
    exact_newton_steps: int = 30
    inner_protocol: str = "proximal"
    cg_damping: tuple[float, float] | None = None

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
            raise FobbenchError(f"--nu must be a non-zero finite number or 'auto' (got {self.nu})")
        if not isinstance(self.cg_steps, int) or self.cg_steps < 1:
            raise FobbenchError(f"cg-steps must be an integer >= 1 (got {self.cg_steps})")
        if self.cg_damping is not None and not all(math.isfinite(d) and d >= 0 for d in self.cg_damping):
            raise FobbenchError(f"--cg-damping must be two numbers >= 0 (got {self.cg_damping})")
        if not isinstance(self.es_samples, int) or self.es_samples < 1:
            raise FobbenchError(f"es-samples must be an integer >= 1 (got {self.es_samples})")
        if not (self.es_sigma > 0 and math.isfinite(self.es_sigma)):
            raise FobbenchError(f"es-sigma must be > 0 (got {self.es_sigma})")


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
        nu_scheme: ``sym`` or ``forward`` for a finite difference in ν (FO-B-MAML; picks the
            ``--nu auto`` rule), None for methods without ν.
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
    proximal: bool = True
    nu_scheme: str | None = None

    def nu(self, config: EstimatorConfig, dtype: torch.dtype) -> float | None:
        """The ν this method runs with for θ of ``dtype``: ``config.nu``, or the ``auto`` rule
        (:func:`fobbench.estimators.nu_rule.auto_nu`); None for methods without ν."""
        if self.nu_scheme is None:
            return None
        if config.nu == AUTO:
            return auto_nu(dtype, self.nu_scheme, config.inner.lam)
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


def register(name: str, summary: str, order: str, vmappable: bool = True, needs_noise: bool = False,
             proximal: bool = True, nu_scheme: str | None = None) -> Callable[[PerTaskFn], PerTaskFn]:
    """Decorator adding a per-task function to the registry under ``name``."""

    def wrap(fn: PerTaskFn) -> PerTaskFn:
        REGISTRY[name] = Estimator(name, fn, summary, order, vmappable, needs_noise, proximal=proximal,
                                   nu_scheme=nu_scheme)
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


def method_config(estimator: Estimator, config: EstimatorConfig) -> EstimatorConfig:
    """The settings ``estimator`` actually runs with under ``config.inner_protocol``.

    ``published``: a method with ``proximal=False`` adapts with λ = 0. A method that needs
    the proximal term refuses λ = 0 with a one-line error naming ``--lam``.
    """
    if estimator.proximal:
        if config.inner.lam <= 0:
            raise FobbenchError(f"--lam: lambda must be > 0 for {estimator.name} (its estimator needs the proximal term)")
        return config
    if config.inner_protocol == "published" and config.inner.lam != 0:
        return replace(config, inner=replace(config.inner, lam=0.0))
    return config


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
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise FobbenchError(f"{option}: no method given")
    for name in names:
        if name not in REGISTRY or (name == "exact" and not allow_exact):
            choices = [n for n in REGISTRY if allow_exact or n != "exact"]
            raise FobbenchError(f"{option}: unknown method '{name}' (choose from {', '.join(choices)})")
    return names
