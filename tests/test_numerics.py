"""Numerics: float32 FO-B-MAML against a float64 implicit truth, MAML through inner Adam at
zero gradients, BatchNorm that would mutate the model, non-finite training stops."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from implicit_truth import implicit_truth
from torch import nn

from fobbench.errors import FobbenchError
from fobbench.estimators import REGISTRY, EstimatorConfig, meta_gradient, register, unregister
from fobbench.inner import InnerConfig, safe_sqrt, solve
from fobbench.models.conv1d import Conv1D
from fobbench.params import classification_loss, relative_error


def _mlp_task(seed: int = 0):
    """A tanh MLP (8→32→32→3, ‖θ‖ ≈ 5) in float64 with 15 support and 30 query examples."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 3)).double()
    g = torch.Generator().manual_seed(seed)
    support = (torch.randn(15, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (15,), generator=g))
    query = (torch.randn(30, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (30,), generator=g))
    return model, support, query


def _sym_error_float32(lam: float, lr: float, nu: float, steps: int = 200) -> tuple[float, float]:
    """(relative error of float32 FO-B-MAML-sym, that of the same iteration run on φ at θ's
    scale, as fobbench did before 0.2) against the float64 implicit truth."""
    model, support, query = _mlp_task()
    theta = {n: p.detach() for n, p in model.named_parameters()}
    truth = implicit_truth(theta, classification_loss(model), support, query, lam, lr)
    model.float()
    loss = classification_loss(model)
    theta32 = {n: p.float() for n, p in theta.items()}
    s32, q32 = (support[0].float(), support[1]), (query[0].float(), query[1])
    config = EstimatorConfig(inner=InnerConfig(steps=steps, lr=lr, lam=lam), nu=nu)
    batch = lambda d: tuple(t.unsqueeze(0) for t in d)  # noqa: E731
    estimate = meta_gradient("fobmaml-sym", theta32, loss, batch(s32), batch(q32), config,
                             batching="loop").grad
    error = relative_error({n: v.double() for n, v in estimate.items()}, truth)

    def phi_iteration(v: float) -> dict[str, torch.Tensor]:
        phi = dict(theta32)
        for _ in range(steps):
            g = torch.func.grad(lambda p: loss(p, s32) + v * loss(p, q32))(phi)
            phi = {n: phi[n] - lr * (g[n] + lam * (phi[n] - theta32[n])) for n in phi}
        return phi

    high, low = phi_iteration(nu), phi_iteration(-nu)
    old = {n: (-lam * ((high[n] - theta32[n]) - (low[n] - theta32[n])) / (2 * nu)).double() for n in theta}
    return error, relative_error(old, truth)


@pytest.mark.parametrize(("lam", "lr", "nu", "bound", "gain"), [
    (2.0, 0.1, 1e-3, 2e-4, 3.0),    # float32 gradient noise dominates: ~1.3e-7/ν measured
    (1e3, 9e-4, 0.1, 1.3e-4, 10.0),  # the 1.3e-3 → ≤ 1.3e-4
])
def test_float32_fobmaml_solves_for_the_displacement(one_thread, lam: float, lr: float, nu: float,
                                                     bound: float, gain: float) -> None:
    """Δ = φ − θ as the iterate keeps the digits the finite difference needs: the float32
    error is below ``bound`` and ``gain``× below the same steps iterated on φ."""
    error, old = _sym_error_float32(lam, lr, nu)
    assert error <= bound, (error, old)
    assert old >= gain * error, (error, old)


def test_maml_through_inner_adam_is_finite_where_gradients_are_zero(one_thread) -> None:
    """Conv biases before BatchNorm have a zero inner gradient, so Adam's second moment is 0
    there; d√s/ds at 0 made the whole MAML meta-gradient NaN. Now it is finite, zero on those
    biases, and on every other parameter equal to the meta-gradient of the same network
    built without the (ineffective) conv biases, where no gradient is zero."""
    torch.manual_seed(0)
    model = Conv1D(ways=3, channels=4).double()
    g = torch.Generator().manual_seed(1)
    support = (torch.randn(1, 6, 1, 40, generator=g, dtype=torch.float64), torch.arange(3).repeat(2)[None])
    query = (torch.randn(1, 9, 1, 40, generator=g, dtype=torch.float64), torch.arange(3).repeat(3)[None])
    config = EstimatorConfig(inner=InnerConfig(steps=3, lr=0.01, lam=2.0, optimizer="adam"))
    theta = {n: p.detach() for n, p in model.named_parameters()}
    grad = meta_gradient("maml", theta, classification_loss(model), support, query, config).grad
    assert all(bool(torch.isfinite(v).all()) for v in grad.values())
    biases = ("features.0.bias", "features.4.bias", "features.8.bias")
    for name in biases:
        assert float(grad[name].abs().max()) <= 1e-12  # zero up to rounding
    for index in (0, 4, 8):
        model.features[index].register_parameter("bias", None)
    reduced = {n: p.detach() for n, p in model.named_parameters()}
    reference = meta_gradient("maml", reduced, classification_loss(model), support, query, config).grad
    for name in reduced:
        torch.testing.assert_close(grad[name], reference[name], rtol=1e-7, atol=1e-10)


def test_safe_sqrt_keeps_the_value_and_has_a_finite_derivative_at_zero() -> None:
    x = torch.tensor([0.0, 1e-30, 4.0], dtype=torch.float64, requires_grad=True)
    y = safe_sqrt(x)
    torch.testing.assert_close(y, x.detach().sqrt(), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(grad).all() and grad[0] == 0 and grad[2] == 0.25


def test_batchnorm_with_running_stats_in_train_mode_is_refused() -> None:
    model = nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(4 * 38, 3))
    with pytest.raises(FobbenchError, match=r"model module '1' \(BatchNorm1d\)") as error:
        classification_loss(model)
    assert "\n" not in str(error.value)
    model.eval()  # running statistics are read, never written: allowed
    loss = classification_loss(model)
    before = model[1].running_mean.clone()
    loss({n: p.detach() for n, p in model.named_parameters()},
         (torch.randn(5, 1, 40), torch.zeros(5, dtype=torch.long)))
    assert torch.equal(model[1].running_mean, before)
    model.train()  # switched back later: caught at the next call
    with pytest.raises(FobbenchError, match="track_running_stats"):
        loss({n: p.detach() for n, p in model.named_parameters()},
             (torch.randn(5, 1, 40), torch.zeros(5, dtype=torch.long)))


@pytest.fixture
def nan_method():
    """A registry method whose meta-gradient turns NaN at the third call."""
    calls = {"n": 0}

    @register("nan-test", "NaN after two calls", order="first")
    def nan_test(theta, loss, support, query, config, noise=None):
        calls["n"] += 1
        value = float("nan") if calls["n"] > 2 * 4 else 0.0  # 4 tasks per meta-batch
        return {n: torch.full_like(p, value) for n, p in theta.items()}

    yield "nan-test"
    unregister("nan-test")


def test_train_stops_with_one_line_when_the_meta_gradient_turns_non_finite(cli, nan_method, tmp_path: Path,
                                                                           monkeypatch) -> None:
    monkeypatch.setenv("FOBBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run.csv"
    code, stdout, stderr = cli("train", "mnist1d", "--method", nan_method, "--batching", "loop",
                               "--iterations", "6", "--meta-batch", "4", "--eval-every", "2",
                               "--eval-tasks", "6", "--num-samples", "5000", "--threads", "1", "--quiet",
                               "--no-plot", "--out", str(out))
    assert code == 1
    message = stderr.strip()
    assert "\n" not in message and "non-finite at iteration 3" in message and "Traceback" not in stderr
    from fobbench.results import read_results
    frame = read_results(out)
    assert sorted(set(frame["iteration"])) == [0, 2]  # the rows before the failure are kept


@pytest.mark.parametrize(("protocol", "damping", "expected"), [
    ("proximal", None, (0.0, 0.0)), ("published", None, (1.0, 10.0)), ("published", (0.5, 1.0), (0.5, 1.0))])
def test_imaml_solves_its_damped_system(protocol: str, damping, expected) -> None:
    """On a quadratic f̂ = f = ½xᵀAx + bᵀx, iMAML with enough CG steps returns
    ((1+ρ)I + A/(λ+τ))⁻¹ ∇f(φ_K) for the damping its protocol selects."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 5, generator=g, dtype=torch.float64)
    a = q @ q.T / 5 + 0.5 * torch.eye(5, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)

    def loss(params, data):
        a_, b_ = data
        return 0.5 * params["x"] @ a_ @ params["x"] + params["x"] @ b_

    theta = {"x": torch.randn(5, generator=g, dtype=torch.float64)}
    config = EstimatorConfig(inner=InnerConfig(steps=4, lr=0.1, lam=2.0), cg_steps=20,
                             inner_protocol=protocol, cg_damping=damping)
    got = REGISTRY["imaml"].fn(theta, loss, (a, b), (a, b), config)["x"]
    phi = solve(theta, loss, (a, b), (a, b), 0.0, config.inner)["x"]
    rho, tau = expected
    closed = torch.linalg.solve((1 + rho) * torch.eye(5, dtype=torch.float64) + a / (2.0 + tau), a @ phi + b)
    torch.testing.assert_close(got, closed, rtol=1e-9, atol=1e-12)
