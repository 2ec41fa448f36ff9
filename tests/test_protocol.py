"""Inner-objective protocols: `published` runs MAML, FO-MAML, Reptile on f̂ alone."""

from __future__ import annotations

import pytest
import torch

from fobbench.errors import FobbenchError
from fobbench.estimators import REGISTRY, EstimatorConfig, meta_gradient, method_config
from fobbench.inner import InnerConfig


def _quadratic(d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = q @ q.T / d + 0.5 * torch.eye(d, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)

    def loss(params, data):
        a_, b_ = data
        return 0.5 * params["x"] @ a_ @ params["x"] + params["x"] @ b_

    theta = {"x": torch.randn(d, generator=g, dtype=torch.float64)}
    return loss, theta, a, b


@pytest.mark.parametrize("method", ["maml", "fomaml", "reptile"])
def test_published_protocol_adapts_plain_methods_on_the_train_loss_alone(method: str) -> None:
    """Under `published`, K GD steps on f̂ alone: φ_K = θ − Σ α∇f̂ in closed form for a
    quadratic, so FO-MAML is A φ_K + b and Reptile (θ − φ_K)/(Kα); MAML equals the proximal
    protocol's MAML at λ = 0."""
    loss, theta, a, b = _quadratic()
    k, lr = 3, 0.1
    config = EstimatorConfig(inner=InnerConfig(steps=k, lr=lr, lam=2.0), inner_protocol="published")
    got = meta_gradient(method, theta, loss, (a[None], b[None]), (a[None], b[None]), config).grad["x"]
    phi, jac = theta["x"].clone(), torch.eye(4, dtype=torch.float64)
    for _ in range(k):
        phi = phi - lr * (a @ phi + b)
        jac = (torch.eye(4, dtype=torch.float64) - lr * a) @ jac
    expected = {"fomaml": a @ phi + b, "reptile": (theta["x"] - phi) / (k * lr),
                "maml": jac.T @ (a @ phi + b)}[method]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    proximal = meta_gradient(method, theta, loss, (a[None], b[None]), (a[None], b[None]),
                             EstimatorConfig(inner=InnerConfig(steps=k, lr=lr, lam=2.0))).grad["x"]
    assert float((proximal - got).norm()) > 1e-3  # the proximal protocol is a different problem


@pytest.mark.parametrize("method", ["fobmaml-sym", "fobmaml-forward", "imaml"])
def test_methods_that_need_lambda_keep_it_and_refuse_zero(method: str) -> None:
    estimator = REGISTRY[method]
    config = EstimatorConfig(inner=InnerConfig(lam=2.0), inner_protocol="published")
    assert method_config(estimator, config).inner.lam == 2.0
    with pytest.raises(FobbenchError, match="--lam: lambda must be > 0") as error:
        method_config(estimator, EstimatorConfig(inner=InnerConfig(lam=0.0)))
    assert "\n" not in str(error.value)


def test_unknown_protocol_is_a_one_line_error() -> None:
    with pytest.raises(FobbenchError, match="--inner-protocol"):
        EstimatorConfig(inner_protocol="plain")
