"""``torch.compile`` of the vmapped per-task meta-gradient: the ``compiled`` batching.

The whole meta-batch's computation (``torch.func.vmap`` of the estimator over tasks, K inner
steps unrolled) is one graph for inductor, which fuses the per-task BatchNorm, pooling,
activation and update arithmetic that eager vmap runs as hundreds of small kernels. Measured
on the MNIST-1D Conv1D (16 tasks, K = 5, 1 CPU thread, side by side): 0.39× (FO-MAML), 0.43×
(FO-B-MAML-sym) and 0.50× (MAML) the eager vmap time, after a first call that compiles for
1–5 minutes on a 2-core CPU, or 7–20 s from the cache (README, ``fobbench speed``). Calls run
inside :func:`fobbench.models.forms.vmapped_compile`, so layers can take the form that compiles
best under ``vmap`` (the Conv1D's max-pooling does).

A compiled function is kept per (method, loss, settings, vmap dims, chunk size, device) for
the life of the process, and inductor's kernels persist in :func:`compile_cache`, so a second
process with the same shapes compiles from the cache. ``dynamic=False``: a new shape (another
meta-batch size) or another ν compiles again, which is why ``--nu auto`` (a new ν every outer
step) is refused with ``compiled`` (:func:`fobbench.methods.check_compilable`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from fobbench.errors import FobbenchError
from fobbench.estimators.base import Estimator, EstimatorConfig
from fobbench.methods import check_compilable
from fobbench.models.forms import vmapped_compile
from fobbench.params import Data, LossFn, Params
from fobbench.problems.cache import cache_root

_COMPILED: dict[tuple[object, ...], Callable[..., Params]] = {}

RECOMPILE_LIMIT = 256
"""Compiled settings (method, ν, K, shapes, ...) one process may hold (dynamo's default: 8)."""


def compile_cache() -> Path:
    """Where compiled kernels persist: ``inductor`` under fobbench's cache root
    (:func:`fobbench.problems.cache.cache_root`: ``$FOBBENCH_CACHE``, else
    ``$XDG_CACHE_HOME/fobbench``, else ``~/.cache/fobbench``), set as ``TORCHINDUCTOR_CACHE_DIR``.

    A ``TORCHINDUCTOR_CACHE_DIR`` of the user's wins. torch itself writes its default (a folder
    under /tmp) into that variable the first time anything asks for the cache, which may be
    before the first compile (it was in ``train``), so that value is replaced.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        chosen = str(cache_root() / "inductor")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = chosen
    folder = Path(chosen)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _options(device_type: str) -> dict[str, object]:
    """Inductor options: on CPU the graph's wrapper is generated C++ (``cpp_wrapper``), which
    measured 0.83× the time of the default Python wrapper on FO-MAML's meta-gradient (MNIST-1D
    Conv1D, 16 tasks, 1 thread): the graph launches hundreds of small kernels per call."""
    return {"cpp_wrapper": True} if device_type == "cpu" else {}


def vmapped(estimator: Estimator, loss: LossFn, config: EstimatorConfig, in_dims: tuple[object, ...],
            chunk_size: int | None, device_type: str = "cpu") -> Callable[..., Params]:
    """``torch.compile`` of ``vmap(estimator)`` over tasks; one per settings, reused.

    ``device_type``: where θ lives (``cpu`` or ``cuda``), which selects the inductor options.
    The returned function takes ``(theta, support, query, noise)`` like the eager vmap and
    returns the per-task meta-gradients. Its first call compiles; a failure there raises a
    one-line :class:`FobbenchError` naming the cause (e.g. no C++ compiler).
    """
    check_compilable(estimator, config.nu)
    key = (estimator.name, loss, config, in_dims, chunk_size, device_type)
    if key not in _COMPILED:
        def one(th: Params, s: Data, q: Data, z: Params | None) -> Params:
            return estimator.fn(th, loss, s, q, config, z)

        def batched(theta: Params, support: Data, query: Data, noise: Params | None) -> Params:
            return torch.func.vmap(one, in_dims=in_dims, chunk_size=chunk_size)(theta, support, query, noise)

        step = compile_function(batched, device_type)

        def call(*args: object) -> Params:
            with vmapped_compile():  # layers may take their vmap-friendly compiled form
                return step(*args)

        _COMPILED[key] = call
    return _COMPILED[key]


def compile_function(fn: Callable[..., Params], device_type: str = "cpu") -> Callable[..., Params]:
    """``fn`` under ``torch.compile`` as fobbench compiles: static shapes, the options of
    ``device_type`` (C++ wrapper on CPU), kernels in :func:`compile_cache`, failures as one line
    and no silent eager run (:func:`_reporting`). Also the compiled floor's passes
    (:func:`fobbench.measure.floor.compiled_floor_calls`), so both are compiled alike."""
    compile_cache()
    try:
        step = torch.compile(fn, dynamic=False, options=_options(device_type))
    except Exception as error:  # noqa: BLE001
        raise FobbenchError(f"torch.compile unavailable: {_first_line(error)}; "
                            "run without --compile") from None
    return _reporting(step)


def _reporting(fn: Callable[..., Params]) -> Callable[..., Params]:
    """``fn`` with any compile or run failure turned into one line (the cause's first line).

    The first call must produce a graph: dynamo runs a function it gives up on eagerly, with
    only a log line, and a "compiled" timing that is really the eager one would mislead.
    """
    from torch._dynamo.utils import counters  # only once something is compiled

    traced = False

    def call(*args: object) -> Params:
        nonlocal traced
        graphs = counters["stats"]["unique_graphs"]
        try:
            # Every compiled setting is a cache entry of the one code object `batched`: lift
            # dynamo's per-code-object limit (8), past which it would fall back to eager.
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                out = fn(*args)
        except FobbenchError:
            raise
        except Exception as error:  # noqa: BLE001 (inductor raises many kinds; the user needs one line)
            raise FobbenchError(f"torch.compile failed ({type(error).__name__}: {_first_line(error)}); "
                                "run without --compile") from None
        if not traced:
            if counters["stats"]["unique_graphs"] == graphs:
                raise FobbenchError("torch.compile gave up on the meta-gradient and would run it eagerly "
                                    "(see TORCH_LOGS=graph_breaks); run without --compile")
            traced = True
        return out

    return call


def _first_line(error: BaseException) -> str:
    """The first non-blank line of ``error``'s message, at most 160 characters."""
    return next((line for line in str(error).strip().splitlines() if line.strip()), "")[:160]
