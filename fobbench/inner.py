"""The one inner solver every method adapts with.

Under the ``proximal`` protocol all methods solve the same proximal inner problem (paper eq. 10)

    min_φ  v·f(φ) + f̂(φ) + λ/2 ‖φ − θ‖²

with K steps of the same optimizer from φ₀ = θ, where f̂ is the train (support) loss and
f the test (query) loss; v = 0 is the unperturbed problem (6). Differences between
methods therefore come from the estimator, not from the set-up. Under the ``published``
protocol MAML, FO-MAML, Reptile and ES-MAML solve it with λ = 0 (plain steps on f̂, as
their authors ran them; see :mod:`fobbench.estimators.base`). The solver is pure and
differentiable (MAML backpropagates through it) and vmappable over tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fobbench.params import Data, LossFn, Params, sq_norm, sub, zeros_like
from fobbench.validate import integer, nonnegative, one_of, positive

OPTIMIZERS = ("gd", "momentum", "adam")


@dataclass(frozen=True)
class InnerConfig:
    """Settings of the inner solver.

    Attributes:
        steps: K, the number of inner steps (default 5, the paper's MNIST-1D/Omniglot value).
        lr: α, the inner step size (default 0.1).
        lam: λ ≥ 0, the proximal strength (default 2.0, the paper's value). λ = 0 is plain
            gradient steps on f̂, the inner problem MAML, FO-MAML and Reptile were published
            with; methods that need the proximal term (FO-B-MAML, iMAML) refuse it
            (:func:`fobbench.estimators.base.method_config`).
        optimizer: ``gd`` (default), ``momentum`` (heavy ball) or ``adam``.
        momentum: β for ``momentum`` (default 0.9).
        betas: (β₁, β₂) for ``adam`` (default (0.9, 0.999)).
        eps: ε for ``adam`` (default 1e-8).
    """

    steps: int = 5
    lr: float = 0.1
    lam: float = 2.0
    optimizer: str = "gd"
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        integer(self.steps, "--inner-steps (K)")
        positive(self.lr, "--inner-lr (inner step size)")
        nonnegative(self.lam, "--lam (λ)")
        one_of(self.optimizer, OPTIMIZERS, "--inner-optimizer", "inner optimizer")


def proximal_objective(
    phi: Params, theta: Params, loss: LossFn, support: Data, query: Data, v: float, lam: float
) -> Tensor:
    """v·f(φ) + f̂(φ) + λ/2‖φ − θ‖² (the query term is skipped when v == 0)."""
    value = loss(phi, support) + 0.5 * lam * sq_norm(sub(phi, theta))
    if v != 0.0:
        value = value + v * loss(phi, query)
    return value


def _objective_grad(
    phi: Params, delta: Params, loss: LossFn, support: Data, query: Data, v: float, lam: float
) -> Params:
    """∇_φ of :func:`proximal_objective` at φ = θ + Δ, functionally (vmappable, differentiable).

    ``delta`` is Δ = φ − θ, held apart from φ so that the proximal term λΔ keeps Δ's
    precision (see :func:`solve_displacement`).

    The two data terms are differentiated one after the other, so only one data set's
    activations are alive at a time: a perturbed solve (FO-B-MAML) then peaks like an
    unperturbed one (FO-MAML) instead of holding support and query activations together.
    """
    grad = torch.func.grad(loss)(phi, support)
    if v != 0.0:
        query_grad = torch.func.grad(loss)(phi, query)
        grad = {n: grad[n] + v * query_grad[n] for n in grad}
    return {n: grad[n] + lam * delta[n] for n in grad}


def _objective_grad_in_place(
    phi: Params, delta: Params, loss: LossFn, support: Data, query: Data, v: float, lam: float
) -> Params:
    """∇_φ of :func:`proximal_objective` at φ = θ + Δ in one gradient buffer per parameter.

    ``phi`` holds leaf tensors that require grad. Each data term is backpropagated on its
    own and autograd adds the query gradient into the support gradient (``.grad``) tensor by
    tensor as it is produced, so a perturbed step holds one gradient, not two, beside one
    data set's activations. The buffers are taken off the leaves and returned.
    """
    leaves = list(phi.values())
    with torch.enable_grad():
        torch.autograd.backward(loss(phi, support), inputs=leaves)
        if v != 0.0:
            torch.autograd.backward(v * loss(phi, query), inputs=leaves)
    grad: Params = {}
    with torch.no_grad():
        for n, p in phi.items():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            p.grad = None
            grad[n] = g.add_(delta[n], alpha=lam)
    return grad


OptimizerState = dict[str, tuple[Tensor, ...]]
"""Per-parameter optimizer buffers: () for gd, (velocity,) for momentum, (m, s) for adam."""


def _initial_state(theta: Params, config: InnerConfig) -> OptimizerState:
    buffers = {"gd": 0, "momentum": 1, "adam": 2}[config.optimizer]
    return {n: tuple(torch.zeros_like(p) for _ in range(buffers)) for n, p in theta.items()}


def safe_sqrt(x: Tensor) -> Tensor:
    """√x for x ≥ 0 with a finite derivative at 0.

    The value is that of ``x.sqrt()``; the derivative at x = 0 is taken as 0 instead of
    +inf. Adam's second moment s is exactly 0 where a parameter's inner gradient is exactly
    0 (e.g. conv biases followed by BatchNorm); there ds = 2g·dg = 0 as well, and the plain
    sqrt's inf·0 made MAML's meta-gradient NaN.
    """
    positive = x > 0
    root = torch.where(positive, x, torch.ones_like(x)).sqrt()
    return torch.where(positive, root, torch.zeros_like(x))


def _update(
    p: Tensor, grad: Tensor, state: tuple[Tensor, ...], step: int, config: InnerConfig
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One optimizer step of one tensor (step counts from 1): its new value and buffers."""
    lr = config.lr
    if config.optimizer == "gd":
        return p - lr * grad, ()
    if config.optimizer == "momentum":
        velocity = config.momentum * state[0] + grad
        return p - lr * velocity, (velocity,)
    beta1, beta2 = config.betas
    m = beta1 * state[0] + (1 - beta1) * grad
    s = beta2 * state[1] + (1 - beta2) * grad**2
    c1, c2 = 1 - beta1**step, 1 - beta2**step
    return p - lr * (m / c1) / (safe_sqrt(s / c2) + config.eps), (m, s)


def _update_in_place(p: Tensor, grad: Tensor, state: tuple[Tensor, ...], step: int,
                     config: InnerConfig) -> None:
    """:func:`_update` written back into ``p`` and its buffers; temporaries die on return."""
    value, buffers = _update(p, grad, state, step, config)
    p.copy_(value)
    for old, new in zip(state, buffers, strict=False):
        old.copy_(new)


def loss_gradient(loss: LossFn, params: Params, data: Data, *, in_place: bool = False) -> Params:
    """∇ of ``loss(params, data)`` with respect to ``params``.

    Default: ``torch.func.grad`` (composable with vmap/grad; it keeps every saved activation
    until the backward ends, since it always builds a differentiable graph). ``in_place=True``
    (the caller runs one task at a time, outside any torch.func transform, on detached
    ``params``): plain autograd, which frees each activation as soon as the backward has used
    it, so a first-order method's query gradient peaks like one training step.
    """
    if not in_place:
        return torch.func.grad(loss)(params, data)
    leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
    with torch.enable_grad():
        grads = torch.autograd.grad(loss(leaves, data), list(leaves.values()), allow_unused=True)
    return {n: g if g is not None else torch.zeros_like(leaves[n])
            for n, g in zip(leaves, grads, strict=False)}


FirstGradients = tuple[Params, Params]
"""(∇f̂(θ), ∇f(θ)): the support and query gradients at θ, where every solve's first step is
evaluated (φ₀ = θ for every perturbation v), computed once by :func:`first_gradients`."""


def first_gradients(theta: Params, loss: LossFn, support: Data, query: Data) -> FirstGradients:
    """∇f̂(θ) and ∇f(θ), functionally: the first step of every perturbed solve from θ.

    Why: FO-B-MAML solves the same proximal problem at several perturbations v, all from
    φ₀ = θ; their first steps need only ∇f̂(θ) + v·∇f(θ), so two solves share one support and
    one query gradient (2K − 1 gradient evaluations of f̂ + f instead of 2K).
    """
    return torch.func.grad(loss)(theta, support), torch.func.grad(loss)(theta, query)


def _solve_functional(
    theta: Params, loss: LossFn, support: Data, query: Data, v: float, config: InnerConfig,
    first: FirstGradients | None = None,
) -> Params:
    delta, state = zeros_like(theta), _initial_state(theta, config)
    for step in range(1, config.steps + 1):
        if step == 1 and first is not None:
            # The first step at Δ₀ = 0 from the shared gradients, by the same operations as
            # _objective_grad (so the iterates are the unshared ones bit for bit).
            support_grad, query_grad = first
            grad = support_grad if v == 0.0 else {n: support_grad[n] + v * query_grad[n] for n in theta}
            grad = {n: grad[n] + config.lam * delta[n] for n in grad}
        else:
            phi = {n: theta[n] + delta[n] for n in theta}
            grad = _objective_grad(phi, delta, loss, support, query, v, config.lam)
        updated = {n: _update(delta[n], grad[n], state[n], step, config) for n in delta}
        delta = {n: value for n, (value, _) in updated.items()}
        state = {n: buffers for n, (_, buffers) in updated.items()}
    return delta


def _solve_in_place(
    theta: Params, loss: LossFn, support: Data, query: Data, v: float, config: InnerConfig
) -> Params:
    delta = {n: torch.zeros_like(p) for n, p in theta.items()}
    phi = {n: p.detach().clone().requires_grad_() for n, p in theta.items()}
    state = _initial_state(theta, config)
    for step in range(1, config.steps + 1):
        grad = _objective_grad_in_place(phi, delta, loss, support, query, v, config.lam)
        with torch.no_grad():
            for n, p in phi.items():
                _update_in_place(delta[n], grad[n], state[n], step, config)
                torch.add(theta[n], delta[n], out=p)
        del grad  # freed before the next step's backward allocates a new one
    return delta


def solve_displacement(
    theta: Params, loss: LossFn, support: Data, query: Data, v: float, config: InnerConfig,
    *, in_place: bool = False, first: FirstGradients | None = None,
) -> Params:
    """K optimizer steps on the proximal objective from Δ₀ = 0; returns Δ_K = φ_K − θ.

    The iterates are the displacement Δ = φ − θ and the model is evaluated at θ + Δ, so Δ
    is stored to its own relative precision (eps·‖Δ‖) instead of θ's (eps·‖θ‖): the
    digits a finite difference of two solutions needs (FO-B-MAML's Δ₊ − Δ₋, ~ν·‖∇f‖/λ)
    survive in float32. The steps are those of ``solve`` (every optimizer here is
    shift-invariant: a step depends on the gradient only), so θ + Δ_K is φ_K up to rounding.

    Default: pure and differentiable in θ, so it composes with torch.func transforms (MAML
    differentiates through it, vmap batches it over tasks) and with autograd. ``in_place=True``
    (chosen by the batching code for a first-order method's solve, one task at a time,
    outside any transform): the same steps run in place on detached tensors: Δ, the
    evaluation point θ + Δ (a leaf that collects the gradient), one gradient buffer and the
    optimizer state; both paths give the same iterates up to rounding.

    ``first``: (∇f̂(θ), ∇f(θ)) from :func:`first_gradients`, shared by several solves from
    the same θ; the first step takes them instead of evaluating the losses (functional path
    only; the in-place path, which holds one gradient at a time, ignores it).
    """
    if not in_place:
        return _solve_functional(theta, loss, support, query, v, config, first)
    return _solve_in_place(theta, loss, support, query, v, config)


def solve(
    theta: Params, loss: LossFn, support: Data, query: Data, v: float, config: InnerConfig,
    *, in_place: bool = False,
) -> Params:
    """K optimizer steps on the proximal objective from φ₀ = θ; returns φ_K = θ + Δ_K.

    See :func:`solve_displacement` (the iterates are Δ = φ − θ; ``in_place`` as there);
    differentiable in θ the same way when not in place, so MAML backpropagates through it.
    """
    delta = solve_displacement(theta, loss, support, query, v, config, in_place=in_place)
    return {n: theta[n] + delta[n] for n in theta}
