"""The true B-MAML meta-gradient, eq. (7), for models small enough for a dense Hessian.

The inner problem (6) is solved to machine precision by Newton's method on the dense
Hessian of f̂ + λ/2‖φ − θ‖², then (I + ∇²f̂(φ*)/λ) g = ∇f(φ*) is solved directly. Use
float64 parameters and data for ground truth. Not vmappable (it stops on convergence).
"""

from __future__ import annotations

import torch

from fobbench.errors import FobbenchError
from fobbench.estimators.base import EstimatorConfig, register
from fobbench.params import Data, LossFn, Params, flatten, unflatten


@register("exact")
def exact(theta: Params, loss: LossFn, support: Data, query: Data, config: EstimatorConfig,
          noise: Params | None = None) -> Params:
    """∇F(θ) = (I + ∇²f̂(φ*)/λ)⁻¹ ∇f(φ*), φ* = argmin f̂(φ) + λ/2‖φ − θ‖²."""
    lam = config.inner.lam
    theta_flat = flatten(theta)

    def train(vector: torch.Tensor) -> torch.Tensor:
        return loss(unflatten(vector, theta), support)

    def test(vector: torch.Tensor) -> torch.Tensor:
        return loss(unflatten(vector, theta), query)

    eye = torch.eye(theta_flat.numel(), dtype=theta_flat.dtype, device=theta_flat.device)
    phi = theta_flat.clone()
    tolerance = 1e3 * torch.finfo(theta_flat.dtype).eps
    for _ in range(config.exact_newton_steps):
        gradient = torch.func.grad(train)(phi) + lam * (phi - theta_flat)
        if gradient.norm() <= tolerance * max(1.0, float(theta_flat.norm())):
            break
        hessian = torch.func.hessian(train)(phi) + lam * eye
        phi = phi - torch.linalg.solve(hessian, gradient)
    else:
        raise FobbenchError(
            f"exact: Newton did not converge in {config.exact_newton_steps} steps "
            "(is λ large enough for the inner problem to be strongly convex?)"
        )
    hessian = torch.func.hessian(train)(phi)
    rhs = torch.func.grad(test)(phi)
    meta_grad = torch.linalg.solve(eye + hessian / lam, rhs)
    return unflatten(meta_grad, theta)
