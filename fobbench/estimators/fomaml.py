"""FO-MAML: the query gradient at the adapted parameters, eq. (3)."""

from __future__ import annotations

from fobbench.estimators.base import EstimatorConfig, register
from fobbench.inner import loss_gradient, solve
from fobbench.params import Data, LossFn, Params


@register("fomaml")
def fomaml(theta: Params, loss: LossFn, support: Data, query: Data, config: EstimatorConfig,
           noise: Params | None = None) -> Params:
    """∇f(φ_K): ignores the Jacobian of the inner solver."""
    phi = solve(theta, loss, support, query, 0.0, config.inner, in_place=config.in_place)
    return loss_gradient(loss, phi, query, in_place=config.in_place)
