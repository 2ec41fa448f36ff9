"""What each meta-gradient method *is*, without torch: the declarative half of the registry.

The command line needs method facts before it may import torch: ``--help`` lists the methods
and the hyperparameters, and option checks (``--methods exact`` is gradcheck-only, a
proximal method needs λ > 0) must answer in a fraction of a second. So the facts of every
built-in method are declared here, in :data:`METHODS`, and nowhere else; the torch
implementation in :mod:`fobbench.estimators` registers against its declaration by name
(``@register("fobmaml-sym")``) and the registry entry (:class:`fobbench.estimators.Estimator`)
is these facts plus the functions. A method declared here without an implementation, or
implemented without a declaration, fails ``tests/test_registry.py``.

A method defined at run time (a test, a user's script) may still pass its facts to
``register(name, summary, order, **facts)``: they are declared here the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from fobbench.errors import FobbenchError

BATCHING = ("vmap", "loop")
"""How tasks are batched: ``vmap`` (all tasks in one batched call) or ``loop`` (one at a time)."""

COMPILED = "compiled"
"""The vmap batching under ``torch.compile`` (``--compile``; :mod:`fobbench.estimators.compiled`)."""

ALL_BATCHINGS = (*BATCHING, COMPILED)
"""Every batching :func:`fobbench.estimators.meta_gradient` takes."""

PROTOCOLS = ("proximal", "published")
"""Inner-objective protocols of a run (DESIGN.md, "One inner solver for all"):

- ``proximal``: every method adapts on f̂ + λ/2‖φ − θ‖², so differences between methods
  come from the estimator alone (B-MAML's set-up).
- ``published``: each method adapts on the inner problem it was published with. MAML,
  FO-MAML, Reptile and ES-MAML take plain gradient steps on f̂ (λ = 0; Finn et al. 2017,
  Nichol et al. 2018, Song et al. 2020); FO-B-MAML and iMAML keep λ, which their
  estimators need (registry flag ``proximal``).
"""

AUTO = "auto"
"""The ``--nu`` value that asks :func:`fobbench.estimators.nu_rule.auto_nu` to choose ν."""

HYPERPARAMETER_HELP: dict[str, str] = {
    "nu": "ν, the FO-B-MAML perturbation (≠ 0).",
    "cg_steps": "iMAML conjugate-gradient steps.",
    "es_samples": "ES-MAML antithetic Gaussian directions.",
    "es_sigma": "ES-MAML smoothing radius σ.",
    "exact_newton_steps": "Newton iterations of the exact solve.",
    "inner_protocol": "Inner problem: proximal (every method on f̂ + λ/2‖φ−θ‖²) or published (the methods "
                      "published without a proximal term on f̂ alone, λ = 0; the others keep λ).",
}
"""Help text of the :class:`~fobbench.estimators.EstimatorConfig` fields that have one (the
dataclass reads its field metadata from here)."""


def hyperparameter_help(name: str) -> str:
    """The help text of the estimator setting ``name`` ('' when it has none)."""
    return HYPERPARAMETER_HELP.get(name, "")


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


FloorFn = Callable[[Any], FloorPasses]
"""``floor(config) -> FloorPasses``: the method's speed floor under its EstimatorConfig."""


def solve_and_query(config: Any) -> FloorPasses:
    """The floor of one K-step support solve plus one query gradient (K + 1 passes)."""
    return FloorPasses(both=0, support=config.inner.steps, query=1)


@dataclass(frozen=True, kw_only=True)
class Method:
    """The facts of a meta-gradient method (everything but its torch functions).

    Attributes:
        name: registry key (``maml``, ``fobmaml-sym``, ...).
        summary: one line for help texts and tables.
        order: ``second`` (differentiates through the solver or uses Hessian products),
            ``first`` (gradients only), ``zeroth`` (function values only) or ``exact``.
        vmappable: False when the method has data-dependent control flow.
        needs_noise: True for ES-MAML: Gaussian directions are drawn outside the per-task
            function from a seeded generator, so vmap and loop see the same ones.
        rank: position in tables, figures and default method lists (ascending; the paper's
            order for the built-in methods).
        floor: the plain fwd+bwd passes the method cannot avoid (``train``'s speed floor).
        hyperparameters: the EstimatorConfig fields the method reads besides the inner solver
            (their help text is :data:`HYPERPARAMETER_HELP`).
        sweeps: a hyperparameter ``gradcheck`` runs the method once per value of (iMAML's
            ``cg_steps``); None: one run.
        theory_nu: exponent of the bias in ν with an exact inner solve (Prop. 2), or None.
            ``--nu auto`` balances a bias of this order against rounding.
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
    summary: str
    order: str
    vmappable: bool = True
    needs_noise: bool = False
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

    def facts(self) -> dict[str, Any]:
        """Every declared field by name (what an implementation is built from)."""
        return {f.name: getattr(self, f.name) for f in fields(Method)}


METHODS: dict[str, Method] = {}
"""Method name -> its declared facts: the built-ins below, plus any declared at run time."""

FACTS = frozenset(f.name for f in fields(Method)) - {"name", "summary", "order"}
"""The optional facts a declaration may give."""


def declare(name: str, summary: str, order: str, **facts: Any) -> Method:
    """Add the method ``name`` with its facts to :data:`METHODS` (its implementation registers later).

    Raises:
        TypeError: an unknown fact, or ``name`` already declared.
    """
    unknown = set(facts) - FACTS
    if unknown:
        raise TypeError(f"declare({name!r}): unknown facts {sorted(unknown)}")
    if name in METHODS:
        raise TypeError(f"declare({name!r}): already declared (fobbench.methods holds each method once)")
    METHODS[name] = Method(name=name, summary=summary, order=order, **facts)
    return METHODS[name]


def forget(name: str) -> None:
    """Remove a method declared at run time (tests clean up with it)."""
    METHODS.pop(name, None)


def names(trainable: bool = False, uses_nu: bool = False) -> list[str]:
    """Declared method names in display order (:attr:`Method.rank`, then name).

    Args:
        trainable: only methods that can train a network (not ``exact``-order ones).
        uses_nu: only methods whose estimate depends on ν.
    """
    chosen = [m for m in METHODS.values() if (not trainable or m.trainable) and (not uses_nu or m.uses_nu)]
    return [m.name for m in sorted(chosen, key=lambda m: (m.rank, m.name))]


def check_compilable(method: Method, nu: object) -> None:
    """Raise a one-line :class:`FobbenchError` when ``method`` (at ``nu``) cannot run compiled:
    it must run under vmap, and ν must be fixed (``dynamic=False`` compiles again for every new
    ν, and ``--nu auto`` picks a new one every outer step)."""
    if not method.vmappable:
        raise FobbenchError(f"--compile: {method.name} does not run under vmap, so it cannot be compiled")
    if method.uses_nu and isinstance(nu, str) and nu.strip().lower() == AUTO:
        raise FobbenchError("--compile: not with --nu auto (ν changes every outer step, and each new ν "
                            "would compile again); give a fixed --nu")


def rank_of(name: str) -> tuple[float, str]:
    """Sort key of a method name in display order; unknown names go last, alphabetically."""
    method = METHODS.get(name)
    return (method.rank if method is not None else math.inf, name)


def parse_methods(text: str, option: str = "--methods", allow_exact: bool = True) -> list[str]:
    """Split a comma-separated method list and check every name against :data:`METHODS`.

    ``all`` is every method in display order (trainable ones only when ``allow_exact`` is
    False). Empty lists and empty items (a stray comma) are errors.
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
        if name in METHODS and name not in allowed:
            raise FobbenchError(
                f"{option}: {name} is gradcheck-only (the closed-form meta-gradient of the quadratic "
                "tasks); choose an estimator"
            )
        if name not in allowed:
            raise FobbenchError(f"{option}: unknown method '{name}' (choose from {', '.join(allowed)})")
    return chosen


# The built-in methods. Their implementations: fobbench/estimators/<module>.py, one each.
declare("maml", "backprop through the K unrolled inner steps", order="second", rank=10, proximal=False)
declare("fomaml", "∇f(φ_K), eq. (3)", order="first", rank=20, proximal=False)
declare("reptile", "(θ − φ_K)/(Kα), eq. (4)", order="first", rank=30, proximal=False,
        floor=lambda c: FloorPasses(both=0, support=c.inner.steps, query=0))
declare("imaml", "CG on ((1+ρ)I + ∇²f̂(φ_K)/(λ+τ)) v = ∇f(φ_K)", order="second", rank=40,
        hyperparameters=("cg_steps", "cg_damping"), sweeps="cg_steps")
declare("esmaml", "Gaussian smoothing of F, antithetic (§3.4)", order="zeroth", needs_noise=True,
        rank=50, hyperparameters=("es_samples", "es_sigma"), proximal=False,
        floor=lambda c: FloorPasses(both=0, support=2 * c.es_samples * c.inner.steps, query=0))
declare("fobmaml-forward", "−λ(φ_ν − φ_0)/ν, eq. (12)", order="first", rank=60,
        hyperparameters=("nu",), theory_nu=1.0, theory_delta=0.5, stencil=((1.0, 1.0), (0.0, -1.0)),
        floor=lambda c: FloorPasses(both=c.inner.steps, support=c.inner.steps - 1, query=0))
declare("fobmaml-sym", "−λ(φ_ν − φ_−ν)/(2ν), eq. (13)", order="first", rank=70,
        hyperparameters=("nu",), theory_nu=2.0, theory_delta=2.0 / 3.0,
        stencil=((1.0, 0.5), (-1.0, -0.5)),
        floor=lambda c: FloorPasses(both=2 * c.inner.steps - 1, support=0, query=0))
declare("fobmaml-richardson", "(4·g_sym(ν) − g_sym(2ν))/3, Richardson-extrapolated eq. (13)", order="first",
        rank=75, hyperparameters=("nu",), theory_nu=4.0, theory_delta=0.8,
        stencil=((1.0, 2.0 / 3.0), (-1.0, -2.0 / 3.0), (2.0, -1.0 / 12.0), (-2.0, 1.0 / 12.0)),
        fit_nus=(1e-2, 1.5e-1), proximal=True,
        floor=lambda c: FloorPasses(both=4 * c.inner.steps, support=0, query=0))
declare("exact", "dense-Hessian B-MAML meta-gradient, eq. (7)", order="exact", vmappable=False,
        rank=100, hyperparameters=("exact_newton_steps",))

BUILTIN = frozenset(METHODS)
"""The methods fobbench ships (each has a module in :mod:`fobbench.estimators`)."""

__all__ = [
    "AUTO", "BATCHING", "BUILTIN", "FACTS", "HYPERPARAMETER_HELP", "METHODS", "PROTOCOLS", "FloorPasses",
    "Method", "declare", "forget", "hyperparameter_help", "names", "parse_methods", "rank_of",
    "solve_and_query",
]
