"""The shared inner solver: its gradient and its convergence to the proximal solution."""

from __future__ import annotations

import pytest
import torch
from quadratic_loss import quadratic

from fobbench.errors import FobbenchError
from fobbench.inner import InnerConfig, _objective_grad, loss_gradient, proximal_objective, solve
from fobbench.measure.cpu_tracker import LiveStorageTracker
from fobbench.params import classification_loss


@pytest.mark.parametrize("v", [0.0, 0.3, -0.3])
def test_sequential_gradient_equals_autograd_of_the_objective(v: float) -> None:
    loss, theta, a, b = quadratic(6)
    phi = {"x": theta["x"] + 0.1}
    query = (2 * a, -b)
    expected = torch.func.grad(proximal_objective)(phi, theta, loss, (a, b), query, v, 2.0)
    got = _objective_grad(phi, {"x": phi["x"] - theta["x"]}, loss, (a, b), query, v, 2.0)
    torch.testing.assert_close(got["x"], expected["x"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("optimizer", "lr", "steps"),
                         [("gd", 0.2, 400), ("momentum", 0.05, 400), ("adam", 0.05, 3000)])
def test_every_inner_optimizer_reaches_the_closed_form_solution(optimizer: str, lr: float, steps: int
                                                                ) -> None:
    loss, theta, a, b = quadratic(6)
    lam, v = 2.0, 0.1
    query = (a, b)
    config = InnerConfig(steps=steps, lr=lr, lam=lam, optimizer=optimizer)
    phi = solve(theta, loss, (a, b), query, v, config)["x"]
    eye = torch.eye(len(b), dtype=torch.float64)
    closed = torch.linalg.solve((1 + v) * a + lam * eye, lam * theta["x"] - (1 + v) * b)  # App. D.1
    assert torch.linalg.norm(phi - closed) / torch.linalg.norm(closed) < 1e-6


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"lam": -1.0}, {"lam": float("inf")}, {"lr": 0.0},
                                    {"optimizer": "lbfgs"}])
def test_bad_inner_settings_are_one_line_errors(kwargs: dict) -> None:
    with pytest.raises(FobbenchError) as error:
        InnerConfig(**kwargs)
    assert "\n" not in str(error.value)


def _mlp_problem(seed: int = 0):
    """A tanh MLP in float64 with a support and a query set (non-quadratic loss)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(20, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=g)
    loss = classification_loss(model)
    theta = {n: p.detach() for n, p in model.named_parameters()}
    return loss, theta, (x[:10], y[:10]), (x[10:], y[10:])


@pytest.mark.parametrize("optimizer", ["gd", "momentum", "adam"])
@pytest.mark.parametrize("v", [0.0, 0.3, -0.3])
def test_in_place_solve_equals_the_functional_solve(optimizer: str, v: float) -> None:
    """With in_place=True (one task, outside torch.func) the solver updates one copy of θ in
    place with one gradient buffer; inside vmap it is the pure functional solver. Same
    iterates up to rounding."""
    loss, theta, support, query = _mlp_problem()
    config = InnerConfig(steps=6, lr=0.2, lam=2.0, optimizer=optimizer)
    in_place = solve(theta, loss, support, query, v, config, in_place=True)
    batched = torch.func.vmap(lambda s, q: solve(theta, loss, s, q, v, config))(
        tuple(t.unsqueeze(0) for t in support), tuple(t.unsqueeze(0) for t in query))
    moved = sum(float((in_place[n] - theta[n]).norm()) for n in theta)
    assert moved > 1e-2  # the solve did something
    for n in theta:
        torch.testing.assert_close(in_place[n], batched[n][0], rtol=1e-12, atol=1e-13)
        assert not in_place[n].requires_grad
    assert all(p.grad is None for p in theta.values())


def test_solve_stays_differentiable_when_theta_requires_grad() -> None:
    """θ with autograd history takes the functional path: the gradient of f(φ_K(θ)) through
    the solver by plain autograd equals MAML's (torch.func) gradient."""
    loss, theta, support, query = _mlp_problem(seed=3)
    config = InnerConfig(steps=3, lr=0.2, lam=2.0)
    leaves = {n: p.clone().requires_grad_() for n, p in theta.items()}
    outer = loss(solve(leaves, loss, support, query, 0.0, config), query)
    by_autograd = torch.autograd.grad(outer, list(leaves.values()))
    by_func = torch.func.grad(lambda th: loss(solve(th, loss, support, query, 0.0, config), query))(theta)
    for got, n in zip(by_autograd, theta, strict=False):
        torch.testing.assert_close(got, by_func[n], rtol=1e-12, atol=1e-14)
    # and it is not FO-MAML's gradient: the solver's Jacobian is in it
    fo = loss_gradient(loss, solve(theta, loss, support, query, 0.0, config), query)
    assert max(float((fo[n] - by_func[n]).abs().max()) for n in theta) > 1e-4


def test_loss_gradient_equals_func_grad_and_frees_activations_early() -> None:
    """Plain autograd frees each saved activation during the backward; torch.func.grad keeps
    them all until the end. Same gradient, lower peak."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh())
                                  for _ in range(6)], torch.nn.Linear(64, 3))
    loss = classification_loss(model)
    theta = {n: p.detach() for n, p in model.named_parameters()}
    data = (torch.randn(256, 64), torch.randint(0, 3, (256,)))
    peaks, grads = {}, {}
    for name, fn in (("eager", lambda: loss_gradient(loss, theta, data, in_place=True)),
                     ("func", lambda: torch.func.grad(loss)(theta, data))):
        tracker = LiveStorageTracker()
        with tracker:
            grads[name] = fn()
        peaks[name] = tracker.peak
    for n in theta:
        torch.testing.assert_close(grads["eager"][n], grads["func"][n], rtol=1e-5, atol=1e-7)
    activation = 256 * 64 * 4
    assert peaks["func"] - peaks["eager"] > 3 * activation


@pytest.mark.parametrize("optimizer", ["gd", "adam"])
def test_shared_first_step_gives_the_unshared_iterates_bit_for_bit(optimizer: str) -> None:
    """FO-B-MAML's solves share ∇f̂(θ), ∇f(θ) at their common start; the iterates must not change."""
    from fobbench.inner import first_gradients, solve_displacement
    from fobbench.models.conv1d import Conv1D

    torch.manual_seed(0)
    model = Conv1D(ways=3, length=16).double()
    loss = classification_loss(model)
    theta = {n: p.detach() for n, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(1)
    tasks = 4

    def data(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(tasks, count, 1, 16, generator=generator, dtype=torch.float64)
        return x, torch.randint(0, 3, (tasks, count), generator=generator)

    support, query = data(6), data(9)
    config = InnerConfig(steps=3, lr=0.1, lam=2.0, optimizer=optimizer)
    for v in (0.1, -0.1, 0.0):
        def shared(s: tuple, q: tuple, v: float = v) -> dict:
            return solve_displacement(theta, loss, s, q, v, config, first=first_gradients(theta, loss, s, q))

        def plain(s: tuple, q: tuple, v: float = v) -> dict:
            return solve_displacement(theta, loss, s, q, v, config)

        got = torch.func.vmap(shared)(support, query)
        want = torch.func.vmap(plain)(support, query)
        assert all(torch.equal(got[n], want[n]) for n in theta), v
        assert any(want[n].abs().max() > 0 for n in theta)
