"""MAML: backpropagation through the K unrolled inner steps (second order)."""

from __future__ import annotations

import torch

from fobbench.estimators.base import EstimatorConfig, register
from fobbench.inner import solve
from fobbench.params import Data, LossFn, Params


@register("maml", "backprop through the K unrolled inner steps", order="second", rank=10,
          proximal=False)
def maml(theta: Params, loss: LossFn, support: Data, query: Data, config: EstimatorConfig,
         noise: Params | None = None) -> Params:
    """∇_θ f(φ_K(θ)) with φ_K the inner solver's output, differentiated exactly."""

    def outer(th: Params) -> torch.Tensor:
        return loss(solve(th, loss, support, query, 0.0, config.inner), query)

    return torch.func.grad(outer)(theta)
