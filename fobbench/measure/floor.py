"""The speed floor of a method: its unavoidable gradient passes, timed the fastest standard way.

A method's registration declares the plain forward+backward passes it cannot avoid per task
(:class:`~fobbench.estimators.FloorPasses`: e.g. 2K − 1 passes of f̂ + f for FO-B-MAML-sym, K
support passes and one query pass for MAML). The *honest floor* times each kind of pass as
ordinary training on the same examples would: one ``nn.Module`` forward and one
``loss.backward()`` over the examples of all tasks of the meta-batch concatenated into one
batch (support and query examples together for ``both``). That is what a method doing those
evaluations could cost if the per-task structure were free; by construction no method should
need less (a ratio below ~1 means the floor is measured badly or the method skips work).

The older figure, one ``vmap(grad(loss))`` call over the tasks with θ shared per pass, is kept
as a second, named reference (:func:`vmap_floor`): it includes torch.func's per-task overhead
and was *slower* than FO-B-MAML-sym itself (issue 14), so it is not a floor.

BatchNorm normalises over the concatenated batch here instead of per task; the arithmetic is
the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fobbench.estimators import FloorPasses
from fobbench.measure.timing import Timing, time_call
from fobbench.params import Data, LossFn, Params, detached

HONEST = "plain_module_fwd_bwd"
"""``measured_by``-style name of the honest floor (recorded with every floor figure)."""
VMAP_REFERENCE = "vmap_grad_shared_theta"
"""Name of the per-task-θ ``vmap(grad)`` reference figure."""


@dataclass(frozen=True)
class Floor:
    """A floor and the per-pass times it is made of.

    Attributes:
        seconds: Σ passes × seconds per pass (the floor of one meta-gradient).
        per_pass: seconds of one pass of each kind (``both``, ``support``, ``query``) that
            the method needs (kinds with zero passes are not timed).
        passes: the registered passes.
        kind: :data:`HONEST` or :data:`VMAP_REFERENCE`.
    """

    seconds: float
    per_pass: dict[str, float]
    passes: FloorPasses
    kind: str


def _flat(data: Data) -> tuple[Tensor, Tensor]:
    """Task-batched ``(x, y)`` as one batch of all tasks' examples."""
    x, y = data[0], data[1]
    return x.reshape(-1, *x.shape[2:]), y.reshape(-1)


def pass_inputs(support: Data, query: Data) -> dict[str, tuple[Tensor, Tensor]]:
    """The concatenated examples of each pass kind: support+query, support, query."""
    xs, ys = _flat(support)
    xq, yq = _flat(query)
    return {"both": (torch.cat([xs, xq]), torch.cat([ys, yq])), "support": (xs, ys), "query": (xq, yq)}


def plain_pass(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """One ordinary training pass: forward, cross-entropy, ``backward()`` into ``.grad``."""
    for p in model.parameters():
        p.grad = None
    nn.functional.cross_entropy(model(x), y).backward()


_STATISTICS: dict[str, Callable[[Timing], float]] = {"median": lambda t: t.median,
                                                    "min": lambda t: min(t.times)}
"""How a floor reads one pass kind's timing: the median over blocks, or the fastest block."""


def floor_work(support: Data, query: Data, passes: FloorPasses) -> list[tuple[int, Tensor, Tensor]]:
    """(count, examples, labels) of each pass kind the floor has: what :func:`run_floor_work` runs."""
    inputs = pass_inputs(support, query)
    return [(count, *inputs[kind]) for kind, count in passes._asdict().items() if count > 0]


def run_floor_work(model: nn.Module, work: list[tuple[int, Tensor, Tensor]]) -> None:
    """The floor's plain passes once (``train`` times them between iterations); ``.grad`` cleared."""
    try:
        for count, x, y in work:
            for _ in range(count):
                plain_pass(model, x, y)
    finally:
        for p in model.parameters():
            p.grad = None


def honest_floor(model: nn.Module, support: Data, query: Data, passes: FloorPasses,
                 min_run_time: float = 0.5, statistic: str = "median",
                 clock: Callable[[], float] | None = None) -> Floor:
    """The honest floor of a method with ``passes`` on this meta-batch (see module docstring).

    Each pass kind the method needs is timed with :func:`~fobbench.measure.timing.time_call`;
    the floor is the count-weighted sum of the per-pass ``statistic`` over the timer's blocks:
    ``median`` (default; ``speed`` sets it against medians) or ``min`` (the fastest the passes
    ran: a lower bound that a short burst of load on a shared machine cannot raise, which
    ``train`` uses against its mean over many iterations). ``clock`` as for
    :func:`~fobbench.measure.timing.time_call` (``train`` on CPU: process CPU time). ``model``'s
    ``.grad`` fields are cleared afterwards.
    """
    pick = _STATISTICS[statistic]
    inputs = pass_inputs(support, query)
    per_pass: dict[str, float] = {}
    try:
        for kind, count in passes._asdict().items():
            if count > 0:
                x, y = inputs[kind]
                per_pass[kind] = pick(time_call(lambda x=x, y=y: plain_pass(model, x, y), min_run_time,
                                                clock=clock))
    finally:
        for p in model.parameters():
            p.grad = None
    seconds = sum(getattr(passes, kind) * value for kind, value in per_pass.items())
    return Floor(seconds, per_pass, passes, HONEST)


def vmap_floor(loss: LossFn, theta: Params, support: Data, query: Data, passes: FloorPasses,
               min_run_time: float = 0.5, statistic: str = "median",
               clock: Callable[[], float] | None = None) -> Floor:
    """The per-task ``vmap(grad(loss))`` reference: one vmapped call over the tasks per pass,
    θ shared (``in_dims=None``); of f̂ + f (``both``), f̂ (``support``) or f (``query``).
    ``statistic`` and ``clock`` as for :func:`honest_floor` (``train`` times a plugin's own
    loss with it)."""
    theta = detached(theta)

    def joint(th: Params, s: Data, q: Data) -> Tensor:
        return loss(th, s) + loss(th, q)

    def one(th: Params, data: Data, _: Data) -> Tensor:
        return loss(th, data)

    calls = {
        "both": (torch.func.vmap(torch.func.grad(joint), in_dims=(None, 0, 0)), support, query),
        "support": (torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0)), support, support),
        "query": (torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0)), query, query),
    }
    per_pass: dict[str, float] = {}
    for kind, count in passes._asdict().items():
        if count > 0:
            step, a, b = calls[kind]
            per_pass[kind] = _STATISTICS[statistic](time_call(lambda s=step, a=a, b=b: s(theta, a, b),
                                                              min_run_time, clock=clock))
    seconds = sum(getattr(passes, kind) * value for kind, value in per_pass.items())
    return Floor(seconds, per_pass, passes, VMAP_REFERENCE)
