"""Wall-clock timing of one callable with ``torch.utils.benchmark`` (median and IQR).

Every speed figure fobbench reports is taken here, so warm-up, repeats and the statistic are
the same everywhere: ``Timer.blocked_autorange`` runs the callable once to warm up, then in
blocks until ``min_run_time`` seconds are spent, and reports the per-call time of each block;
the median and the interquartile range of those block times are the result. Threads are
whatever torch is set to (commands set them; see :func:`default_threads`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils import benchmark

MEASURED_BY = "torch_benchmark_timer"
"""``measured_by`` of every time taken by :func:`time_call` (noisy, as ``compare`` knows)."""


@dataclass(frozen=True)
class Timing:
    """Per-call seconds of a timed callable.

    Attributes:
        median: median over blocks (s).
        iqr: interquartile range over blocks (s).
        times: per-call seconds of each block (what ``compare`` tests for significance).
        calls: calls timed in all (excluding the warm-up).
    """

    median: float
    iqr: float
    times: tuple[float, ...]
    calls: int


def time_call(fn: Callable[[], object], min_run_time: float = 1.0, sync: bool = False,
              clock: Callable[[], float] | None = None) -> Timing:
    """Time ``fn()`` with ``torch.utils.benchmark.Timer.blocked_autorange``.

    Args:
        fn: a zero-argument callable (one meta-gradient, one floor pass set...).
        min_run_time: seconds to spend timing at least (default 1.0); blocks are sized by
            the timer so that each lasts ~0.2 s or one call, whichever is longer.
        sync: synchronise CUDA around blocks (``Timer`` does this itself on CUDA tensors).
        clock: the timer's clock (seconds); default wall clock. ``time.process_time`` times
            the CPU this process spent, which other processes on a shared machine do not
            inflate (``train``'s floor on CPU; meaningless for asynchronous CUDA work).
    """
    del sync  # Timer synchronises CUDA itself when torch.cuda is initialised
    kwargs = {} if clock is None else {"timer": clock}
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads(), **kwargs)
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    times = tuple(float(t) for t in measurement.times)
    return Timing(float(measurement.median), float(measurement.iqr), times,
                  int(measurement.number_per_run * len(times)))


def default_threads(command: str) -> int:
    """The torch CPU thread count a command runs with unless ``--threads`` says otherwise.

    - ``speed`` (a timing benchmark): 1. A timing must not wait on a thread pool that
      competes with other processes: on a busy 2-core machine torch's default of 2 threads
      produced 10–14 s stalls in 2 of 7 calls (issue 14), and one thread is what the peer
      libraries' numbers are compared at.
    - everything else (``train`` ...): half the cores, at least 1 and at most torch's own
      default, leaving headroom for the data pipeline and other processes (1 on a 2-core
      machine).
    """
    if command == "speed":
        return 1
    cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores // 2))
