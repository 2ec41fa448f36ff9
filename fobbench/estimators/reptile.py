"""Reptile: the average inner-trajectory direction, eq. (4)."""

from __future__ import annotations

from fobbench.estimators.base import EstimatorConfig, FloorPasses, register
from fobbench.inner import solve
from fobbench.params import Data, LossFn, Params


@register("reptile", "(θ − φ_K)/(Kα), eq. (4)", order="first", rank=30,
          floor=lambda c: FloorPasses(both=0, support=c.inner.steps, query=0))
def reptile(theta: Params, loss: LossFn, support: Data, query: Data, config: EstimatorConfig,
            noise: Params | None = None) -> Params:
    """(θ − φ_K)/(Kα)."""
    phi = solve(theta, loss, support, query, 0.0, config.inner, in_place=config.in_place)
    factor = 1.0 / (config.inner.steps * config.inner.lr)
    return {n: factor * (theta[n] - phi[n]) for n in theta}
