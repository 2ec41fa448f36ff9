"""Estimate mode: run the update on the ``meta`` device and count its live tensor bytes.

Meta tensors carry shapes, dtypes and strides but no data, so the same meta-gradient update
runs in a fraction of the time and allocates nothing, while :class:`LiveStorageTracker` sees
exactly the storages the CPU run would allocate (byte-identical on the models tested). This
predicts memory for sizes that do not fit. Results are labelled ``measured_by=estimate`` and
are never mixed with measurements.

One difference has to be undone: on ``meta`` tensors ``scaled_dot_product_attention`` always
takes the math path, while on CPU it runs the fused flash kernel when allowed. While
:class:`CpuSdpaOnMeta` is active, SDPA calls on meta tensors ask the dispatcher which backend
CPU tensors of the same shape would get (honouring any ``sdpa_kernel`` context) and call that
kernel on the meta tensors, so the estimate tracks the CPU measurement for either backend.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

META = torch.device("meta")


def _cpu_proxy(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU tensor with the shape, dtype and last-dim stride of ``tensor``, one row of memory.

    (``requires_grad`` is not copied: it cannot be set inside ``torch.func`` transforms, and
    the CPU backend choice does not depend on it for dense tensors.)
    """
    row = torch.zeros(tensor.shape[-1], dtype=tensor.dtype)
    return row.expand(tensor.shape)


def cpu_sdpa_choice(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                    is_causal: bool = False, scale: float | None = None) -> str:
    """The SDPA backend CPU tensors shaped like these would use, as a lower-case name.

    ``math``, ``flash_attention``, ... (``torch.nn.attention.SDPBackend`` names); honours an
    enclosing ``sdpa_kernel`` context. Runs with every dispatch mode switched off, so the
    proxies it builds are not counted by a tracker.
    """
    from torch.nn.attention import SDPBackend
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        proxies = [_cpu_proxy(t) for t in (query, key, value)]
        mask = None if attn_mask is None else _cpu_proxy(attn_mask)
        choice = torch._fused_sdp_choice(*proxies, mask, dropout_p, is_causal, scale=scale)
    return SDPBackend(choice).name.lower()


class CpuSdpaOnMeta(TorchFunctionMode):
    """Make ``scaled_dot_product_attention`` on meta tensors use the kernel CPU would use."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and args and args[0].device == META:
            query, key, value = args[:3]
            attn_mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            dropout_p = kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0)
            is_causal = kwargs.get("is_causal", args[5] if len(args) > 5 else False)
            scale = kwargs.get("scale", args[6] if len(args) > 6 else None)
            kernel = cpu_sdpa_choice(query, key, value, attn_mask, dropout_p, is_causal, scale)
            if kernel == "flash_attention":
                return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
                )[0]
        return func(*args, **kwargs)
