"""Your model, your tasks: the public plugin protocols and how names resolve to them.

Two kinds of plugin, each a *factory* (a callable) found by name:

``--problem NAME|package.module:factory``  (``train problem``, ``gradcheck``)
    ``factory(**options)`` returns a :class:`Problem`: a task sampler, a model factory and
    (optionally) a loss. Options the factory's signature accepts are passed by keyword
    (``ways``, ``shots``, ``queries``, ``activation``, ``pool``... as the command has them).
``--model NAME|package.module:factory``  (``memory``)
    ``factory(size, **options)`` returns a :class:`MemoryCase` (or a ``(model, tasks)`` pair):
    a model and a batch of tasks at the swept size (width, depth, channels, sequence length...).
    Options the factory's signature names are passed by keyword (``seed``, ``tasks``, ``batch``,
    ``ways``, ``depth``... as ``memory`` has them); ``size`` alone is enough.

A NAME is an entry point of the group ``fobbench.problems`` / ``fobbench.models``
(``importlib.metadata``; a package registers one in its ``pyproject.toml``). The built-in
problems and models are registered through the same code path (:data:`BUILTIN`), so they and
installed ones appear by name in ``--help``. ``module:factory`` imports ``module`` with the
current directory on ``sys.path``.

Anything wrong (no such module or factory, the factory raises, the object lacks what the
protocol needs) is a :class:`PluginError`: one line naming the plugin and what is missing,
exit code 2, before anything is written.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from fobbench.errors import FobbenchError
from fobbench.params import LossFn, classification_loss
from fobbench.plugin_names import BUILTIN, MODELS, PROBLEMS, names, registered
from fobbench.problems.base import TaskBatch


class PluginError(FobbenchError):
    """A plugin could not be loaded or does not satisfy its protocol (one line, exit 2)."""


@runtime_checkable
class Problem(Protocol):
    """A task distribution with its model: what ``train`` and ``gradcheck`` need.

    Required:
        name: a short name (CSV column ``problem``).
        sample(split, tasks, generator): a :class:`TaskBatch` of ``tasks`` tasks from
            ``split`` (``train`` or ``eval``): ``support`` and ``query`` are tuples of tensors
            with a leading task axis, e.g. ``(x, y)`` shaped ``(tasks, n, ...)`` and
            ``(tasks, n)``; any shapes, any number of tensors, as long as ``loss`` reads them.
        model(): a freshly initialised ``nn.Module`` (from the global torch RNG).

    Optional:
        loss(model): a functional loss ``loss(params, data) -> scalar`` (default: cross-entropy
            of ``model(data[0])`` against ``data[1]``); set it for regression.
        kind: ``classification`` (default; ``train`` reports accuracy) or ``regression``.
        describe(): settings that define the problem (CSV rows and the config hash).
        ways, shots, queries: N-way K-shot shape, recorded when present.
    """

    name: str

    def sample(self, split: str, tasks: int, generator: torch.Generator) -> TaskBatch: ...

    def model(self) -> nn.Module: ...


class MemoryCase(NamedTuple):
    """What a memory-model factory returns for one swept size.

    Attributes:
        model: the network.
        tasks: a :class:`TaskBatch` (leading task axis).
        loss: ``loss(model) -> LossFn``; None: cross-entropy (as :class:`Problem`).
        attention: True when the model calls ``scaled_dot_product_attention``: ``memory`` then
            records which attention kernel ran (default False).
    """

    model: nn.Module
    tasks: TaskBatch
    loss: Callable[[nn.Module], LossFn] | None = None
    attention: bool = False


MemoryModel = Callable[..., "MemoryCase | tuple[nn.Module, TaskBatch]"]
"""``factory(size, **options) -> MemoryCase`` (or ``(model, tasks)``): the memory plugin protocol."""


def _option(group: str) -> str:
    return "--problem" if group == PROBLEMS else "--model"


def load(group: str, spec: str) -> Callable[..., Any]:
    """The factory named by ``spec``: a registered name or ``package.module:attribute``."""
    option = _option(group)
    spec = spec.strip()
    points = registered(group)
    if spec in points:
        value = points[spec].value
    elif ":" in spec:
        value = spec
    else:
        raise PluginError(f"{option} '{spec}': not a registered name ({', '.join(points) or 'none'}) "
                          "nor package.module:factory")
    module_name, _, attribute = value.partition(":")
    if not module_name or not attribute:
        raise PluginError(f"{option} '{spec}': expected package.module:factory")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 (any import failure is the plugin's)
        raise PluginError(f"{option} '{spec}': cannot import module '{module_name}' "
                          f"({type(error).__name__}: {_line(error)})") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise PluginError(f"{option} '{spec}': module '{module_name}' has no attribute '{attribute}'")
        target = getattr(target, part)
    if not callable(target):
        raise PluginError(f"{option} '{spec}': '{attribute}' is not callable (a factory is needed)")
    return target


def _line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:200] or "no message"


def _accepted(factory: Callable[..., Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """The options ``factory`` accepts by keyword (all of them if it takes ``**kwargs``)."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(options)
    return {k: v for k, v in options.items() if k in parameters}


def _is_data(value: object) -> bool:
    return isinstance(value, tuple) and len(value) > 0 and all(isinstance(t, Tensor) for t in value)


def check_tasks(label: str, tasks: object) -> TaskBatch:
    """``tasks`` as a :class:`TaskBatch`; a :class:`PluginError` naming what is wrong otherwise."""
    if not (isinstance(tasks, tuple) and len(tasks) == 2):
        raise PluginError(f"{label}: tasks must be a TaskBatch(support, query), got {type(tasks).__name__}")
    support, query = tasks
    for part, data in (("support", support), ("query", query)):
        if not _is_data(data):
            raise PluginError(f"{label}: {part} must be a non-empty tuple of tensors, "
                              f"got {type(data).__name__}")
    count = support[0].shape[0] if support[0].dim() else None
    if count is None or any(t.dim() == 0 or t.shape[0] != count for t in (*support, *query)):
        raise PluginError(f"{label}: every support and query tensor needs the same leading task axis")
    return TaskBatch(tuple(support), tuple(query))


def problem(spec: str, options: Mapping[str, Any] | None = None, check: bool = True) -> Problem:
    """The :class:`Problem` of ``spec`` built with the ``options`` its factory accepts.

    Options the factory does not name are not passed (unless it takes ``**kwargs``). With ``check``
    the problem is probed once (one task sampled, one model built) so a broken plugin fails
    here, with its name, instead of deep inside a run.
    """
    factory = load(PROBLEMS, spec)
    given = {k: v for k, v in (options or {}).items() if v is not None}
    kwargs = _accepted(factory, given)
    label = f"--problem '{spec}'"
    try:
        made = factory(**kwargs)
    except FobbenchError:
        raise
    except Exception as error:  # noqa: BLE001 (the factory's failure, reported on one line)
        raise PluginError(f"{label}: the factory raised {type(error).__name__}: {_line(error)}") from None
    missing = [a for a in ("name", "sample", "model") if not hasattr(made, a)]
    missing += [a for a in ("sample", "model") if hasattr(made, a) and not callable(getattr(made, a))]
    if missing:
        raise PluginError(f"{label}: {type(made).__name__} does not satisfy fobbench.plugins.Problem "
                          f"(missing {', '.join(dict.fromkeys(missing))})")
    if check:
        try:
            tasks = made.sample("train", 1, torch.Generator().manual_seed(0))
        except FobbenchError:
            raise
        except Exception as error:  # noqa: BLE001
            raise PluginError(f"{label}: sample() raised {type(error).__name__}: {_line(error)}") from None
        check_tasks(f"{label}: sample()", tasks)
        model = _call(label, "model()", made.model)
        if not isinstance(model, nn.Module):
            raise PluginError(f"{label}: model() must return a torch.nn.Module, got {type(model).__name__}")
    return made


def _call(label: str, what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except FobbenchError:
        raise
    except Exception as error:  # noqa: BLE001
        raise PluginError(f"{label}: {what} raised {type(error).__name__}: {_line(error)}") from None


def problem_loss(made: object, model: nn.Module) -> LossFn:
    """The problem's functional loss for ``model`` (cross-entropy unless it defines ``loss``)."""
    custom = getattr(made, "loss", None)
    return classification_loss(model) if custom is None else custom(model)


def describe(made: object) -> dict[str, object]:
    """The problem's settings (``describe()`` when defined, else its name)."""
    fn = getattr(made, "describe", None)
    return dict(fn()) if callable(fn) else {"problem": getattr(made, "name", "plugin")}


def memory_model(spec: str, options: Mapping[str, Any] | None = None) -> Callable[[int], MemoryCase]:
    """The memory factory of ``spec``, wrapped to return a checked :class:`MemoryCase`.

    ``options`` (``memory``'s settings and the point's other sizes) are passed by keyword to the
    factory where its signature names them (all of them if it takes ``**kwargs``).
    """
    factory = load(MODELS, spec)
    label = f"--model '{spec}'"
    kwargs = _accepted(factory, {k: v for k, v in (options or {}).items() if v is not None})

    def build(size: int) -> MemoryCase:
        made = _call(label, f"factory({size})", lambda: factory(size, **kwargs))
        if isinstance(made, MemoryCase) and isinstance(made.model, nn.Module):
            return made._replace(tasks=check_tasks(label, made.tasks))
        if isinstance(made, tuple) and len(made) in (2, 3) and isinstance(made[0], nn.Module):
            return MemoryCase(made[0], check_tasks(label, made[1]), made[2] if len(made) == 3 else None)
        raise PluginError(f"{label}: factory({size}) must return MemoryCase(model, tasks) or (model, tasks), "
                          f"got {type(made).__name__}")

    return build


__all__ = ["BUILTIN", "MODELS", "PROBLEMS", "MemoryCase", "MemoryModel", "PluginError", "Problem",
           "TaskBatch", "check_tasks", "describe", "load", "memory_model", "names", "problem", "problem_loss",
           "registered"]
