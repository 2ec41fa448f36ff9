"""MAML: backpropagation through the K unrolled inner steps (second order).

Two computations of the same meta-gradient:

- per task under torch.func (vmap batching): ``torch.func.grad`` of the query loss through the
  pure solver; composable with ``vmap`` over tasks;
- one task at a time outside any transform (loop batching, ``config.in_place``): plain autograd,
  ``torch.autograd.grad(create_graph=True)`` at each of the K steps and one backward at the
  end. No functorch wrappers per step, and the final backward frees each step's activations as
  it consumes them (what higher, torchopt and learn2learn do), so it is faster and lighter
  than nesting ``torch.func.grad``. Used for the ``gd`` inner optimizer (the default); the
  others keep the functional path.
"""

from __future__ import annotations

import torch

from fobbench.estimators.base import EstimatorConfig, register
from fobbench.inner import solve
from fobbench.params import Data, LossFn, Params


def unrolled_autograd(theta: Params, loss: LossFn, support: Data, query: Data,
                      config: EstimatorConfig) -> Params:
    """MAML's meta-gradient of one task with plain autograd (gd inner steps).

    φ₀ = θ; φ_{k+1} = φ_k − α(∇f̂(φ_k) + λ(φ_k − θ)), each ∇f̂ taken with
    ``create_graph=True``; then one ``autograd.grad`` of f(φ_K) with respect to θ.
    """
    inner = config.inner
    leaves = {n: p.detach().requires_grad_() for n, p in theta.items()}
    names = list(leaves)
    with torch.enable_grad():
        phi = dict(leaves)
        for _ in range(inner.steps):
            grads = torch.autograd.grad(loss(phi, support), [phi[n] for n in names], create_graph=True,
                                        allow_unused=True)
            phi = {
                n: phi[n] - inner.lr * ((g if g is not None else 0.0) + inner.lam * (phi[n] - leaves[n]))
                for n, g in zip(names, grads, strict=True)
            }
        outer = torch.autograd.grad(loss(phi, query), [leaves[n] for n in names], allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(leaves[n]))
            for n, g in zip(names, outer, strict=True)}


@register("maml")
def maml(theta: Params, loss: LossFn, support: Data, query: Data, config: EstimatorConfig,
         noise: Params | None = None) -> Params:
    """∇_θ f(φ_K(θ)) with φ_K the inner solver's output, differentiated exactly."""
    if config.in_place and config.inner.optimizer == "gd":
        return unrolled_autograd(theta, loss, support, query, config)

    def outer(th: Params) -> torch.Tensor:
        return loss(solve(th, loss, support, query, 0.0, config.inner), query)

    return torch.func.grad(outer)(theta)
