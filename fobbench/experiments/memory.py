"""The memory benchmark: peak memory of one full meta-gradient update per method and size.

For each sweep point (ConvNet channels, or Transformer ``d_model`` / ``seq``) and each method,
a fresh model and fresh tasks are built from the seed, and one *update* is measured:
``meta_gradient`` over the meta-batch followed by an outer SGD step on θ. The paper's protocol
is the default: tasks one at a time (``batching="loop"``), FO-B-MAML's two inner solves
sequential (as its estimator does), ``torch.cuda.max_memory_allocated`` on a GPU
(App. D.3, D.5). Without a GPU the CPU backend counts live tensor storage at the allocator
level, and ``estimate`` runs the same update on the ``meta`` device.

Attention runs through ``scaled_dot_product_attention``; its backend changes memory several
times over at long sequences, so it is a setting (``sdpa``) and the kernel each method really
used is recorded. Second-order methods (registry ``order == "second"``: MAML, iMAML) need the
math kernel for double backward / forward-over-reverse and fall back to it from ``default``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from fobbench.errors import FobbenchError
from fobbench.estimators import BATCHING, EstimatorConfig, get, meta_gradient
from fobbench.experiments.runner import Output, Record, Sink, Tick
from fobbench.inner import InnerConfig
from fobbench.measure.estimate import CpuSdpaOnMeta
from fobbench.measure.memory import BACKENDS, MIB, PeakMemory, limit_bytes, measure_cpu, measure_estimate
from fobbench.meta_optim import apply, make_outer
from fobbench.models.transformer import SDPA_MODES, observed_sdpa_kernel, sdpa_context
from fobbench.params import Data, LossFn, classification_loss
from fobbench.results import Measurement
from fobbench.validate import one_of

ARCHS = ("convnet", "transformer", "plugin")
SWEEP_SIZES = {"convnet": ("channels",), "transformer": ("d_model", "seq"), "plugin": ("size",)}
"""The sizes a sweep can vary, per architecture."""

DEFAULT_DEPTH = {"convnet": 4, "transformer": 1, "plugin": 1}

STATUS_OOM = "oom"
INFO_COLUMNS = ("status", "sweep", "sdpa_backend", "message")


@dataclass(frozen=True)
class MemorySettings:
    """Everything that defines a memory sweep besides the swept sizes.

    Attributes:
        arch: ``convnet`` or ``transformer``.
        backend: ``cpu`` (default), ``cuda`` or ``estimate`` (meta device).
        tasks: tasks in the meta-batch (default 1: with ``loop`` batching the peak is one task's
            working set whatever the meta-batch, while time grows with it; raise it for ``vmap``).
        batch: examples in each task's support set and in its query set (default 4).
        ways: classes per task (default 5).
        depth: conv blocks (ConvNet, default 4) or Transformer blocks (default 1); None picks
            the architecture's default.
        heads: attention heads (default 8, App. D.5).
        ffn: feed-forward hidden units (default 512, App. D.5).
        image: ConvNet input side in pixels (default 16).
        in_channels: ConvNet input channels (default 1).
        steps: K inner steps (default 5, the paper's).
        inner_lr: inner step size α (default 0.1).
        lam: λ (default 2.0, the paper's).
        nu: ν of FO-B-MAML (default 0.1, the paper's).
        cg_steps: iMAML conjugate-gradient steps (default 5, the paper's).
        es_samples: ES-MAML antithetic directions (default 2: memory depends on it only through
            the pre-drawn directions, ``tasks × es_samples × |θ|``, while time grows linearly).
        es_sigma: ES-MAML smoothing radius (default 0.01).
        meta_lr: step of the outer SGD update that closes the update (default 1e-3).
        batching: ``loop`` (default, tasks one at a time: the paper's protocol) or ``vmap``.
        sdpa: ``default`` (PyTorch's choice; second-order methods fall back to math) or ``math``.
        limit_mib: stop an update as ``oom`` above this many MiB over the baseline (None: none).
        seed: seeds the model, the tasks and ES-MAML's directions (default 0).
        model: with ``arch="plugin"``, the memory plugin (a registered name or
            ``package.module:factory``, :mod:`fobbench.plugins`) called with each swept size.
    """

    arch: str
    backend: str = "cpu"
    tasks: int = 1
    batch: int = 4
    ways: int = 5
    depth: int | None = None
    heads: int = 8
    ffn: int = 512
    image: int = 16
    in_channels: int = 1
    steps: int = 5
    inner_lr: float = 0.1
    lam: float = 2.0
    nu: float = 0.1
    cg_steps: int = 5
    es_samples: int = 2
    es_sigma: float = 0.01
    meta_lr: float = 1e-3
    batching: str = "loop"
    sdpa: str = "default"
    limit_mib: float | None = None
    seed: int = 0
    model: str | None = None
    estimator: EstimatorConfig = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        one_of(self.arch, ARCHS, "--arch")
        if self.backend not in BACKENDS:
            raise FobbenchError(f"unknown backend '{self.backend}' (choose from {', '.join(BACKENDS)})")
        one_of(self.batching, BATCHING, "--batching")
        one_of(self.sdpa, SDPA_MODES, "--sdpa")
        if self.depth is None:
            object.__setattr__(self, "depth", DEFAULT_DEPTH[self.arch])
        for name in ("tasks", "batch", "ways", "depth", "heads", "ffn", "image", "in_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise FobbenchError(f"--{name.replace('_', '-')} must be an integer >= 1 (got {value})")
        if not (self.meta_lr > 0 and math.isfinite(self.meta_lr)):
            raise FobbenchError(f"--meta-lr must be > 0 (got {self.meta_lr})")
        limit_bytes(self.limit_mib)
        inner = InnerConfig(steps=self.steps, lr=self.inner_lr, lam=self.lam)
        estimator = EstimatorConfig(inner=inner, nu=self.nu, cg_steps=self.cg_steps,
                                    es_samples=self.es_samples, es_sigma=self.es_sigma)
        object.__setattr__(self, "estimator", estimator)

    @property
    def benchmark(self) -> str:
        """``memory.convnet`` or ``memory.transformer``."""
        return f"memory.{self.arch}"

    def fixed_columns(self) -> dict[str, object]:
        """The settings written as point columns of every row (all sizes and hyperparameters)."""
        common = {
            "tasks": self.tasks, "batch": self.batch, "ways": self.ways, "depth": self.depth,
            "inner_steps": self.steps, "inner_lr": self.inner_lr, "lam": self.lam, "nu": self.nu,
            "cg_steps": self.cg_steps, "es_samples": self.es_samples, "es_sigma": self.es_sigma,
            "meta_lr": self.meta_lr, "batching": self.batching,
            "limit_mib": "" if self.limit_mib is None else self.limit_mib,
        }
        if self.arch == "transformer":
            return {"heads": self.heads, "ffn": self.ffn, "sdpa": self.sdpa, **common}
        if self.arch == "plugin":
            return {"model": self.model, **common}
        return {"image": self.image, "in_channels": self.in_channels, **common}

    def point_columns(self) -> tuple[str, ...]:
        """Point columns of the results file: the sweep sizes, then :meth:`fixed_columns`."""
        return (*SWEEP_SIZES[self.arch], *self.fixed_columns())

    def check(self, points: list[dict[str, int]]) -> None:
        """Refuse points this architecture cannot build, before anything is measured."""
        for point in points:
            d_model = point.get("d_model")
            if d_model is not None and d_model % self.heads:
                raise FobbenchError(f"--d-model {d_model} is not divisible by --heads {self.heads}")

    def hashed(self) -> dict[str, object]:
        """Settings outside the point columns that still define a point (for the config hash)."""
        return {"arch": self.arch, "backend": self.backend}


def sweep_points(arch: str, sizes: dict[str, list[int]]) -> tuple[str, list[dict[str, int]]]:
    """The points of a sweep and the name of the swept size.

    Args:
        arch: ``convnet`` or ``transformer``.
        sizes: values of each size in :data:`SWEEP_SIZES` for ``arch``; at most one of them may
            hold several values (the swept one).

    Returns:
        ``(sweep, points)``: the swept size (the first size when none varies) and one dict of
        sizes per point, in the order given.
    """
    names = SWEEP_SIZES[arch]
    missing = [n for n in names if not sizes.get(n)]
    if missing:
        raise FobbenchError(f"memory sweep of {arch} needs --{missing[0].replace('_', '-')}")
    varying = [n for n in names if len(sizes[n]) > 1]
    if len(varying) > 1:
        raise FobbenchError(
            "sweep one size at a time: " + " and ".join(f"--{n.replace('_', '-')}" for n in varying)
            + " both have several values"
        )
    sweep = varying[0] if varying else names[-1]
    points = [dict(zip(names, combo,
                       strict=False)) for combo in itertools.product(*(sizes[n] for n in names))]
    return sweep, points


@dataclass
class Workload:
    """A model, its meta-parameters and a batch of tasks, ready for one update."""

    model: nn.Module
    support: Data
    query: Data
    has_attention: bool
    loss: LossFn | None = None

    @property
    def theta(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_parameters())

    def resident(self) -> list[torch.Tensor]:
        """Tensors alive before the update: parameters, buffers and data."""
        return [*self.model.parameters(), *self.model.buffers(), *self.support, *self.query]


SIZE_ARGUMENT = {"convnet": "channels", "transformer": "seq", "plugin": "size"}
"""The point size each architecture's memory plugin takes as its ``size`` argument; the point's
other sizes (the Transformer's ``d_model``) are passed by keyword."""


def plugin_options(settings: MemorySettings, point: dict[str, int]) -> dict[str, object]:
    """Keyword options of the memory plugin at ``point``: the point's other sizes and the
    settings a model or its tasks depend on (the factory receives those it names)."""
    others = {k: v for k, v in point.items() if k != SIZE_ARGUMENT[settings.arch]}
    return {**others, "depth": settings.depth, "ways": settings.ways, "tasks": settings.tasks,
            "batch": settings.batch, "heads": settings.heads, "ffn": settings.ffn, "image": settings.image,
            "in_channels": settings.in_channels, "seed": settings.seed}


def build(settings: MemorySettings, point: dict[str, int], device: str) -> Workload:
    """Model and tasks of ``point`` on ``device`` (``meta`` for estimates), seeded by the settings.

    Every architecture, the built-in ``convnet`` and ``transformer`` included, is a memory plugin
    resolved by name (:func:`fobbench.plugins.memory_model`; ``--model`` for others). The model
    is initialised on CPU from ``settings.seed`` and moved, so every backend sees the same
    parameters; on ``meta`` nothing is allocated (the data are empty meta tensors).
    """
    from fobbench import plugins

    settings.check([point])
    spec = str(settings.model) if settings.arch == "plugin" else settings.arch
    factory = plugins.memory_model(spec, plugin_options(settings, point))
    size = point[SIZE_ARGUMENT[settings.arch]]
    if device == "meta":
        with torch.device("meta"):
            case = factory(size)
    else:
        torch.manual_seed(settings.seed)
        case = factory(size)
        moved = type(case.tasks)(tuple(t.to(device) for t in case.tasks.support),
                                 tuple(t.to(device) for t in case.tasks.query))
        case = case._replace(model=case.model.to(device), tasks=moved)
    loss = None if case.loss is None else case.loss(case.model)
    return Workload(case.model, case.tasks.support, case.tasks.query, case.attention, loss)


def make_update(settings: MemorySettings, method: str, work: Workload) -> Callable[[], None]:
    """One full update of ``method``: meta-gradient over the tasks, then an outer SGD step.

    Gradients are cleared at the end, so nothing outlives the update but the new θ (in place).
    """
    theta = work.theta
    loss = work.loss or classification_loss(work.model)
    outer = make_outer("sgd", theta.values(), settings.meta_lr)

    def update() -> None:
        generator = torch.Generator().manual_seed(settings.seed)
        result = meta_gradient(method, theta, loss, work.support, work.query, settings.estimator,
                               batching=settings.batching, generator=generator)
        apply(outer, theta, result.grad)
        del result
        for p in theta.values():
            p.grad = None

    return update


def sdpa_mode(settings: MemorySettings, method: str) -> tuple[str, bool]:
    """The SDPA mode ``method`` runs with and whether it fell back to math from ``default``."""
    if settings.sdpa == "default" and get(method).order == "second":
        return "math", True
    return settings.sdpa, False


def measurements(m: PeakMemory) -> list[Measurement]:
    """Peak above baseline (bytes, MiB), absolute peak, baseline, reserved and time of one update."""
    by = m.measured_by
    rows = [
        Measurement("peak_bytes", m.peak_bytes, "bytes", by),
        Measurement("peak_mib", m.peak_bytes / MIB, "MiB", by),
        Measurement("peak_abs_bytes", m.absolute_bytes, "bytes", by),
        Measurement("baseline_bytes", float(m.baseline_bytes), "bytes", by),
    ]
    if m.measured_by.startswith("cuda"):
        rows.append(Measurement("reserved_bytes", m.reserved_bytes, "bytes", "cuda_max_memory_reserved"))
    if m.measured_by != "estimate":
        rows.append(Measurement("seconds", m.seconds, "s", "wall_clock"))
    return rows


def measure_point(settings: MemorySettings, point: dict[str, int], method: str) -> tuple[PeakMemory, str]:
    """Build, run and measure one update of ``method`` at ``point``.

    Returns:
        the memory measurement and the SDPA kernel used (``''`` for the ConvNet; e.g.
        ``flash_attention``, ``math``, ``math (second-order fallback)``).
    """
    get(method)
    device = {"cpu": "cpu", "estimate": "meta", "cuda": "cuda"}[settings.backend]
    if settings.backend == "cuda":
        from fobbench.measure.cuda import measure_cuda  # it checks the device itself
    work = build(settings, point, device)
    update = make_update(settings, method, work)
    mode, fallback = sdpa_mode(settings, method)
    limit = limit_bytes(settings.limit_mib)
    redirect = CpuSdpaOnMeta() if device == "meta" else nullcontext()
    with sdpa_context(mode):
        kernel = ""
        if work.has_attention:
            with redirect, torch.no_grad():  # one probe forward of one task, before measuring
                kernel = observed_sdpa_kernel(work.model, work.support[0][0])
            kernel += " (second-order fallback)" if fallback else ""
        if settings.backend == "cuda":
            memory = measure_cuda(update, limit)
        elif settings.backend == "estimate":
            memory = measure_estimate(update, work.resident(), limit)
        else:
            memory = measure_cpu(update, work.resident(), limit)
    return memory, kernel


@dataclass(frozen=True)
class MemorySweep:
    """The runner's spec of a memory sweep: every (point, method) measured in order.

    Attributes:
        settings: everything but the swept sizes.
        points: the swept sizes of each point (:func:`sweep_points`).
        methods: estimators, measured one after another at each point.
        sweep: the name of the swept size (``seq``, ``d_model``, ``channels``).
        seeds: seeds of model, tasks and ES directions; the sweep is repeated for each.
    """

    settings: MemorySettings
    points: tuple[dict[str, int], ...]
    methods: tuple[str, ...]
    sweep: str
    seeds: tuple[int, ...] = (0,)

    def outputs(self) -> list[Output]:
        """One CSV; rows record the device the update ran on (``meta`` for estimates)."""
        backend = self.settings.backend
        return [Output("", self.settings.benchmark, self.settings.point_columns(), INFO_COLUMNS,
                       device="meta" if backend == "estimate" else backend)]

    def total(self) -> int:
        """One unit per (point, method)."""
        return len(self.seeds) * len(self.points) * len(self.methods)

    def records(self, sink: Sink) -> Iterator[Record | Tick]:
        """Measure each (point, method) not already in a resumed file. Out-of-memory points
        give a record with status ``oom`` and the sweep continues."""
        fixed, hashed = self.settings.fixed_columns(), self.settings.hashed()
        for seed, sizes, method in itertools.product(self.seeds, self.points, self.methods):
            settings = replace(self.settings, seed=seed)
            record = Record(method, {**sizes, **fixed}, hashed, seed)
            if sink.done(record):
                yield record
                continue
            memory, kernel = measure_point(settings, sizes, method)
            info = {"status": memory.status, "sweep": self.sweep, "sdpa_backend": kernel,
                    "message": memory.message}
            yield Tick(0, f"{self.settings.benchmark} {self.sweep}={sizes[self.sweep]} {method}")
            yield replace(record, measurements=measurements(memory), info=info)
