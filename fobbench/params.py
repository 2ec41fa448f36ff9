"""Parameter dicts (``{name: tensor}``) and the few tree operations the algorithms need.

Every algorithm works on these flat dicts through ``torch.func.functional_call``, so one
``nn.Module`` serves all methods and tasks can be batched with ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from fobbench.errors import FobbenchError

Params = dict[str, Tensor]
"""Parameters by name, as ``dict(model.named_parameters())`` gives them."""

Data = tuple[Tensor, ...]
"""The tensors of one data set (e.g. ``(x, y)``); batched tasks add a leading task axis."""

LossFn = Callable[[Params, Data], Tensor]
"""A scalar loss of parameters on data: ``loss(params, data) -> Tensor[()]``."""


def detached(params: Params) -> Params:
    """A copy of ``params`` without autograd history (the algorithms never need it)."""
    return {name: value.detach() for name, value in params.items()}


def add(a: Params, b: Params, scale: float | Tensor = 1.0) -> Params:
    """``a + scale * b``, key by key."""
    return {name: a[name] + scale * b[name] for name in a}


def sub(a: Params, b: Params) -> Params:
    """``a - b``, key by key."""
    return {name: a[name] - b[name] for name in a}


def scale(a: Params, factor: float | Tensor) -> Params:
    """``factor * a``, key by key."""
    return {name: factor * value for name, value in a.items()}


def dot(a: Params, b: Params) -> Tensor:
    """The inner product over all parameters (a scalar tensor)."""
    return sum((a[name] * b[name]).sum() for name in a)  # type: ignore[return-value]


def sq_norm(a: Params) -> Tensor:
    """The squared global norm over all parameters."""
    return dot(a, a)


def zeros_like(a: Params) -> Params:
    """Zeros shaped like ``a``."""
    return {name: torch.zeros_like(value) for name, value in a.items()}


def flatten(a: Params) -> Tensor:
    """All parameters as one vector (in dict order)."""
    return torch.cat([value.reshape(-1) for value in a.values()])


def unflatten(vector: Tensor, like: Params) -> Params:
    """Split a vector made by :func:`flatten` back into a dict shaped like ``like``."""
    out: Params = {}
    offset = 0
    for name, value in like.items():
        size = value.numel()
        out[name] = vector[offset: offset + size].reshape(value.shape)
        offset += size
    return out


def relative_error(estimate: Params, truth: Params) -> float:
    """Global-norm relative error ``‖estimate − truth‖ / ‖truth‖`` over all parameters.

    Global, not per tensor: biases followed by BatchNorm have exactly zero gradient, so
    per-tensor ratios are meaningless there.
    """
    diff = sq_norm(sub(estimate, truth)).sqrt()
    return float(diff / sq_norm(truth).sqrt().clamp_min(torch.finfo(diff.dtype).tiny))


def check_functional(model: nn.Module) -> None:
    """Refuse a model whose forward mutates buffers: BatchNorm with ``track_running_stats=True``
    in train mode.

    Such a layer updates running_mean/var/num_batches_tracked on every call: under vmap that
    is a raw functorch error, and in a loop every inner step of every method would silently
    rewrite the caller's model. One line naming the module instead (FobbenchError).
    """
    for name, module in model.named_modules():
        tracking = isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
        if tracking and module.training:
            raise FobbenchError(
                f"model module '{name or type(module).__name__}' ({type(module).__name__}) tracks running "
                "statistics in train mode, which every inner step would overwrite; build it with "
                "track_running_stats=False (batch statistics, as MAML does), put it in eval mode, or call "
                "torch.func.replace_all_batch_norm_modules_(model)")


def classification_loss(model: nn.Module) -> LossFn:
    """Cross-entropy of ``model`` on ``(x, y)`` as a functional loss of a parameter dict.

    Checks the model with :func:`check_functional` now and before every call (a cheap test of
    its BatchNorm layers), so a model switched to train mode later is caught too.
    """
    check_functional(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def loss(params: Params, data: Data) -> Tensor:
        if any(m.training and m.track_running_stats for m in norms):
            check_functional(model)
        x, y = data
        logits = torch.func.functional_call(model, params, (x,))
        return nn.functional.cross_entropy(logits, y)

    return loss
