"""The speed floor of a method: its unavoidable gradient passes, timed the fastest standard way.

A method's registration declares the plain forward+backward passes it cannot avoid per task
(:class:`~fobbench.estimators.FloorPasses`: e.g. 2K − 1 passes of f̂ + f for FO-B-MAML-sym, K
support passes and one query pass for MAML). The *honest floor* times each kind of pass as
ordinary training on the same examples would: one ``nn.Module`` forward and one
``loss.backward()`` over the examples of all tasks of the meta-batch concatenated into one
batch (support and query examples together for ``both``). That is what a method doing those
evaluations could cost if the per-task structure were free; by construction no eager method
should need less (a ratio below ~1 means the floor is measured badly or the method skips work).

A *compiled* method (``torch.compile`` of the whole meta-gradient) can run below it: the eager
floor pays Python and operator dispatch for every operator of every pass, which a compiled
graph does not. Its reference is the same passes compiled (:func:`compiled_floor_calls`,
:data:`COMPILED_REFERENCE`), which says how much of the time is the per-task structure.

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
from fobbench.params import Data, LossFn, Params, classification_loss, detached

HONEST = "plain_module_fwd_bwd"
"""``measured_by``-style name of the honest floor (recorded with every floor figure)."""
VMAP_REFERENCE = "vmap_grad_shared_theta"
"""Name of the per-task-θ ``vmap(grad)`` reference figure."""
COMPILED_REFERENCE = "plain_fwd_bwd_compiled"
"""Name of the honest floor's passes under ``torch.compile`` (the compiled rows' reference)."""


@dataclass(frozen=True)
class Floor:
    """A floor and the per-pass times it is made of.

    Attributes:
        seconds: Σ passes × seconds per pass (the floor of one meta-gradient).
        per_pass: seconds of one pass of each kind (``both``, ``support``, ``query``) that
            the method needs (kinds with zero passes are not timed).
        passes: the registered passes.
        kind: :data:`HONEST`, :data:`VMAP_REFERENCE` or :data:`COMPILED_REFERENCE`.
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


def timed_floor(calls: dict[str, Callable[[], object]], passes: FloorPasses, kind: str,
                min_run_time: float = 0.5, statistic: str = "median",
                clock: Callable[[], float] | None = None) -> Floor:
    """A floor from one call per pass kind (``both``, ``support``, ``query``): each kind the
    method needs is timed with :func:`~fobbench.measure.timing.time_call` and the floor is the
    count-weighted sum of the per-pass ``statistic`` over the timer's blocks: ``median``
    (default; ``speed`` sets it against medians) or ``min`` (the fastest the passes ran: a
    lower bound that a short burst of load on a shared machine cannot raise, which ``train``
    uses against its mean over many iterations). ``clock`` as for
    :func:`~fobbench.measure.timing.time_call` (``train`` on CPU: process CPU time)."""
    pick = _STATISTICS[statistic]
    per_pass = {name: pick(time_call(calls[name], min_run_time, clock=clock))
                for name, count in passes._asdict().items() if count > 0}
    seconds = sum(getattr(passes, name) * value for name, value in per_pass.items())
    return Floor(seconds, per_pass, passes, kind)


def honest_floor(model: nn.Module, support: Data, query: Data, passes: FloorPasses,
                 min_run_time: float = 0.5, statistic: str = "median",
                 clock: Callable[[], float] | None = None) -> Floor:
    """The honest floor of a method with ``passes`` on this meta-batch (see module docstring);
    ``min_run_time``, ``statistic`` and ``clock`` as for :func:`timed_floor`. ``model``'s
    ``.grad`` fields are cleared afterwards."""
    calls = {name: (lambda x=x, y=y: plain_pass(model, x, y))
             for name, (x, y) in pass_inputs(support, query).items()}
    try:
        return timed_floor(calls, passes, HONEST, min_run_time, statistic, clock)
    finally:
        for p in model.parameters():
            p.grad = None


def compiled_floor_calls(model: nn.Module, support: Data, query: Data) -> dict[str, Callable[[], object]]:
    """The honest floor's passes under ``torch.compile``, one call per pass kind (for
    :func:`timed_floor`): the gradient of the same cross-entropy over the same concatenated
    examples with θ shared, ``torch.func.grad`` of the model's functional call compiled as
    fobbench compiles a meta-gradient (:func:`fobbench.estimators.compiled.compile_function`).

    Why: a compiled meta-gradient has no per-operator dispatch, which the eager honest floor
    pays once per operator and pass, so it can run below that floor; this reference says how
    far it is from the same passes compiled. Each pass kind's first call compiles (time it
    apart)."""
    from fobbench.estimators.compiled import compile_function

    loss = classification_loss(model)
    theta = detached(dict(model.named_parameters()))
    step = compile_function(torch.func.grad(lambda th, x, y: loss(th, (x, y))),
                            next(iter(theta.values())).device.type)
    inputs = pass_inputs(support, query)
    return {name: (lambda x=x, y=y: step(theta, x, y)) for name, (x, y) in inputs.items()}


def vmap_floor(loss: LossFn, theta: Params, support: Data, query: Data, passes: FloorPasses,
               min_run_time: float = 0.5, statistic: str = "median",
               clock: Callable[[], float] | None = None) -> Floor:
    """The per-task ``vmap(grad(loss))`` reference: one vmapped call over the tasks per pass,
    θ shared (``in_dims=None``); of f̂ + f (``both``), f̂ (``support``) or f (``query``).
    ``statistic`` and ``clock`` as for :func:`timed_floor` (``train`` times a plugin's own
    loss with it)."""
    theta = detached(theta)

    def joint(th: Params, s: Data, q: Data) -> Tensor:
        return loss(th, s) + loss(th, q)

    def one(th: Params, data: Data, _: Data) -> Tensor:
        return loss(th, data)

    batched = {name: torch.func.vmap(torch.func.grad(f), in_dims=(None, 0, 0))
               for name, f in (("both", joint), ("support", one), ("query", one))}
    data = {"both": (support, query), "support": (support, support), "query": (query, query)}
    calls = {name: (lambda s=batched[name], a=data[name][0], b=data[name][1]: s(theta, a, b))
             for name in batched}
    return timed_floor(calls, passes, VMAP_REFERENCE, min_run_time, statistic, clock)
