"""Outer (meta) optimizers: SGD, ClippedGD, normalized SGD with momentum (SNGDM), Adam.

SGD and Adam are ``torch.optim``'s own. ClippedGD and SNGDM (paper §5, Theorems 1–2) act on
the global norm over all meta-parameters, which torch.optim has no optimizer for.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from fobbench.errors import FobbenchError
from fobbench.params import Params

OUTER = ("sgd", "clipped", "sngdm", "adam")


def _global_norm(tensors: list[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


class ClippedGD(torch.optim.Optimizer):
    """θ ← θ − lr · min(1, max_norm/‖g‖) · g, with ‖g‖ the global gradient norm.

    Args:
        params: meta-parameters.
        lr: step size (default 1e-3).
        max_norm: clipping threshold on the global norm (default 1.0).
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, max_norm: float = 1.0) -> None:
        super().__init__(params, {"lr": lr, "max_norm": max_norm})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            norm = _global_norm([p.grad for p in params])
            factor = torch.clamp(group["max_norm"] / (norm + 1e-12), max=1.0)
            for p in params:
                p.add_(p.grad, alpha=-group["lr"] * float(factor))


class SNGDM(torch.optim.Optimizer):
    """Normalized SGD with momentum: m ← βm + (1−β)g;  θ ← θ − lr · m/‖m‖ (global norm).

    Args:
        params: meta-parameters.
        lr: step size (default 1e-3).
        momentum: β (default 0.9).
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, momentum: float = 0.9) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta = group["momentum"]
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(beta).add_(p.grad, alpha=1 - beta)
                buffers.append(buf)
            norm = _global_norm(buffers)
            for p, buf in zip(params, buffers, strict=False):
                p.add_(buf, alpha=-group["lr"] / (float(norm) + 1e-12))


def make_outer(name: str, params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
    """The outer optimizer called ``name`` (``sgd``, ``clipped``, ``sngdm``, ``adam``)."""
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "clipped":
        return ClippedGD(params, lr=lr)
    if name == "sngdm":
        return SNGDM(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise FobbenchError(f"unknown outer optimizer '{name}' (choose from {', '.join(OUTER)})")


def apply(optimizer: torch.optim.Optimizer, params: Params, grad: Params) -> None:
    """Set each meta-parameter's ``.grad`` from a meta-gradient dict and take one step."""
    for name, p in params.items():
        p.grad = grad[name].detach().to(p.dtype).clone()
    optimizer.step()
