"""torchopt's MAML: ``torchopt.MetaSGD`` on the module, state saved and recovered per task
(``torchopt.extract_state_dict`` / ``recover_state_dict``), one task at a time.

First-order MAML uses torchopt's functional SGD (``torchopt.sgd`` + ``torchopt.apply_updates``)
on detached gradients and takes the query gradient at the adapted parameters.
"""

from __future__ import annotations

import torch
import torchopt
from torch import nn

from fobbench.inner import InnerConfig
from fobbench.params import Data, Params
from fobbench.peers import proximal, split


def _maml(model: nn.Module, support: Data, query: Data, inner: InnerConfig) -> list[torch.Tensor]:
    _, theta = split(model)
    total = [torch.zeros_like(p) for p in theta]
    meta_sgd = torchopt.MetaSGD(model, lr=inner.lr)
    net_state = torchopt.extract_state_dict(model, by="reference")
    opt_state = torchopt.extract_state_dict(meta_sgd, by="reference")
    try:
        for i in range(int(support[0].shape[0])):
            for _ in range(inner.steps):
                loss = nn.functional.cross_entropy(model(support[0][i]), support[1][i])
                meta_sgd.step(loss + proximal(list(model.parameters()), theta, inner.lam))
            outer = nn.functional.cross_entropy(model(query[0][i]), query[1][i])
            grads = torch.autograd.grad(outer, theta, allow_unused=True)
            for acc, g in zip(total, grads, strict=True):
                if g is not None:
                    acc.add_(g)
            torchopt.recover_state_dict(model, net_state)
            torchopt.recover_state_dict(meta_sgd, opt_state)
    finally:
        torchopt.recover_state_dict(model, net_state)
    return total


def _fomaml(model: nn.Module, support: Data, query: Data, inner: InnerConfig) -> list[torch.Tensor]:
    names, theta = split(model)
    total = [torch.zeros_like(p) for p in theta]
    sgd = torchopt.sgd(lr=inner.lr)
    for i in range(int(support[0].shape[0])):
        params = tuple(p.detach().requires_grad_() for p in theta)
        state = sgd.init(params)
        for _ in range(inner.steps):
            loss = nn.functional.cross_entropy(
                torch.func.functional_call(model, dict(zip(names, params, strict=True)), (support[0][i],)),
                support[1][i])
            grads = torch.autograd.grad(loss + proximal(params, theta, inner.lam), params)
            updates, state = sgd.update(grads, state, inplace=False)
            params = tuple(p.detach().requires_grad_() for p in torchopt.apply_updates(params, updates,
                                                                                       inplace=False))
        outer = nn.functional.cross_entropy(
            torch.func.functional_call(model, dict(zip(names, params, strict=True)), (query[0][i],)),
            query[1][i])
        for acc, g in zip(total, torch.autograd.grad(outer, params), strict=True):
            acc.add_(g)
    return total


def meta_gradient(method: str, model: nn.Module, support: Data, query: Data, inner: InnerConfig) -> Params:
    """Mean over tasks of torchopt's meta-gradient (``maml`` or ``fomaml``) for θ = ``model``'s parameters."""
    names, _ = split(model)
    tasks = int(support[0].shape[0])
    total = (_maml if method == "maml" else _fomaml)(model, support, query, inner)
    return {n: g.detach() / tasks for n, g in zip(names, total, strict=True)}
