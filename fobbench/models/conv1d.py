"""The functional Conv1D of the paper's MNIST-1D experiment (App. D.2).

Three blocks of Conv1d(16 filters, kernel 3, padding 1) → BatchNorm1d → ReLU → MaxPool1d(2),
(the activation can be swapped for a smooth one, ``tanh``, ``softplus`` or ``gelu``, for ground-truth
checks that need a twice-differentiable loss),
then a linear map to the N-way logits. BatchNorm keeps no running statistics
(``track_running_stats=False``): it normalises with each batch's statistics, as MAML
implementations do, and stays pure under ``torch.func.grad``/``vmap``.
"""

from __future__ import annotations

from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus,
                                           "gelu": nn.GELU}
"""Activation of each block by name (``relu`` is the paper's)."""

POOLS: dict[str, type[nn.Module]] = {"max": nn.MaxPool1d, "avg": nn.AvgPool1d}
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
