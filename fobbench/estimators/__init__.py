"""Meta-gradient estimators: one registry, one protocol, batched over tasks.

Every method takes parameters θ (a dict), a functional loss, a batch of tasks (support and
query data with a leading task axis) and an :class:`EstimatorConfig`, and returns the
meta-gradient averaged over the tasks::

    from fobbench.estimators import EstimatorConfig, meta_gradient
    from fobbench.inner import InnerConfig
    from fobbench.params import classification_loss

    theta = dict(model.named_parameters())
    config = EstimatorConfig(inner=InnerConfig(steps=5, lr=0.1, lam=2.0), nu=0.1)
    result = meta_gradient("fobmaml-sym", theta, classification_loss(model),
                           support=(xs, ys), query=(xq, yq), config=config)
    result.grad        # {name: tensor}, same shapes as θ
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from fobbench.errors import FobbenchError
from fobbench.estimators import compiled
from fobbench.estimators.base import (
    PROTOCOLS,
    REGISTRY,
    Estimator,
    EstimatorConfig,
    FloorPasses,
    accumulates,
    get,
    hyperparameter_help,
    method_config,
    names,
    parse_methods,
    rank_of,
    register,
    unregister,
)
from fobbench.estimators.nu_rule import AUTO, measure
from fobbench.methods import ALL_BATCHINGS, BATCHING, COMPILED
from fobbench.params import Data, LossFn, Params, detached, zeros_like

__all__ = [
    "ALL_BATCHINGS", "BATCHING", "COMPILED", "PROTOCOLS", "REGISTRY", "Estimator", "EstimatorConfig",
    "FloorPasses", "MetaGradient",
    "accumulates", "get", "hyperparameter_help", "meta_gradient", "method_config", "names", "parse_methods",
    "per_task", "rank_of", "register", "resolve_nu", "unregister",
]

# Every module of this package registers its method on import: adding an estimator is adding
# a module (the registry, CLI choices, tables and figures pick it up from there).
for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


@dataclass(frozen=True)
class MetaGradient:
    """An estimate and how it was obtained.

    Attributes:
        grad: the meta-gradient averaged over tasks, shaped like θ.
        tasks: number of tasks averaged.
        seconds: wall time of the estimate (s).
        batching: ``vmap``, ``loop`` or ``compiled``.
        nu: the ν FO-B-MAML ran with (the ``--nu auto`` choice included); None for methods
            without ν.
    """

    grad: Params
    tasks: int
    seconds: float
    batching: str
    nu: float | None = None


def _task_count(support: Data) -> int:
    return int(support[0].shape[0])


def _noise(estimator: Estimator, theta: Params, tasks: int, config: EstimatorConfig,
           generator: torch.Generator | None) -> Params | None:
    if not estimator.needs_noise:
        return None
    return {
        n: torch.randn((tasks, config.es_samples, *p.shape), generator=generator, dtype=p.dtype).to(p.device)
        for n, p in theta.items()
    }


def _tasks(support: Data, query: Data, noise: Params | None
           ) -> Iterator[tuple[Data, Data, Params | None]]:
    """Each task's support, query and ES-MAML directions, in turn."""
    for i in range(_task_count(support)):
        task_noise = None if noise is None else {n: z[i] for n, z in noise.items()}
        yield tuple(d[i] for d in support), tuple(d[i] for d in query), task_noise


def _part(support: Data, query: Data, noise: Params | None, part: slice | None
          ) -> tuple[Data, Data, Params | None]:
    """The tasks ``part`` of a batch (all of it for None); noise was drawn for the whole batch."""
    if part is None:
        return support, query, noise
    if part.step not in (None, 1):
        raise FobbenchError(f"task part must be a contiguous slice (got step {part.step})")
    sliced_noise = None if noise is None else {n: z[part] for n, z in noise.items()}
    return tuple(d[part] for d in support), tuple(d[part] for d in query), sliced_noise


def resolve_nu(method: str, theta: Params, loss: LossFn, support: Data, query: Data,
               config: EstimatorConfig, batching: str = "vmap", chunk_size: int | None = None
               ) -> EstimatorConfig:
    """``config`` with ``--nu auto`` replaced by this batch's ν (unchanged otherwise).

    One ν per call (per outer step): the rule of :mod:`fobbench.estimators.nu_rule` from θ's
    dtype, λ, the stencil, the batch's measured curvature L̂ of f̂ (two train-loss gradients
    per task) and, for a method that solves the unperturbed problem (forward), its measured
    solve error ε (one extra unperturbed solve per task; :func:`~fobbench.estimators.nu_rule.measure`).
    ``support``/``query`` hold the whole batch, so every part of a split batch (one rank's
    slice) gets the same ν.
    """
    estimator = get(method)
    if config.nu != AUTO or not estimator.uses_nu:
        return config
    dtype = next(iter(theta.values())).dtype
    curvature, error = measure(theta, loss, support, query, config.inner, estimator.solves_unperturbed,
                               batching, chunk_size)
    return replace(config, nu=estimator.nu(config, dtype, error, curvature))


def per_task(method: str, theta: Params, loss: LossFn, support: Data, query: Data,
             config: EstimatorConfig, batching: str = "vmap", chunk_size: int | None = None,
             generator: torch.Generator | None = None, part: slice | None = None) -> Params:
    """Each task's meta-gradient, stacked on a leading task axis.

    Args:
        method: registry name.
        theta: meta-parameters (detached internally).
        loss: functional loss ``loss(params, data)``.
        support, query: task data with a leading task axis.
        config: estimator settings.
        batching: ``vmap`` (default; all tasks in one batched call, ``chunk_size`` at a time),
            ``loop`` (one task at a time: lowest memory) or ``compiled`` (the vmap call under
            ``torch.compile``, :mod:`fobbench.estimators.compiled`; the first call compiles).
        chunk_size: tasks per vmap chunk (None: all at once).
        generator: seeds ES-MAML's Gaussian directions.
        part: compute only these tasks of the batch (None: all). ``support``/``query`` still
            hold the whole meta-batch and ES-MAML's directions are drawn for all of it, then
            sliced, so each task's estimate does not depend on how a batch is split (one
            slice per rank under torch.distributed, :func:`fobbench.distributed.task_slice`).
    """
    estimator = get(method)
    config = method_config(estimator, config)
    if batching not in ALL_BATCHINGS:
        raise FobbenchError(f"unknown batching '{batching}' (choose from {', '.join(ALL_BATCHINGS)})")
    if chunk_size is not None and chunk_size < 1:
        raise FobbenchError(f"chunk size must be >= 1 (got {chunk_size})")
    theta = detached(theta)
    config = resolve_nu(method, theta, loss, support, query, config, batching, chunk_size)  # whole batch
    noise = _noise(estimator, theta, _task_count(support), config, generator)
    support, query, noise = _part(support, query, noise, part)
    in_dims = (None, 0, 0, 0 if noise is not None else None)
    if batching == COMPILED:
        config = replace(config, in_place=False)
        device_type = next(iter(theta.values())).device.type
        step = compiled.vmapped(estimator, loss, config, in_dims, chunk_size, device_type)
        return step(theta, support, query, noise)
    if batching == "vmap" and estimator.vmappable:
        config = replace(config, in_place=False)

        def one(th: Params, s: Data, q: Data, z: Params | None) -> Params:
            return estimator.fn(th, loss, s, q, config, z)

        return torch.func.vmap(one, in_dims=in_dims, chunk_size=chunk_size)(theta, support, query, noise)
    # One task at a time on detached θ, outside any transform: in-place solves are allowed.
    config = replace(config, in_place=True)
    grads = [estimator.fn(theta, loss, s, q, config, z) for s, q, z in _tasks(support, query, noise)]
    return {n: torch.stack([g[n] for g in grads]) for n in theta}


def meta_gradient(method: str, theta: Params, loss: LossFn, support: Data, query: Data,
                  config: EstimatorConfig, batching: str = "vmap", chunk_size: int | None = None,
                  generator: torch.Generator | None = None, part: slice | None = None) -> MetaGradient:
    """The meta-gradient of ``method`` averaged over a batch of tasks (see :func:`per_task`).

    With ``part``, the average is over those tasks only (``tasks`` says how many).

    In ``loop`` mode the tasks are added one at a time into one meta-gradient buffer,
    allocated first, so only one task's working set is alive at once (the paper's memory
    protocol); FO-B-MAML adds each of its solutions as soon as it has it.
    """
    start = time.perf_counter()
    estimator = get(method)
    config = method_config(estimator, config)  # e.g. λ = 0 for plain methods under `published`
    config = resolve_nu(method, theta, loss, support, query, config, batching, chunk_size)  # whole batch
    if batching == "loop":
        theta_d = detached(theta)
        noise = _noise(estimator, theta_d, _task_count(support), config, generator)
        support, query, noise = _part(support, query, noise, part)
        tasks = _task_count(support)
        grad = zeros_like(theta_d)
        config = replace(config, in_place=True)  # one task at a time, outside any transform
        for s, q, z in _tasks(support, query, noise):
            estimator.accumulate(theta_d, loss, s, q, config, z, grad)
        for value in grad.values():
            value.div_(tasks)
    else:
        stacked = per_task(method, theta, loss, support, query, config, batching, chunk_size, generator, part)
        tasks = next(iter(stacked.values())).shape[0] if stacked else 0
        grad = {n: v.mean(dim=0) for n, v in stacked.items()}
    nu = estimator.nu(config, next(iter(theta.values())).dtype)  # resolved above: a number
    return MetaGradient(grad=grad, tasks=tasks, seconds=time.perf_counter() - start, batching=batching,
                        nu=nu)
