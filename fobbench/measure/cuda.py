"""Peak GPU memory of one update from the CUDA caching allocator's own statistics.

The paper's protocol (App. D.3, D.5): ``torch.cuda.reset_peak_memory_stats()``, one warm-up
update (cuDNN/cuBLAS workspaces, lazy initialisation), reset again, the measured update,
``torch.cuda.synchronize()``, then ``torch.cuda.max_memory_allocated()``. The baseline is
``torch.cuda.memory_allocated()`` just before the measured update: parameters, data, and what
the warm-up left resident (cuBLAS workspaces, about 65 MiB on an H200 with torch 2.11), so the
peak above it and the absolute peak are both reported; ``max_memory_reserved()`` adds what the
caching allocator held. Device name, driver and CUDA version come from NVML with the results'
provenance (:mod:`fobbench.measure.environment`).
"""

from __future__ import annotations

import gc
import math
import time

import torch

from fobbench.errors import FobbenchError
from fobbench.measure.memory import PeakMemory, Update

MEASURED_BY = "cuda_max_memory_allocated"


def require_cuda() -> torch.device:
    """The current CUDA device; a one-line FobbenchError when there is none."""
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else "no visible CUDA device"
        raise FobbenchError(
            f"--device cuda: CUDA is not available ({build}); use --device cpu or --estimate"
        )
    return torch.device("cuda", torch.cuda.current_device())


def _oom_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [torch.cuda.OutOfMemoryError]
    if hasattr(torch, "OutOfMemoryError"):
        types.append(torch.OutOfMemoryError)
    return tuple(types)


def _release() -> None:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def measure_cuda(update: Update, limit: int | None = None) -> PeakMemory:
    """Peak CUDA memory of ``update`` (warm-up, reset, measured run); see the module docstring.

    Args:
        update: runs one full update on the current CUDA device.
        limit: bytes the update may take above what is reserved on entry, enforced with
            ``torch.cuda.set_per_process_memory_fraction`` (None: the whole device).

    Returns:
        ``status="oom"`` with memory released when the allocator runs out (in the warm-up or
        the measured update).
    """
    device = require_cuda()
    _release()
    total = torch.cuda.get_device_properties(device).total_memory
    if limit is not None:
        fraction = min(1.0, (torch.cuda.memory_reserved(device) + limit) / total)
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    baseline = torch.cuda.memory_allocated(device)
    message = ""
    try:
        torch.cuda.reset_peak_memory_stats(device)
        update()  # warm-up
        torch.cuda.synchronize(device)
        gc.collect()
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        update()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device)
        reserved = torch.cuda.max_memory_reserved(device)
    except _oom_types() as error:
        message = str(error).strip().splitlines()[0][:200] if str(error).strip() else "CUDA out of memory"
    finally:
        if limit is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    # Outside the except block: the traceback (and the tensors its frames hold) is gone now.
    _release()
    if message:
        return PeakMemory("oom", MEASURED_BY, baseline, math.nan, message=message)
    return PeakMemory("ok", MEASURED_BY, baseline, float(peak - baseline),
                      reserved_bytes=float(reserved), seconds=seconds)
