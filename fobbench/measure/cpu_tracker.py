"""Peak live tensor memory without a GPU: allocator-level accounting through the dispatcher.

:class:`LiveStorageTracker` is a ``TorchDispatchMode``. Every aten op that runs inside it is
inspected after it returns: each output tensor's untyped storage on the tracked device that was
not seen before and does not alias a storage of one of the op's inputs (outputs without an
alias annotation in the op's schema are fresh by contract; annotated ones are compared with the
inputs) is a fresh allocation, counted with its ``nbytes()``. A weak reference on that storage
subtracts the bytes when the storage dies, so ``live`` is the number of tensor bytes allocated
inside the context and still alive, and ``peak`` its maximum. Storages that existed before the
context (parameters, data) are not counted: the peak is the peak *above* what was resident on
entry.

Why this and not something else (measured on torch 2.13, 2 CPU threads):

- It agrees with ``torch.profiler`` memory events (``profile_memory=True``): to the byte for
  FO-MAML and FO-B-MAML on an MLP, within 0.75 % on the Transformer block (fused attention
  kernels keep 64 KiB of scratch), is identical run to run, and works under
  ``torch.func.grad``/``vmap`` (the mode sits below functorch and sees the unwrapped tensors)
  and on the ``meta`` device, which is what makes the estimate mode possible.
- Process RSS under-reports (freed pages are reused), ``tracemalloc`` sees no tensor storage,
  and ``torch.distributed._tools.mem_tracker`` refuses modules called several times.

It does not see scratch buffers an operator allocates and frees inside its own kernel: oneDNN
convolutions keep a few hundred KiB of them, so on the ConvNet the profiler's peak is up to
6 % higher for first-order methods at 64 channels (0.14 % for MAML). It costs about 25 µs per
operator, which the CPU timings include.

A ``limit_bytes`` turns the tracker into an out-of-memory simulator: the first op that takes
``live`` above the limit raises :class:`MemoryLimitExceeded` (its output is dropped with the
exception), so a sweep can record ``oom`` for a point exactly as a GPU would refuse it.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class MemoryLimitExceeded(RuntimeError):
    """Live tensor bytes went above the tracker's limit (a simulated out-of-memory)."""

    def __init__(self, live_bytes: int, limit_bytes: int) -> None:
        super().__init__(
            f"live tensor memory {live_bytes / 2**20:.1f} MiB exceeds the limit of "
            f"{limit_bytes / 2**20:.1f} MiB"
        )
        self.live_bytes = live_bytes
        self.limit_bytes = limit_bytes


def _storage_key(storage: torch.UntypedStorage) -> int:
    """An identity for a live storage that also works on the ``meta`` device.

    ``data_ptr()`` is 0 for every meta storage, so the address of the C++ StorageImpl is used;
    it is unique among live storages, and a dead storage's key is dropped by its finalizer
    before the address can be reused.
    """
    return int(storage._cdata)


def _tensors(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in tree):
        return list(tree)
    leaves, _ = tree_flatten(tree)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


_FRESH: dict[Any, tuple[bool, ...]] = {}


def _fresh_returns(func: Any) -> tuple[bool, ...]:
    """Per return of an op: True when its schema promises a new tensor (no alias annotation).

    Annotated returns (views, in-place and ``out=`` results, ``to`` that may or may not copy)
    are compared against the inputs' storages instead.
    """
    flags = _FRESH.get(func)
    if flags is None:
        try:
            flags = tuple(r.alias_info is None for r in func._schema.returns)
        except AttributeError:
            flags = ()
        _FRESH[func] = flags
    return flags


class _StorageRef(weakref.ref):
    """A weak reference to a counted storage that remembers its key and size."""

    __slots__ = ("key", "size")


class LiveStorageTracker(TorchDispatchMode):
    """Counts live tensor storage allocated inside the context; see the module docstring.

    Args:
        device: count storages on this device only (default ``"cpu"``; ``"meta"`` for
            estimates). Some decompositions build ``meta`` tensors to reason about shapes
            while running on CPU; those hold no memory and must not be counted.
        limit_bytes: raise :class:`MemoryLimitExceeded` as soon as live bytes exceed this
            (None, the default: no limit).

    Attributes:
        live: bytes allocated inside the context that are still alive.
        peak: the maximum of ``live`` over the context (bytes).
        allocations: number of storages counted.
        exceeded: True once the limit was hit (the exception may reach the caller wrapped by
            autograd, so callers can check this flag instead of the exception type).
    """

    def __init__(self, device: str | torch.device = "cpu", limit_bytes: int | None = None) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.limit_bytes = limit_bytes
        self.live = 0
        self.peak = 0
        self.allocations = 0
        self.exceeded = False
        self._refs: dict[int, _StorageRef] = {}

    def _release(self, ref: _StorageRef) -> None:
        # Called by the weak reference when the storage dies (also after the context ended).
        if self._refs.get(ref.key) is ref:
            del self._refs[ref.key]
            self.live -= ref.size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = _tensors(out)
        if not outputs:
            return out
        fresh = _fresh_returns(func)
        inputs: set[int] | None = None
        added = 0
        for index, tensor in enumerate(outputs):
            if tensor.device != self.device:
                continue
            try:
                storage = tensor.untyped_storage()
            except (RuntimeError, NotImplementedError):  # sparse or storage-less tensors
                continue
            key = _storage_key(storage)
            if key in self._refs:
                continue
            if not (len(fresh) == len(outputs) and fresh[index]):
                if inputs is None:
                    inputs = set()
                    for arg in _tensors((args, kwargs)):
                        try:
                            inputs.add(_storage_key(arg.untyped_storage()))
                        except (RuntimeError, NotImplementedError):
                            continue
                if key in inputs:
                    continue
            ref = _StorageRef(storage, self._release)
            ref.key = key
            ref.size = int(storage.nbytes())
            self._refs[key] = ref
            added += ref.size
            self.allocations += 1
        if added:
            self.live += added
            self.peak = max(self.peak, self.live)
            if self.limit_bytes is not None and self.live > self.limit_bytes:
                self.exceeded = True
                raise MemoryLimitExceeded(self.live, self.limit_bytes)
        return out


def profiler_peak_bytes(fn, *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """Peak of live CPU bytes during ``fn(*args, **kwargs)`` from ``torch.profiler`` memory events.

    The cumulative sum of the ``[memory]`` events' byte counts (allocations positive, frees
    negative) in time order, its maximum taken from 0 at entry. An independent check of
    :class:`LiveStorageTracker` (slower, and CPU only); returns ``(peak_bytes, fn's result)``.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn(*args, **kwargs)
    # The raw kineto events hold every allocation and free as a "[memory]" event with its byte
    # count (prof.events() folds allocations into the op that made them).
    events = [
        (e.start_ns(), int(e.nbytes()))
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
    ]
    events.sort(key=lambda item: item[0])
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak, result
