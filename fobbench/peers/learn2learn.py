"""learn2learn's MAML: ``l2l.algorithms.MAML(model, lr, first_order)``, ``clone()`` and
``adapt()`` per task (first-order MAML with ``first_order=True``).

learn2learn does not build on Python 3.11 today; ``fobbench speed`` then skips it with a note.
"""

from __future__ import annotations

import learn2learn as l2l
import torch
from torch import nn

from fobbench.inner import InnerConfig
from fobbench.params import Data, Params
from fobbench.peers import proximal, split


def meta_gradient(method: str, model: nn.Module, support: Data, query: Data, inner: InnerConfig) -> Params:
    """Mean over tasks of learn2learn's meta-gradient (``maml`` or ``fomaml``) (θ: ``model``'s)."""
    names, theta = split(model)
    tasks = int(support[0].shape[0])
    total = [torch.zeros_like(p) for p in theta]
    wrapped = l2l.algorithms.MAML(model, lr=inner.lr, first_order=method != "maml")
    for i in range(tasks):
        learner = wrapped.clone()
        for _ in range(inner.steps):
            loss = nn.functional.cross_entropy(learner(support[0][i]), support[1][i])
            learner.adapt(loss + proximal(list(learner.parameters()), theta, inner.lam))
        outer = nn.functional.cross_entropy(learner(query[0][i]), query[1][i])
        for acc, g in zip(total, torch.autograd.grad(outer, theta, allow_unused=True), strict=True):
            if g is not None:
                acc.add_(g)
    return {n: g.detach() / tasks for n, g in zip(names, total, strict=True)}
