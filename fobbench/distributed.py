"""Data-parallel meta-training on torch.distributed: who am I, which tasks are mine, and the
collectives that make N processes take the same outer step as one.

The contract (issue 16): task sampling stays a function of ``(seed, iteration)``; every rank
samples the SAME meta-batch and takes its contiguous slice (:func:`task_slice`); the per-task
meta-gradients are brought together so that every rank applies one identical outer step;
evaluation tasks are split the same way and their per-task values gathered in task order;
only rank 0 writes (:attr:`DistContext.is_writer`). Without torchrun's environment everything
here is a no-op single-process context, so the one-process path pays nothing.

Two ways to combine meta-gradients:

* :func:`gather_tasks` + ``mean(dim=0)`` (:func:`mean_over_tasks`): every rank receives every
  task's gradient in task order and averages the full stack exactly as the one-process
  ``meta_gradient`` does, so θ is **bitwise** the one-process θ whenever each task's gradient
  is (it is on CPU: a task's estimate does not depend on the vmap batch it was computed in).
  Traffic: ``meta_batch × |θ|`` values per step — the default; fine up to large models.
* :func:`all_reduce_sum` of per-rank sums, then ``/ n_tasks`` (:func:`mean_by_all_reduce`):
  ``|θ|`` values per step, equal to the one-process mean up to float summation order
  (~1e-7 relative per step in float32).

Failures: init and every collective run under a bounded timeout (:data:`DEFAULT_TIMEOUT_S`);
a peer that dies or stalls ends this rank with a one-line :class:`FobbenchError` (exit 2)
naming the rank, instead of a hang or a C++ traceback.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from fobbench.errors import FobbenchError
from fobbench.estimators import (
    EstimatorConfig,
    MetaGradient,
    get,
    meta_gradient,
    method_config,
    per_task,
    resolve_nu,
)
from fobbench.params import Data, LossFn, Params

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
"""torchrun's per-process variables; all absent means a plain single-process run."""

BACKENDS = ("gloo", "nccl")

DEFAULT_TIMEOUT_S = 300.0
"""Seconds init and each collective may wait for the other ranks (default 300).

It bounds how long survivors wait on a rank that stalls; a rank that dies is usually noticed
much sooner (gloo sees the closed connection). It must exceed the longest stretch between two
collectives on any rank: one iteration, or an evaluation plus rank 0's checkpoint write.
Overridable with ``$FOBBENCH_DIST_TIMEOUT`` (seconds).
"""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a torch.distributed job.

    Attributes:
        rank: global rank, 0..world_size-1 (0 when not distributed).
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this node; picks the CUDA device (``cuda:<local_rank>``).
        backend: ``gloo`` or ``nccl``; None for a single-process run (no process group).
        device: where this rank computes: ``cpu`` or ``cuda:<local_rank>``.
        timeout_s: bound on init and on each collective (s; see :data:`DEFAULT_TIMEOUT_S`).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def distributed(self) -> bool:
        """True when a process group is (to be) used, i.e. the run was started by torchrun."""
        return self.backend is not None

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes results, checkpoints and figures."""
        return self.rank == 0

    def slice(self, n_tasks: int) -> slice:
        """This rank's tasks of an ``n_tasks`` batch (see :func:`task_slice`)."""
        return task_slice(n_tasks, self.rank, self.world_size)

    def describe(self) -> str:
        """``rank 1/4 (gloo, cpu)`` for messages; ``single process`` when not distributed."""
        if not self.distributed:
            return "single process"
        return f"rank {self.rank}/{self.world_size} ({self.backend}, {self.device})"


SINGLE = DistContext()
"""The single-process context: every helper below is then the identity."""


def _int_var(env: Mapping[str, str], key: str) -> int:
    text = env.get(key, "")
    try:
        return int(text)
    except ValueError:
        raise FobbenchError(f"torch.distributed: ${key}='{text}' is not an integer") from None


def choose_backend(device: str, override: str | None = None) -> str:
    """``nccl`` for CUDA devices, ``gloo`` for CPU, unless ``override`` names one of :data:`BACKENDS`.

    Raises FobbenchError for an unknown override, nccl on a CPU run, or a backend this torch
    build lacks.
    """
    backend = override or ("nccl" if device.startswith("cuda") else "gloo")
    if backend not in BACKENDS:
        raise FobbenchError(f"--dist-backend: unknown '{backend}' (choose from {', '.join(BACKENDS)})")
    if backend == "nccl" and not device.startswith("cuda"):
        raise FobbenchError("--dist-backend nccl needs --device cuda (use gloo on CPU)")
    available = dist.is_available() and (
        dist.is_gloo_available() if backend == "gloo" else dist.is_nccl_available()
    )
    if not available:
        raise FobbenchError(f"torch.distributed: this torch build has no {backend} backend")
    return backend


def from_env(env: Mapping[str, str] | None = None, device: str = "cpu", backend: str | None = None,
             timeout_s: float | None = None) -> DistContext:
    """The context described by torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Args:
        env: the environment (default ``os.environ``).
        device: ``cpu`` or ``cuda``; a CUDA rank computes on ``cuda:<LOCAL_RANK>``.
        backend: force ``gloo`` or ``nccl`` (default: by device, :func:`choose_backend`).
        timeout_s: bound on init and collectives (default ``$FOBBENCH_DIST_TIMEOUT`` or
            :data:`DEFAULT_TIMEOUT_S`).

    None of the variables set: :data:`SINGLE` (on ``device``). Some but not all, or values out
    of range, or no ``MASTER_ADDR``/``MASTER_PORT`` for more than one rank: a one-line
    FobbenchError. torch.distributed itself reads ``MASTER_ADDR``/``MASTER_PORT`` from
    ``os.environ`` at :func:`init`.
    """
    env = os.environ if env is None else env
    present = [key for key in ENV_KEYS if key in env]
    if not present:
        return DistContext(device=device)
    if len(present) != len(ENV_KEYS):
        missing = ", ".join(f"${k}" for k in ENV_KEYS if k not in env)
        raise FobbenchError(f"torch.distributed: {missing} not set (start the run with torchrun)")
    rank, world, local = (_int_var(env, key) for key in ENV_KEYS)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise FobbenchError(
            f"torch.distributed: needs 0 <= $RANK < $WORLD_SIZE and $LOCAL_RANK >= 0 "
            f"(got RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local})"
        )
    if world > 1:
        unset = [f"${k}" for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
        if unset:
            raise FobbenchError(
                f"torch.distributed: {', '.join(unset)} not set (start the run with torchrun)"
            )
    if timeout_s is None:
        text = env.get("FOBBENCH_DIST_TIMEOUT", "")
        try:
            timeout_s = float(text) if text else DEFAULT_TIMEOUT_S
        except ValueError:
            raise FobbenchError(f"$FOBBENCH_DIST_TIMEOUT='{text}' is not a number of seconds") from None
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise FobbenchError(f"torch.distributed timeout must be > 0 seconds (got {timeout_s})")
    chosen = choose_backend(device, backend)
    where = f"cuda:{local}" if device.startswith("cuda") else "cpu"
    return DistContext(rank, world, local, chosen, where, float(timeout_s))


def init(ctx: DistContext) -> None:
    """Join the process group of ``ctx`` (nothing for a single-process context).

    Bounded by ``ctx.timeout_s``: a rank that never shows up ends init with a one-line
    FobbenchError. For nccl, blocking wait and async error handling are switched on (unless
    already set) so a failed or stalled collective raises here instead of hanging.
    """
    if not ctx.distributed:
        return
    if ctx.backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.cuda.set_device(ctx.local_rank)
    with failures(ctx, "joining the process group"):
        dist.init_process_group(
            backend=ctx.backend, rank=ctx.rank, world_size=ctx.world_size,
            timeout=timedelta(seconds=ctx.timeout_s),
            device_id=torch.device(ctx.device) if ctx.backend == "nccl" else None,
        )


def teardown(ctx: DistContext) -> None:
    """Leave the process group (nothing when there is none). Safe after a failure."""
    if ctx.distributed and dist.is_initialized():
        with contextlib.suppress(Exception):  # a broken group cannot be left more cleanly
            dist.destroy_process_group()


@contextmanager
def session(env: Mapping[str, str] | None = None, device: str = "cpu", backend: str | None = None,
            timeout_s: float | None = None) -> Iterator[DistContext]:
    """``with session(device=...) as ctx:`` — :func:`from_env`, :func:`init`, then :func:`teardown`,
    with :func:`stop_on_sigterm` around it.

    The single-process path (no torchrun variables) creates no process group.
    """
    ctx = from_env(env, device, backend, timeout_s)
    with stop_on_sigterm(ctx):
        init(ctx)
        try:
            yield ctx
        finally:
            teardown(ctx)


@contextmanager
def stop_on_sigterm(ctx: DistContext) -> Iterator[None]:
    """Inside the block, SIGTERM raises a one-line FobbenchError instead of killing silently.

    torchrun's agent sends SIGTERM to the surviving ranks when one rank fails; with this the
    survivors say so in one line (and unwind through ``finally`` blocks) before they exit.
    Nothing for a single process, or outside the main thread (signals can only be set there).
    """
    import signal
    import threading

    if not ctx.distributed or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise FobbenchError(f"{ctx.describe()}: stopped by the launcher (SIGTERM): another rank failed or "
                            "the job was cancelled")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def failures(ctx: DistContext, doing: str) -> Iterator[None]:
    """Turn a torch.distributed failure inside the block into a one-line FobbenchError.

    The message names this rank and what it was doing; the first line of torch's own message
    is kept in parentheses (e.g. ``Connection closed by peer``, ``Timed out``).
    """
    try:
        yield
    except FobbenchError:
        raise
    except (RuntimeError, ValueError, OSError) as error:  # DistError subclasses RuntimeError
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        # gloo prefixes its source path in brackets: dropped
        first = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]) if lines else type(error).__name__
        if len(first) > 160:
            first = first[:157] + "..."
        raise FobbenchError(
            f"{ctx.describe()}: another rank failed or stopped answering while {doing} "
            f"(timeout {ctx.timeout_s:g} s; {type(error).__name__}: {first})"
        ) from None


# ----------------------------------------------------------------------------------------
# Splitting work


def task_slice(n_tasks: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous slice of ``n_tasks`` tasks split over ``world_size`` ranks.

    The first ``n_tasks % world_size`` ranks take one task more (uneven splits are allowed);
    the slices cover ``0..n_tasks-1`` in rank order, so gathering them in rank order restores
    task order. A rank gets an empty slice when ``n_tasks < world_size``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise FobbenchError(f"task_slice: needs 0 <= rank < world_size (got {rank}, {world_size})")
    if n_tasks < 0:
        raise FobbenchError(f"task_slice: n_tasks must be >= 0 (got {n_tasks})")
    base, extra = divmod(n_tasks, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def check_split(n_tasks: int, ctx: DistContext, option: str = "--meta-batch") -> None:
    """A one-line FobbenchError when some rank would get no task (``n_tasks < world_size``)."""
    if n_tasks < ctx.world_size:
        raise FobbenchError(
            f"{option} {n_tasks} is smaller than the {ctx.world_size} ranks: every rank needs a task"
        )


# ----------------------------------------------------------------------------------------
# Collectives (identity for a single process)


def _flat(params: Params) -> Tensor:
    return torch.cat([v.reshape(-1) for v in params.values()]) if params else torch.zeros(0)


def _unflat(vector: Tensor, like: Params, lead: tuple[int, ...] = ()) -> Params:
    out: Params = {}
    offset = 0
    for name, value in like.items():
        shape = value.shape[len(lead):] if lead else value.shape
        size = math.prod(shape)
        out[name] = vector[..., offset: offset + size].reshape(*lead, *shape)
        offset += size
    return out


def all_reduce_sum(params: Params, ctx: DistContext) -> Params:
    """The element-wise sum of ``params`` over all ranks (new tensors; one flat collective).

    Float summation order is torch's, not task order: use :func:`gather_tasks` where the result
    must be bitwise the single-process one.
    """
    if not ctx.distributed:
        return dict(params)
    flat = _flat(params).clone()
    with failures(ctx, "summing meta-gradients"):
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return _unflat(flat, params)


def mean_by_all_reduce(local_mean: Params, local_tasks: int, n_tasks: int, ctx: DistContext) -> Params:
    """The meta-batch mean from each rank's mean over its ``local_tasks`` tasks: Σ_r m_r·n_r / n.

    Equal to the one-process mean up to float summation order; sends |θ| values per rank.
    """
    if not ctx.distributed:
        return dict(local_mean)
    summed = all_reduce_sum({k: v * local_tasks for k, v in local_mean.items()}, ctx)
    return {k: v / n_tasks for k, v in summed.items()}


def gather_tasks(local: Params, n_tasks: int, ctx: DistContext) -> Params:
    """Per-task values stacked on a leading task axis, from every rank, in task order.

    Args:
        local: this rank's tensors shaped ``(len(ctx.slice(n_tasks)), ...)``, e.g. the
            output of ``estimators.per_task(..., part=ctx.slice(n))``.
        n_tasks: the whole batch's task count.
        ctx: the context.

    Returns ``(n_tasks, ...)`` tensors on every rank, identical to what one process computing
    all tasks would stack (one padded ``all_gather`` of a flat buffer: uneven slices are
    padded to the largest and trimmed).
    """
    if not ctx.distributed:
        return dict(local)
    mine = ctx.slice(n_tasks)
    count = mine.stop - mine.start
    widest = task_slice(n_tasks, 0, ctx.world_size)
    pad = widest.stop - widest.start
    flat = torch.cat([v.reshape(count, -1) for v in local.values()], dim=1) if local else None
    if flat is None:
        return {}
    buffer = flat.new_zeros((pad, flat.shape[1]))
    buffer[:count] = flat
    pieces = [torch.empty_like(buffer) for _ in range(ctx.world_size)]
    with failures(ctx, "gathering per-task values"):
        dist.all_gather(pieces, buffer)
    rows = []
    for rank, piece in enumerate(pieces):
        part = task_slice(n_tasks, rank, ctx.world_size)
        rows.append(piece[: part.stop - part.start])
    full = torch.cat(rows, dim=0)
    return _unflat(full, local, lead=(n_tasks,))


def mean_over_tasks(local: Params, n_tasks: int, ctx: DistContext) -> Params:
    """The meta-batch mean of per-task gradients, bitwise as one process computes it.

    :func:`gather_tasks`, then ``mean(dim=0)`` over the full task-ordered stack: the same
    reduction ``estimators.meta_gradient`` applies in one process.
    """
    return {k: v.mean(dim=0) for k, v in gather_tasks(local, n_tasks, ctx).items()}


def gather_values(local: Tensor, n_tasks: int, ctx: DistContext) -> Tensor:
    """Per-task scalars (e.g. evaluation accuracies) from every rank, in task order.

    ``local`` is 1-D with this rank's slice; the result is 1-D of length ``n_tasks`` on every
    rank, so means and t-intervals computed from it equal the one-process ones.
    """
    return gather_tasks({"v": local.reshape(-1, 1)}, n_tasks, ctx)["v"].reshape(n_tasks)


def broadcast_params(params: Params, ctx: DistContext, src: int = 0) -> None:
    """Overwrite ``params`` in place with rank ``src``'s values (e.g. θ after a resume)."""
    if not ctx.distributed:
        return
    flat = _flat({k: v.detach() for k, v in params.items()}).clone()
    with failures(ctx, "broadcasting parameters"):
        dist.broadcast(flat, src=src)
    with torch.no_grad():
        for name, value in _unflat(flat, params).items():
            params[name].copy_(value)


def broadcast_object(value: object, ctx: DistContext, src: int = 0) -> object:
    """Rank ``src``'s ``value`` on every rank (picklable; small things: a resume iteration, a
    checkpoint's state dict, whether the results file already holds a point)."""
    if not ctx.distributed:
        return value
    box = [value]
    with failures(ctx, "receiving rank 0's state"):
        dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(ctx: DistContext, doing: str = "waiting for the other ranks") -> None:
    """Wait for every rank (bounded by the timeout); nothing for a single process.

    Implemented as a tiny all_reduce: gloo's and nccl's barriers honour the timeout less
    reliably than a collective does.
    """
    if not ctx.distributed:
        return
    flag = torch.ones(1, device=ctx.device)
    with failures(ctx, doing):
        dist.all_reduce(flag)


def same_on_all_ranks(params: Params, ctx: DistContext) -> bool:
    """True when every rank holds bitwise the same ``params`` (a cheap divergence check:
    compares the element-wise max and min over ranks)."""
    if not ctx.distributed:
        return True
    flat = _flat({k: v.detach() for k, v in params.items()}).clone()
    high, low = flat.clone(), flat.clone()
    with failures(ctx, "checking parameters agree"):
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return bool(torch.equal(high, low))


# ----------------------------------------------------------------------------------------
# The one call the training loop makes


def meta_gradient_on(ctx: DistContext, method: str, theta: Params, loss: LossFn, support: Data, query: Data,
                     config: EstimatorConfig, batching: str = "vmap", chunk_size: int | None = None,
                     generator: torch.Generator | None = None) -> MetaGradient:
    """``estimators.meta_gradient`` over the whole meta-batch, shared out over the ranks of ``ctx``.

    Every rank passes the SAME ``support``/``query`` (the whole meta-batch) and generator; each
    computes the tasks ``ctx.slice(n)`` and gets the mean over all ``n`` tasks back:

    * ``vmap`` batching: per-task gradients gathered in task order (:func:`mean_over_tasks`),
      bitwise the one-process result; ``meta_batch × |θ|`` values exchanged.
    * ``loop`` batching (the low-memory protocol): each rank accumulates its tasks into one
      buffer, then :func:`mean_by_all_reduce`; ``|θ|`` values exchanged, equal to one process
      up to float summation order.

    A single-process ``ctx`` calls ``meta_gradient`` unchanged. ``seconds`` is this rank's
    wall time including communication; ``tasks`` is the whole meta-batch.
    """
    if not ctx.distributed:
        return meta_gradient(method, theta, loss, support, query, config, batching, chunk_size, generator)
    start = time.perf_counter()
    n_tasks = int(support[0].shape[0])
    check_split(n_tasks, ctx)
    part = ctx.slice(n_tasks)
    estimator = get(method)
    # `--nu auto`: one ν from the whole batch, the same on every rank
    config = resolve_nu(method, theta, loss, support, query, method_config(estimator, config), batching,
                        chunk_size)
    if batching == "loop":
        local = meta_gradient(method, theta, loss, support, query, config, batching, chunk_size, generator,
                              part)
        grad = mean_by_all_reduce(local.grad, local.tasks, n_tasks, ctx)
    else:
        stacked = per_task(method, theta, loss, support, query, config, batching, chunk_size, generator, part)
        grad = mean_over_tasks(stacked, n_tasks, ctx)
    nu = estimator.nu(config, next(iter(theta.values())).dtype)
    return MetaGradient(grad=grad, tasks=n_tasks, seconds=time.perf_counter() - start, batching=batching,
                        nu=nu)
