"""The Transformer block of the memory benchmark (paper App. B, D.5).

A standard pre-norm block: ``x + MHA(LN(x))`` then ``x + FFN(LN(x))``, with multi-head
self-attention (default 8 heads) and a feed-forward network (default 512 hidden units, ReLU),
repeated ``depth`` times (default 1), followed by a final LayerNorm, mean pooling over the
sequence and a linear head to ``ways`` classes. Inputs are already-embedded sequences
``(batch, seq, d_model)``, so ``d_model`` and ``seq`` are free to sweep.

Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` so that the SDPA
backend (math, or a fused flash/efficient kernel) decides how much memory attention keeps,
exactly as in user code; select it with ``torch.nn.attention.sdpa_kernel``. The fused CPU
kernel has no double backward, so MAML and iMAML need the math backend.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fobbench.params import Data


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``.

    Args:
        d_model: embedding width; must be divisible by ``heads``.
        heads: attention heads (default 8).
    """

    def __init__(self, d_model: int, heads: int = 8) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        batch, seq, width = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)
        return self.out(attended.transpose(1, 2).reshape(batch, seq, width))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(LN(x))``, ``x + FFN(LN(x))`` with FFN = Linear→ReLU→Linear.

    Args:
        d_model: embedding width.
        heads: attention heads (default 8).
        ffn: hidden units of the feed-forward network (default 512).
    """

    def __init__(self, d_model: int, heads: int = 8, ffn: int = 512) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn), nn.ReLU(), nn.Linear(ffn, d_model))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class TransformerClassifier(nn.Module):
    """``depth`` Transformer blocks, final LayerNorm, mean pooling and a linear head.

    Args:
        d_model: embedding width (the paper sweeps 64..512 at seq 128).
        heads: attention heads (default 8).
        ffn: feed-forward hidden units (default 512).
        depth: number of blocks (default 1, the paper's single block).
        ways: output classes (default 5).
    """

    def __init__(self, d_model: int, heads: int = 8, ffn: int = 512, depth: int = 1, ways: int = 5) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[TransformerBlock(d_model, heads, ffn) for _ in range(depth)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, ways)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(batch, ways)`` of sequences ``(batch, seq, d_model)``."""
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


def sequence_tasks(tasks: int, batch: int, ways: int, seq: int, d_model: int,
                   generator: torch.Generator) -> tuple[Data, Data]:
    """Random sequence-classification tasks: ``(support, query)``.

    Each set holds ``batch`` Gaussian sequences per task with balanced labels ``i mod ways``.

    Returns:
        support and query, each ``(x, y)`` with ``x: (tasks, batch, seq, d_model)`` and
        ``y: (tasks, batch)`` (int64).
    """

    def one_set() -> Data:
        x = torch.randn((tasks, batch, seq, d_model), generator=generator)
        y = (torch.arange(batch) % ways).expand(tasks, batch).contiguous()
        return x, y

    return one_set(), one_set()


SDPA_MODES = ("default", "math")
"""``default``: let PyTorch pick the SDPA kernel (fused flash/efficient where allowed);
``math``: force the plain math implementation (needed for double backward)."""


def sdpa_context(mode: str) -> AbstractContextManager[object]:
    """A context selecting the SDPA backend: ``math`` forces the math kernel, ``default``
    leaves PyTorch's own choice."""
    if mode not in SDPA_MODES:
        raise ValueError(f"unknown SDPA mode '{mode}' (choose from {', '.join(SDPA_MODES)})")
    if mode == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return nullcontext()


_FUSED_KERNELS = {
    "_scaled_dot_product_flash_attention_for_cpu": "flash_attention",
    "_scaled_dot_product_flash_attention": "flash_attention",
    "_scaled_dot_product_efficient_attention": "efficient_attention",
    "_scaled_dot_product_cudnn_attention": "cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


def observed_sdpa_kernel(model: nn.Module, x: Tensor) -> str:
    """The attention kernel ``model(x)`` really runs under the current ``sdpa_kernel`` context.

    One forward pass under a dispatch mode that watches for the fused SDPA operators; when
    none runs, attention was decomposed into the math implementation. Returns
    ``flash_attention``, ``efficient_attention``, ``cudnn_attention`` or ``math`` (several
    joined by ``+`` if layers differ).
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[str] = []

    class Observe(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
            kernel = _FUSED_KERNELS.get(func.__name__.split(".")[0])
            if kernel is not None and kernel not in seen:
                seen.append(kernel)
            return func(*args, **(kwargs or {}))

    with Observe():
        model(x)
    return "+".join(seen) or "math"


def memory_model(size: int, d_model: int = 128, heads: int = 8, ffn: int = 512, depth: int = 1, ways: int = 5,
                 tasks: int = 1, batch: int = 4, seed: int = 0):  # noqa: ANN201 (returns fobbench.plugins.MemoryCase)
    """The ``transformer`` memory plugin (``memory --arch transformer`` resolves to it): sequence
    length ``size``; ``depth`` blocks of width ``d_model`` with ``heads`` heads and ``ffn`` hidden
    units (model from the global torch RNG); ``tasks`` tasks of ``batch`` + ``batch`` random
    sequences (from a generator seeded ``seed``)."""
    from fobbench.plugins import MemoryCase
    from fobbench.problems.base import TaskBatch

    model = TransformerClassifier(d_model, heads, ffn, depth, ways)
    support, query = sequence_tasks(tasks, batch, ways, size, d_model, torch.Generator().manual_seed(seed))
    return MemoryCase(model, TaskBatch(support, query), attention=True)
