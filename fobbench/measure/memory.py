"""Peak memory of one update, by backend: CPU allocator accounting, CUDA allocator, estimate.

Every backend runs a zero-argument ``update`` callable (one full meta-gradient update) and
returns a :class:`PeakMemory`: the peak *above* the resident baseline (what was allocated
before the update: parameters, data), the baseline itself, and the wall time. A run that
exceeds the memory available (CUDA out-of-memory, or the tracker's ``limit_bytes`` on CPU
and in estimates) comes back with ``status="oom"`` and its memory released, so a sweep can
record it and continue.

Backends (``measured_by`` in the results):

- ``cpu``: :class:`~fobbench.measure.cpu_tracker.LiveStorageTracker` on the real run
  (``cpu_dispatch_tracker``). No warm-up: the tracker counts storages, not pages, so the
  first run is exact, and a limit never lets memory actually go above it.
- ``estimate``: the same update built on the ``meta`` device and tracked the same way
  (``estimate``); no time is reported because nothing is computed.
- ``cuda``: :func:`fobbench.measure.cuda.measure_cuda` (``cuda_max_memory_allocated``).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from fobbench.errors import FobbenchError
from fobbench.measure.cpu_tracker import LiveStorageTracker
from fobbench.measure.estimate import CpuSdpaOnMeta

BACKENDS = ("cpu", "cuda", "estimate")
MIB = 2**20

Update = Callable[[], None]


@dataclass(frozen=True)
class PeakMemory:
    """The memory of one measured update.

    Attributes:
        status: ``ok`` or ``oom``.
        measured_by: ``cpu_dispatch_tracker``, ``cuda_max_memory_allocated`` or ``estimate``.
        baseline_bytes: bytes resident before the update (parameters, data).
        peak_bytes: peak bytes above the baseline during the update (nan when ``oom``).
        reserved_bytes: CUDA ``max_memory_reserved`` (nan on other backends).
        seconds: wall time of the measured update (nan for estimates and ``oom``).
        message: why the point ran out of memory ('' when ``ok``).
    """

    status: str
    measured_by: str
    baseline_bytes: int
    peak_bytes: float
    reserved_bytes: float = math.nan
    seconds: float = math.nan
    message: str = ""

    @property
    def absolute_bytes(self) -> float:
        """The absolute peak: baseline plus peak above it (nan when ``oom``)."""
        return self.baseline_bytes + self.peak_bytes


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and repeats counted once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[int(storage._cdata)] = int(storage.nbytes())
    return sum(seen.values())


def limit_bytes(limit_mib: float | None) -> int | None:
    """``--limit`` in MiB as bytes (None stays None); FobbenchError when not > 0."""
    if limit_mib is None:
        return None
    if not (limit_mib > 0 and math.isfinite(limit_mib)):
        raise FobbenchError(f"--limit must be a positive number of MiB (got {limit_mib})")
    return int(limit_mib * MIB)


def _tracked(update: Update, device: str, resident: Iterable[torch.Tensor], limit: int | None,
             measured_by: str, timed: bool) -> PeakMemory:
    baseline = storage_bytes(resident)
    tracker = LiveStorageTracker(device=device, limit_bytes=limit)
    redirect = CpuSdpaOnMeta() if device == "meta" else nullcontext()
    message = ""
    start = time.perf_counter()
    try:
        with redirect, tracker:
            update()
    except Exception as error:  # the limit may surface wrapped by autograd: trust the flag
        if not tracker.exceeded:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else "memory limit exceeded"
    seconds = time.perf_counter() - start
    if message:
        gc.collect()  # outside the except block, so the traceback's frames are already gone
        return PeakMemory("oom", measured_by, baseline, math.nan, message=message)
    return PeakMemory("ok", measured_by, baseline, float(tracker.peak),
                      seconds=seconds if timed else math.nan)


def measure_cpu(update: Update, resident: Iterable[torch.Tensor], limit: int | None = None) -> PeakMemory:
    """Peak live CPU tensor bytes of ``update`` (see module docstring).

    Args:
        update: runs one full update; its tensors must be on CPU.
        resident: tensors alive before and after the update (parameters, data): the baseline.
        limit: bytes above the baseline at which the update is stopped as ``oom`` (None: none).
    """
    return _tracked(update, "cpu", resident, limit, "cpu_dispatch_tracker", timed=True)


def measure_estimate(update: Update, resident: Iterable[torch.Tensor],
                     limit: int | None = None) -> PeakMemory:
    """Predicted peak of ``update`` built on the ``meta`` device (``measured_by=estimate``).

    Equals :func:`measure_cpu` of the same update on CPU (tested), up to shape-only ``meta``
    tensors that some forward-mode decompositions create on CPU (iMAML through LayerNorm:
    one activation-sized tensor).
    """
    return _tracked(update, "meta", resident, limit, "estimate", timed=False)
