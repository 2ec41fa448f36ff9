"""The activation-heavy ConvNet of the memory benchmark (paper §6.4, App. D.3).

The paper names the model only as "activation-heavy" and sweeps its channel count from 16 to
256. fobbench's choice, made so that activations, not parameters, dominate memory:

- ``depth`` (default 4) blocks of Conv2d(3×3, padding 1) → BatchNorm2d → ReLU, all at the full
  input resolution (no pooling between blocks, so every block stores a ``channels × H × W``
  map per example);
- BatchNorm with ``track_running_stats=False``: batch statistics per task, as MAML papers use,
  and required by ``torch.func`` transforms (no in-place running-stat updates);
- global average pooling and a linear head to ``ways`` classes.

Inputs are ``in_channels × image × image`` (defaults 1 × 16 × 16, small enough that the whole
16..256 sweep of all seven methods runs on a 2-core CPU in minutes; pass ``--image 28`` for an
Omniglot-sized input). Parameters grow as ``9·channels²·(depth−1)`` while activations grow as
``channels·image²·depth·batch·K``, so the benchmark shows how each method pays for activations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fobbench.params import Data


class ConvNet(nn.Module):
    """``depth`` × [3×3 conv → BatchNorm (batch statistics) → ReLU] at full resolution, then
    global average pooling and a linear classifier.

    Args:
        channels: feature maps per conv layer (the swept width).
        depth: number of conv blocks (default 4).
        in_channels: input channels (default 1).
        ways: output classes (default 5).
    """

    def __init__(self, channels: int, depth: int = 4, in_channels: int = 1, ways: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(depth):
            layers += [
                nn.Conv2d(width, channels, kernel_size=3, padding=1),
                nn.BatchNorm2d(channels, track_running_stats=False),
                nn.ReLU(),
            ]
            width = channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, ways)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(batch, ways)`` of images ``(batch, in_channels, H, W)``."""
        return self.head(self.features(x).mean(dim=(2, 3)))


def convnet_tasks(tasks: int, batch: int, ways: int, in_channels: int, image: int,
                  generator: torch.Generator) -> tuple[Data, Data]:
    """Random classification tasks for the ConvNet: ``(support, query)``.

    Each set holds ``batch`` Gaussian images per task with balanced labels ``i mod ways``;
    memory and time do not depend on the values, only on the shapes.

    Returns:
        support and query, each ``(x, y)`` with ``x: (tasks, batch, in_channels, image, image)``
        and ``y: (tasks, batch)`` (int64).
    """

    def one_set() -> Data:
        x = torch.randn((tasks, batch, in_channels, image, image), generator=generator)
        y = (torch.arange(batch) % ways).expand(tasks, batch).contiguous()
        return x, y

    return one_set(), one_set()


def memory_model(size: int, depth: int = 4, ways: int = 5, tasks: int = 1, batch: int = 4, image: int = 16,
                 in_channels: int = 1, seed: int = 0):  # noqa: ANN201 (returns fobbench.plugins.MemoryCase)
    """The ``convnet`` memory plugin (``memory --arch convnet`` resolves to it): a ConvNet of
    ``size`` channels and ``depth`` blocks (model from the global torch RNG) and ``tasks``
    tasks of ``batch`` + ``batch`` Gaussian ``image``² images (from a generator seeded ``seed``)."""
    from fobbench.plugins import MemoryCase
    from fobbench.problems.base import TaskBatch

    model = ConvNet(size, depth, in_channels, ways)
    generator = torch.Generator().manual_seed(seed)
    support, query = convnet_tasks(tasks, batch, ways, in_channels, image, generator)
    return MemoryCase(model, TaskBatch(support, query))
