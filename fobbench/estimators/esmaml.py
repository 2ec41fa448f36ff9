"""ES-MAML: Gaussian smoothing of F(θ) = f(φ_K(θ)) (paper §3.4, Song et al. 2020).

Antithetic estimator  g = 1/(2σS) Σ_s [F(θ + σu_s) − F(θ − σu_s)] u_s,  u_s ~ N(0, I),
which needs only function values (2S inner solves). The directions arrive as ``noise``
(leading axis S), drawn by the caller from a seeded generator.
"""

from __future__ import annotations

from fobbench.estimators.base import EstimatorConfig, register
from fobbench.inner import solve
from fobbench.params import Data, LossFn, Params, add


@register("esmaml")
def esmaml(theta: Params, loss: LossFn, support: Data, query: Data, config: EstimatorConfig,
           noise: Params | None = None) -> Params:
    """Zeroth-order estimate of ∇F from 2·es_samples inner solves."""
    if noise is None:
        raise ValueError("esmaml needs Gaussian directions (noise)")
    sigma = config.es_sigma
    samples = next(iter(noise.values())).shape[0]

    def outer(th: Params):
        return loss(solve(th, loss, support, query, 0.0, config.inner, in_place=config.in_place), query)

    estimate = {n: 0.0 * theta[n] for n in theta}
    for s in range(samples):
        direction = {n: noise[n][s] for n in theta}
        diff = outer(add(theta, direction, sigma)) - outer(add(theta, direction, -sigma))
        estimate = add(estimate, direction, diff / (2 * sigma * samples))
    return estimate
