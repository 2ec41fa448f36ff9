"""Outer optimizers: step sizes as documented, descent on a quadratic, one-line errors."""

from __future__ import annotations

import pytest
import torch

from fobbench.errors import FobbenchError
from fobbench.meta_optim import OUTER, SNGDM, ClippedGD, apply, make_outer


def _params() -> dict[str, torch.Tensor]:
    return {"a": torch.tensor([3.0, -2.0], dtype=torch.float64, requires_grad=True),
            "b": torch.tensor([[1.0, 4.0]], dtype=torch.float64, requires_grad=True)}


def _quadratic(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """½(a·diag(1, 10)·a) + ½‖b‖²: minimum 0 at zero, curvatures 1 to 10."""
    a, b = params["a"], params["b"]
    return 0.5 * (a[0] ** 2 + 10 * a[1] ** 2) + 0.5 * (b**2).sum()


def _gradient(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    grads = torch.autograd.grad(_quadratic(params), list(params.values()))
    return dict(zip(params, grads, strict=False))


def _flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params.values()])


def test_sngdm_first_step_has_length_lr_in_the_global_norm() -> None:
    params = _params()
    optimizer = SNGDM(params.values(), lr=0.3, momentum=0.9)
    before = _flat(params)
    apply(optimizer, params, _gradient(params))
    assert torch.linalg.vector_norm(_flat(params) - before) == pytest.approx(0.3, rel=1e-9)


def test_sngdm_every_step_has_length_lr() -> None:
    params = _params()
    optimizer = SNGDM(params.values(), lr=0.05, momentum=0.5)
    for _ in range(5):
        before = _flat(params)
        apply(optimizer, params, _gradient(params))
        assert torch.linalg.vector_norm(_flat(params) - before) == pytest.approx(0.05, rel=1e-9)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_clipped_step_never_exceeds_lr_times_max_norm(scale: float) -> None:
    params = _params()
    optimizer = ClippedGD(params.values(), lr=0.1, max_norm=1.0)
    grad = {n: scale * g for n, g in _gradient(params).items()}
    norm = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grad.values()]))
    before = _flat(params)
    apply(optimizer, params, grad)
    step = torch.linalg.vector_norm(_flat(params) - before)
    assert step <= 0.1 * 1.0 * (1 + 1e-12)
    # Below the threshold it is plain gradient descent: step = lr·‖g‖.
    assert step == pytest.approx(0.1 * min(float(norm), 1.0), rel=1e-9)


@pytest.mark.parametrize(("name", "lr"), [("sgd", 0.05), ("clipped", 0.05), ("sngdm", 0.05), ("adam", 0.05)])
def test_every_outer_optimizer_decreases_a_quadratic(name: str, lr: float) -> None:
    params = _params()
    optimizer = make_outer(name, params.values(), lr)
    start = float(_quadratic(params).detach())
    for _ in range(100):
        apply(optimizer, params, _gradient(params))
    assert float(_quadratic(params).detach()) < 0.1 * start


def test_make_outer_knows_exactly_the_documented_names() -> None:
    assert set(OUTER) == {"sgd", "clipped", "sngdm", "adam"}
    with pytest.raises(FobbenchError, match="unknown outer optimizer 'rmsprop'"):
        make_outer("rmsprop", _params().values(), 0.1)


def test_apply_sets_grads_from_the_dict_and_steps() -> None:
    params = _params()
    optimizer = make_outer("sgd", params.values(), 0.5)
    grad = {"a": torch.tensor([1.0, 2.0], dtype=torch.float64), "b": torch.tensor([[0.0, -2.0]],
                                                                                  dtype=torch.float64)}
    apply(optimizer, params, grad)
    assert torch.equal(params["a"].detach(), torch.tensor([2.5, -3.0], dtype=torch.float64))
    assert torch.equal(params["b"].detach(), torch.tensor([[1.0, 5.0]], dtype=torch.float64))
