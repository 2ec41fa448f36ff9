"""The functional Conv1D of the paper's MNIST-1D experiment (App. D.2).

Three blocks of Conv1d(16 filters, kernel 3, padding 1) → BatchNorm1d → ReLU → MaxPool1d(2),
then a linear map to the N-way logits. The max-pooling is :class:`PairMaxPool1d`, max-pooling
that takes a form that compiles well under ``vmap``; the activation can be swapped for a smooth
one (``tanh``, ``softplus`` or ``gelu``) and the pooling for ``avg``, for ground-truth checks that
need a twice-differentiable loss. BatchNorm keeps no running statistics
(``track_running_stats=False``): it normalises with each batch's statistics, as MAML
implementations do, and stays pure under ``torch.func.grad``/``vmap``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fobbench.models.forms import compiling_vmapped


def pair_max(x: Tensor) -> Tensor:
    """``nn.MaxPool1d(2)`` of ``x`` (shape ``(..., length)``) with ``amax`` over pairs.

    The values and the gradient of max-pooling with kernel 2, ties included: ``amax`` splits a
    tie's gradient evenly between the pair, and the second term, exactly zero in value (a − b
    at a tie a = b), moves that half back to the first entry, which is where max-pooling sends
    it (its first index). A NaN in a pair is the pair's value, and an odd length drops the last
    entry, as there.
    """
    pairs = x[..., : x.shape[-1] // 2 * 2].unflatten(-1, (-1, 2))
    first, second = pairs.unbind(-1)
    with torch.no_grad():
        tie = (first == second) & first.isfinite()
    return pairs.amax(-1) + 0.5 * torch.where(tie, first - second, 0.0)


class PairMaxPool1d(nn.MaxPool1d):
    """``nn.MaxPool1d(2)`` that runs as :func:`pair_max` where ``torch.compile`` traces a
    vmapped meta-gradient (:func:`fobbench.models.forms.compiling_vmapped`).

    Compiled under ``vmap`` (the ``compiled`` batching), max-pooling's backward became a zero
    fill and a scalar scatter over recomputed indices per layer, where :func:`pair_max`'s is
    elementwise: compiled FO-MAML took 0.6× the time (``docs/evidence/issue14/s20_pool_variants.txt``).
    Everywhere else :func:`pair_max` is the slower one: eagerly its extra elementwise operators
    made a plain pass over 720 examples 1.7× as long, and compiled without ``vmap`` (the
    compiled floor's passes) 1.9×. Both forms give the same values and gradients, bit for bit.
    """

    def __init__(self, kernel_size: int = 2) -> None:
        if kernel_size != 2:
            raise ValueError(f"PairMaxPool1d pools pairs (kernel_size 2, got {kernel_size})")
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` of shape ``(..., length)`` pooled to ``(..., length // 2)``."""
        if compiling_vmapped():
            return pair_max(x)
        return super().forward(x)


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus,
                                           "gelu": nn.GELU}
"""Activation of each block by name (``relu`` is the paper's)."""

POOLS: dict[str, type[nn.Module]] = {"max": PairMaxPool1d, "avg": nn.AvgPool1d}
"""2× pooling of each block by name (``max`` is the paper's; ``avg`` keeps the loss smooth)."""


class Conv1D(nn.Module):
    """Conv1D classifier for inputs shaped ``(batch, 1, length)``.

    Args:
        ways: number of output classes N (default 3).
        length: input length (default 40, MNIST-1D); must survive three halvings.
        channels: filters per convolution (default 16).
        activation: ``relu`` (default, the paper's), ``tanh``, ``softplus`` or ``gelu``.
        pool: ``max`` (default, the paper's) or ``avg`` (smooth: max-pooling's kinks stall
            second-order inner solves even with a smooth activation).
    """

    def __init__(self, ways: int = 3, length: int = 40, channels: int = 16, activation: str = "relu",
                 pool: str = "max") -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pooling '{pool}' (choose from {', '.join(POOLS)})")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}' (choose from {', '.join(ACTIVATIONS)})")
        layers: list[nn.Module] = []
        in_channels = 1
        for _ in range(3):
            layers += [
                nn.Conv1d(in_channels, channels, kernel_size=3, padding=1),
                nn.BatchNorm1d(channels, track_running_stats=False),
                ACTIVATIONS[activation](),
                POOLS[pool](2),
            ]
            in_channels = channels
        self.features = nn.Sequential(*layers)
        out_length = length // 8
        if out_length < 1:
            raise ValueError(f"input length {length} is too short for three 2x poolings")
        self.head = nn.Linear(channels * out_length, ways)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(batch, ways)`` for ``x`` of shape ``(batch, 1, length)``."""
        return self.head(self.features(x).flatten(1))
