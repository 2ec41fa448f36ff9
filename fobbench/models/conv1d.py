"""The functional Conv1D of the paper's MNIST-1D experiment (App. D.2).

Three blocks of Conv1d(16 filters, kernel 3, padding 1) → BatchNorm1d → ReLU → MaxPool1d(2),
then a linear map to the N-way logits. BatchNorm keeps no running statistics
(``track_running_stats=False``): it normalises with each batch's statistics, as MAML
implementations do, and stays pure under ``torch.func.grad``/``vmap``.
"""

from __future__ import annotations

from torch import Tensor, nn


class Conv1D(nn.Module):
    """Conv1D classifier for inputs shaped ``(batch, 1, length)``.

    Args:
        ways: number of output classes N (default 3).
        length: input length (default 40, MNIST-1D); must survive three halvings.
        channels: filters per convolution (default 16).
    """

    def __init__(self, ways: int = 3, length: int = 40, channels: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 1
        for _ in range(3):
            layers += [
                nn.Conv1d(in_channels, channels, kernel_size=3, padding=1),
                nn.BatchNorm1d(channels, track_running_stats=False),
                nn.ReLU(),
                nn.MaxPool1d(2),
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
