"""higher's MAML: ``higher.innerloop_ctx`` with a differentiable SGD, one task at a time.

First-order MAML is the same loop with ``track_higher_grads=False`` and the query gradient
taken at the adapted fast weights.
"""

from __future__ import annotations

import higher
import torch
from torch import nn

from fobbench.inner import InnerConfig
from fobbench.params import Data, Params
from fobbench.peers import proximal, split


def meta_gradient(method: str, model: nn.Module, support: Data, query: Data, inner: InnerConfig) -> Params:
    """Mean over tasks of higher's meta-gradient (``maml`` or ``fomaml``) for θ = ``model``'s parameters."""
    names, theta = split(model)
    tasks = int(support[0].shape[0])
    total = [torch.zeros_like(p) for p in theta]
    optimizer = torch.optim.SGD(model.parameters(), lr=inner.lr)
    second = method == "maml"
    for i in range(tasks):
        with higher.innerloop_ctx(model, optimizer, copy_initial_weights=False,
                                  track_higher_grads=second) as (fmodel, diffopt):
            for _ in range(inner.steps):
                fast = list(fmodel.parameters())
                loss = nn.functional.cross_entropy(fmodel(support[0][i]), support[1][i])
                diffopt.step(loss + proximal(fast, theta, inner.lam))
            outer = nn.functional.cross_entropy(fmodel(query[0][i]), query[1][i])
            wrt = theta if second else list(fmodel.parameters())
            grads = torch.autograd.grad(outer, wrt, allow_unused=True)
        for acc, g in zip(total, grads, strict=True):
            if g is not None:
                acc.add_(g.detach())
    return {n: g / tasks for n, g in zip(names, total, strict=True)}
