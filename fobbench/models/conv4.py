"""The four-block ConvNet of MAML-style few-shot image classification (paper App. D.4).

Each block is a 3×3 convolution (64 filters, padding 1), BatchNorm with batch statistics
(``track_running_stats=False``, as MAML papers do, and the only BatchNorm that works under
``torch.func.grad``/``vmap``), ReLU and 2×2 max-pooling; a linear head maps the flattened
features to ``ways`` logits. On 28×28 Omniglot the maps shrink 28 → 14 → 7 → 3 → 1, so the
head sees 64 features (112,261 parameters for 5 ways).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from fobbench.errors import FobbenchError
from fobbench.models.conv1d import ACTIVATIONS

POOLS: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
"""2×2 pooling by name (``max`` is the paper's; ``avg`` keeps the loss smooth)."""


def conv_block(in_channels: int, out_channels: int, activation: str = "relu", pool: str = "max"
               ) -> nn.Sequential:
    """conv 3×3 (padding 1) → BatchNorm2d (batch statistics) → activation (ReLU) → max-pool 2×2.

    The activation's module keeps the name ``relu`` whatever it is, so parameter names (and
    checkpoints) do not depend on it."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{activation}' (choose from {', '.join(ACTIVATIONS)})")
    if pool not in POOLS:
        raise ValueError(f"unknown pooling '{pool}' (choose from {', '.join(POOLS)})")
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        norm=nn.BatchNorm2d(out_channels, track_running_stats=False),
        relu=ACTIVATIONS[activation](),
        pool=POOLS[pool](2),
    ))


class Conv4(nn.Module):
    """Four conv blocks and a linear head.

    Args:
        ways: outputs of the head (default 5).
        in_channels: input channels (default 1, Omniglot).
        hidden: filters per block (default 64).
        image_size: input side in pixels (default 28); fixes the head's input width.
        blocks: number of conv blocks (default 4).
        activation: ``relu`` (default, the paper's), ``tanh``, ``softplus`` or ``gelu``.
        pool: ``max`` (default, the paper's) or ``avg``.

    Raises:
        FobbenchError: the image is too small for the number of blocks.
    """

    def __init__(self, ways: int = 5, in_channels: int = 1, hidden: int = 64, image_size: int = 28,
                 blocks: int = 4, activation: str = "relu", pool: str = "max") -> None:
        super().__init__()
        side = image_size
        for _ in range(blocks):
            side //= 2
        if side < 1:
            raise FobbenchError(f"Conv4: images of {image_size} px are too small for {blocks} pooling blocks")
        self.features = nn.Sequential(OrderedDict(
            (f"block{i + 1}", conv_block(in_channels if i == 0 else hidden, hidden, activation, pool))
            for i in range(blocks)
        ))
        self.head = nn.Linear(hidden * side * side, ways)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(batch, ways)`` of images ``(batch, in_channels, s, s)``."""
        return self.head(self.features(x).flatten(1))
