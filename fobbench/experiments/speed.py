"""The speed benchmark: time (and peak memory) of one meta-gradient per method, batching and
meta-batch size, against the method's honest floor and the peer libraries.

For each meta-batch size a meta-batch of the problem's training tasks is drawn from the seed
and the model is built from the seed, so every contender sees the same θ and tasks. The
contenders of a method are:

- fobbench itself per batching: ``vmap`` (tasks batched by ``torch.func.vmap``), ``loop`` (one
  task at a time; MAML with plain autograd) and ``compiled`` (the vmap call under
  ``torch.compile``; the first, compiling call recorded apart as ``compile_sec``);
- each requested peer library that implements the method (``impl`` = ``higher``, ...);
- the floors (``impl`` = ``floor``): ``batching`` ``plain`` is the honest floor (the registered
  passes as ordinary ``nn.Module`` forward+backward over all tasks' examples at once),
  ``vmap-ref`` the per-task ``vmap(grad)`` reference and, when compiled rows are timed,
  ``plain-compiled`` the honest floor's passes under ``torch.compile`` (see
  :mod:`fobbench.measure.floor`). Every row's ``floor_ratio`` is against the honest floor;
  compiled rows also get ``compiled_floor_ratio``, against ``plain-compiled``.

Before a contender is timed its meta-gradient is computed once in float64 on a float64 copy
of the same model and tasks and compared with fobbench's (``vmap``; ``loop`` for the vmap row
itself) by global-norm relative error: ``agreement`` in every row. Compiled rows are compared
in float32 (a float64 recompile would double the compile time). Times come from
``torch.utils.benchmark`` (:mod:`fobbench.measure.timing`): ``rounds`` rounds visit the
contenders in turn (interleaved), each round times every contender with
``Timer.blocked_autorange``; every block's per-call time is a ``seconds`` row, and the median
and interquartile range over all blocks are ``seconds_median`` and ``seconds_iqr``. The peak
of live tensor bytes of one call (CPU allocator accounting, :func:`~fobbench.measure.memory.measure_cpu`)
is measured in a separate call, since the tracker slows every operator (not for compiled rows).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from fobbench.errors import FobbenchError
from fobbench.estimators import ALL_BATCHINGS, COMPILED, EstimatorConfig, get, meta_gradient
from fobbench.experiments.runner import Output, Record, Sink, Tick
from fobbench.measure.floor import (
    COMPILED_REFERENCE,
    HONEST,
    VMAP_REFERENCE,
    compiled_floor_calls,
    honest_floor,
    timed_floor,
    vmap_floor,
)
from fobbench.measure.memory import MIB, measure_cpu
from fobbench.measure.timing import MEASURED_BY, time_call
from fobbench.params import Data, Params, classification_loss, relative_error
from fobbench.peers import Peer, check_inner, unavailable
from fobbench.problems.base import FewShotProblem, TaskBatch
from fobbench.results import Measurement
from fobbench.validate import integer, one_of, positive

BATCHINGS = ALL_BATCHINGS
"""fobbench's ways of batching a meta-gradient over tasks in this benchmark."""

FLOOR_IMPL = "floor"
COMPILED_FLOOR = "plain-compiled"
FLOOR_BATCHINGS = {"plain": HONEST, "vmap-ref": VMAP_REFERENCE, COMPILED_FLOOR: COMPILED_REFERENCE}
"""The floor rows' batchings and what each measures; ``plain-compiled`` only beside compiled rows."""

POINT_COLUMNS = (
    "problem", "ways", "shots", "queries", "meta_batch", "impl", "batching", "inner_steps", "inner_lr",
    "lam", "nu", "cg_steps", "es_samples",
)
INFO_COLUMNS = ("status", "note")


@dataclass(frozen=True)
class SpeedSettings:
    """What ``fobbench speed`` measures.

    Attributes:
        methods: fobbench estimators (default maml, fomaml, fobmaml-sym).
        batchings: fobbench batchings among :data:`BATCHINGS` (default vmap and loop).
        meta_batches: tasks per meta-gradient, one point each (default (16,)).
        peers: peer libraries to time beside fobbench (see :mod:`fobbench.peers`).
        estimator: inner solver and method constants.
        rounds: interleaved rounds over all contenders (default 3).
        min_run_time: seconds ``blocked_autorange`` spends on a contender per round (default 1.0).
        memory: measure the peak of one call per contender (default True; CPU only).
        floors: time the floors (default True).
        seed: seeds the model and the tasks (default 0).
        device: ``cpu`` or ``cuda``.
    """

    methods: tuple[str, ...] = ("maml", "fomaml", "fobmaml-sym")
    batchings: tuple[str, ...] = ("vmap", "loop")
    meta_batches: tuple[int, ...] = (16,)
    peers: tuple[Peer, ...] = ()
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    rounds: int = 3
    min_run_time: float = 1.0
    memory: bool = True
    floors: bool = True
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in self.methods:
            if not get(name).trainable:
                raise FobbenchError(f"--methods: '{name}' needs a closed form (no network to time)")
        for batching in self.batchings:
            one_of(batching, BATCHINGS, "--batching")
        if not self.meta_batches or any(not isinstance(b, int) or b < 1 for b in self.meta_batches):
            raise FobbenchError(f"--meta-batch must be integers >= 1 (got {list(self.meta_batches)})")
        integer(self.rounds, "--rounds")
        positive(self.min_run_time, "--min-run-time", " seconds")


@dataclass
class Contender:
    """One timed row: who computes the meta-gradient and how.

    Attributes:
        method, impl, batching: the row's identity.
        call: one float32 meta-gradient (what is timed); None for a skipped row.
        check: computes the agreement (relative error against fobbench's meta-gradient).
        agreement_by: how ``check`` compares (float64, or float32 for compiled rows).
        note: why the contender was skipped ('' when it was not).
        compile_sec: seconds of the first (compiling) call of a compiled contender.
        times: per-call seconds of every timed block, over all rounds.
    """

    method: str
    impl: str
    batching: str
    call: Callable[[], object] | None
    check: Callable[[], float] | None = None
    note: str = ""
    status: str = "ok"
    compile_sec: float = math.nan
    agreement: float = math.nan
    agreement_by: str = "float64_global_norm"
    peak_bytes: float = math.nan
    times: list[float] = field(default_factory=list)


@dataclass
class Workload:
    """The model, θ and one meta-batch in float32 (timed) and float64 (agreement)."""

    model: nn.Module
    batch: TaskBatch
    model64: nn.Module
    batch64: TaskBatch

    @property
    def theta(self) -> Params:
        return dict(self.model.named_parameters())


def _double(batch: TaskBatch) -> TaskBatch:
    def cast(data: Data) -> Data:
        return tuple(t.double() if t.is_floating_point() else t for t in data)

    return TaskBatch(cast(batch.support), cast(batch.query))


def build(problem: FewShotProblem, meta_batch: int, seed: int, device: str) -> Workload:
    """Model (from ``seed``) and one meta-batch of training tasks (seeded) on ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = problem.model().to(device)
    batch = problem.sample("train", meta_batch, torch.Generator().manual_seed(seed))
    batch = TaskBatch(tuple(t.to(device) for t in batch.support), tuple(t.to(device) for t in batch.query))
    return Workload(model, batch, copy.deepcopy(model).double(), _double(batch))


def fobbench_call(method: str, batching: str, work: Workload, config: EstimatorConfig,
                  double: bool = False) -> Callable[[], Params]:
    """One meta-gradient of ``method`` with fobbench's ``vmap``, ``loop`` or ``compiled`` batching."""
    model, batch = (work.model64, work.batch64) if double else (work.model, work.batch)
    loss = classification_loss(model)
    theta = dict(model.named_parameters())

    def call() -> Params:
        generator = torch.Generator().manual_seed(0)
        return meta_gradient(method, theta, loss, batch.support, batch.query, config, batching=batching,
                             generator=generator).grad

    return call


def compiled_call(method: str, work: Workload, config: EstimatorConfig) -> tuple[Callable[[], Params], float]:
    """fobbench's ``compiled`` batching (``torch.compile`` of the vmapped meta-gradient,
    :mod:`fobbench.estimators.compiled`); (call, seconds of the first, compiling call).

    Raises:
        FobbenchError: the method cannot be compiled, or torch.compile failed (the row says why).
    """
    call = fobbench_call(method, COMPILED, work, config)
    start = time.perf_counter()
    call()
    return call, time.perf_counter() - start


def peer_call(peer: Peer, method: str, work: Workload, config: EstimatorConfig,
              double: bool = False) -> Callable[[], Params]:
    """One meta-gradient of ``method`` by ``peer`` on the same model, θ and tasks."""
    fn = peer.meta_gradient_fn()
    model, batch = (work.model64, work.batch64) if double else (work.model, work.batch)
    return lambda: fn(method, model, batch.support, batch.query, config.inner)


def _against(call: Callable[[], Params], truth: Callable[[], Params]) -> Callable[[], float]:
    """A check: the global-norm relative error of ``call()`` against ``truth()``."""
    return lambda: relative_error(call(), truth())


def contenders(settings: SpeedSettings, method: str, work: Workload, notes: list[str]) -> list[Contender]:
    """The contenders of ``method`` on ``work``: fobbench's batchings, then the peers.

    Peers that are not importable or cannot run the inner solver add a one-line note to
    ``notes`` (once) and no row; a compile failure gives a ``skipped`` row that says why.
    """
    config = settings.estimator
    rows: list[Contender] = []
    for batching in settings.batchings:
        if batching == "compiled":
            try:
                call, seconds = compiled_call(method, work, config)
            except FobbenchError as error:
                rows.append(Contender(method, "fobbench", batching, None, note=f"{error}; not timed",
                                      status="skipped"))
                continue
            rows.append(Contender(method, "fobbench", batching, call,
                                  check=_against(call, fobbench_call(method, "vmap", work, config)),
                                  agreement_by="float32_global_norm", compile_sec=seconds))
            continue
        truth = "loop" if batching == "vmap" else "vmap"
        rows.append(Contender(method, "fobbench", batching, fobbench_call(method, batching, work, config),
                              check=_against(fobbench_call(method, batching, work, config, double=True),
                                             fobbench_call(method, truth, work, config, double=True))))
    for peer in settings.peers:
        if method not in peer.methods:
            continue
        why = unavailable(peer) or check_inner(peer, config.inner)
        if why is not None:
            if why not in notes:
                notes.append(why)
            continue
        rows.append(Contender(method, peer.name, "loop", peer_call(peer, method, work, config),
                              check=_against(peer_call(peer, method, work, config, double=True),
                                             fobbench_call(method, "vmap", work, config, double=True))))
    return rows


def _iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return float(q[2] - q[0])


def _timed(times: list[float]) -> list[Measurement]:
    """One ``seconds`` row per block, then their median and IQR."""
    rows = [Measurement("seconds", t, "s", MEASURED_BY) for t in times]
    return rows + [Measurement("seconds_median", float(statistics.median(times)), "s", MEASURED_BY),
                   Measurement("seconds_iqr", _iqr(times), "s", MEASURED_BY)]


def contender_measurements(row: Contender, floor: float,
                           compiled_floor: float = math.nan) -> list[Measurement]:
    """Every figure of a timed contender (see the module docstring); ``compiled_floor`` (the
    ``plain-compiled`` floor's median) only for compiled rows."""
    if row.status != "ok":
        return [Measurement("seconds_median", math.nan, "s", MEASURED_BY)]
    out = _timed(row.times)
    median = float(statistics.median(row.times))
    if math.isfinite(floor) and floor > 0:
        out += [Measurement("floor_sec", floor, "s", MEASURED_BY),
                Measurement("floor_ratio", median / floor, "1", MEASURED_BY)]
    if row.batching == COMPILED and math.isfinite(compiled_floor) and compiled_floor > 0:
        out += [Measurement("compiled_floor_sec", compiled_floor, "s", MEASURED_BY),
                Measurement("compiled_floor_ratio", median / compiled_floor, "1", MEASURED_BY)]
    out.append(Measurement("agreement", row.agreement, "1", row.agreement_by))
    if math.isfinite(row.peak_bytes):
        out += [Measurement("peak_bytes", row.peak_bytes, "bytes", "cpu_dispatch_tracker"),
                Measurement("peak_mib", row.peak_bytes / MIB, "MiB", "cpu_dispatch_tracker")]
    if math.isfinite(row.compile_sec):
        out.append(Measurement("compile_sec", row.compile_sec, "s", "wall_clock"))
    return out


@dataclass(frozen=True)
class SpeedRun:
    """The runner's spec of ``fobbench speed`` (see the module docstring).

    Attributes:
        problem: the few-shot problem whose model and tasks are timed.
        settings: what to time.
        benchmark: ``speed.<problem>``.
    """

    problem: FewShotProblem
    settings: SpeedSettings
    benchmark: str
    notes: list[str] = field(default_factory=list, compare=False)

    def outputs(self) -> list[Output]:
        """One CSV."""
        return [Output("", self.benchmark, POINT_COLUMNS, INFO_COLUMNS, device=self.settings.device)]

    def total(self) -> int:
        """One unit per contender and round (peers counted as if all were available)."""
        s = self.settings
        per_method = len(s.batchings) + len(s.peers) + (len(self.floor_batchings()) if s.floors else 0)
        return len(s.meta_batches) * len(s.methods) * per_method * s.rounds

    def floor_batchings(self) -> tuple[str, ...]:
        """The floor rows of each method: ``plain`` and ``vmap-ref``, and ``plain-compiled``
        when compiled rows are timed."""
        compiled = COMPILED in self.settings.batchings
        return tuple(b for b in FLOOR_BATCHINGS if compiled or b != COMPILED_FLOOR)

    def point(self, meta_batch: int, impl: str, batching: str) -> dict[str, object]:
        """The point columns of one row."""
        est, problem = self.settings.estimator, self.problem
        return {
            "problem": problem.name, "ways": problem.ways, "shots": problem.shots, "queries": problem.queries,
            "meta_batch": meta_batch, "impl": impl, "batching": batching, "inner_steps": est.inner.steps,
            "inner_lr": est.inner.lr, "lam": est.inner.lam, "nu": est.nu, "cg_steps": est.cg_steps,
            "es_samples": est.es_samples,
        }

    def settings_hash(self) -> dict[str, object]:
        """Hashed settings outside the point columns."""
        s = self.settings
        return {"problem_settings": dict(self.problem.describe()),
                "inner_optimizer": s.estimator.inner.optimizer, "es_sigma": s.estimator.es_sigma,
                "seed": s.seed, "device": s.device}

    def records(self, sink: Sink) -> Iterator[Record | Tick]:
        """Each meta-batch size in turn: agreement checks, peak memory, interleaved timing rounds."""
        s = self.settings
        for meta_batch in s.meta_batches:
            work = build(self.problem, meta_batch, s.seed, s.device)
            rows: list[Contender] = []
            floors: list[tuple[str, str, list[float]]] = []
            compiled: dict[str, Callable[[], object]] = {}
            compile_sec = math.nan
            for method in s.methods:
                record = Record(method, self.point(meta_batch, "fobbench", s.batchings[0] if s.batchings
                                                   else "vmap"), self.settings_hash(), s.seed)
                if s.batchings and sink.done(record):
                    continue
                rows += contenders(s, method, work, self.notes)
                if s.floors:
                    floors += [(method, batching, []) for batching in self.floor_batchings()]
            if any(b == COMPILED_FLOOR for _, b, _ in floors):
                compiled, compile_sec = self._compile_floor(work, {m for m, _, _ in floors})
                floors = [f for f in floors if f[1] != COMPILED_FLOOR or compiled]
            yield from self._prepare(rows)
            for _ in range(s.rounds):
                for row in rows:
                    if row.call is not None:
                        row.times.extend(time_call(row.call, s.min_run_time).times)
                    yield Tick(1, f"{self.benchmark} B={meta_batch} {row.method} {row.impl} {row.batching}")
                for method, batching, values in floors:
                    values.append(self._floor(work, method, batching, compiled))
                    yield Tick(1, f"{self.benchmark} B={meta_batch} {method} floor {batching}")
            yield from self._records(meta_batch, rows, floors, compile_sec)

    def _prepare(self, rows: list[Contender]) -> Iterator[Tick]:
        """Agreement of every contender (before any timing), then its peak memory.

        Compiled rows get no peak: the CPU tracker is a ``TorchDispatchMode``, which does not
        see inside a compiled graph, and calling a compiled function under it made dynamo run
        every later call of it eagerly (measured: the "compiled" rows timed as the vmap ones).
        """
        for row in rows:
            if row.call is None or row.check is None:
                continue
            row.agreement = float(row.check())
            if self.settings.memory and self.settings.device == "cpu" and row.batching != COMPILED:
                row.peak_bytes = measure_cpu(lambda c=row.call: c(), []).peak_bytes
            yield Tick(0, f"{self.benchmark} checked {row.method} {row.impl} {row.batching}")

    def _compile_floor(self, work: Workload,
                       methods: set[str]) -> tuple[dict[str, Callable[[], object]], float]:
        """The ``plain-compiled`` floor's calls, each pass kind the methods need called once
        (compiled), and the seconds that took; ({}, nan) and a note if compiling failed."""
        kinds = {kind for m in methods
                 for kind, count in get(m).floor(self.settings.estimator)._asdict().items() if count > 0}
        start = time.perf_counter()
        try:
            calls = compiled_floor_calls(work.model, work.batch.support, work.batch.query)
            for kind in sorted(kinds):
                calls[kind]()
        except FobbenchError as error:
            self.notes.append(f"compiled floor not timed: {error}")
            return {}, math.nan
        return calls, time.perf_counter() - start

    def _floor(self, work: Workload, method: str, batching: str,
               compiled: dict[str, Callable[[], object]]) -> float:
        passes = get(method).floor(self.settings.estimator)
        run_time = self.settings.min_run_time / 2
        if batching == "plain":
            return honest_floor(work.model, work.batch.support, work.batch.query, passes, run_time).seconds
        if batching == COMPILED_FLOOR:
            return timed_floor(compiled, passes, COMPILED_REFERENCE, run_time).seconds
        loss = classification_loss(work.model)
        return vmap_floor(loss, work.theta, work.batch.support, work.batch.query, passes, run_time).seconds

    def _records(self, meta_batch: int, rows: list[Contender], floors: list[tuple[str, str, list[float]]],
                 compile_sec: float) -> Iterator[Record]:
        """The floor rows (the compiled floor's with the seconds its passes took to compile,
        shared by the methods), then the contenders."""
        median = {(m, b): float(statistics.median(v)) for m, b, v in floors if v}
        hashed = self.settings_hash()
        for method, batching, values in floors:
            passes = get(method).floor(self.settings.estimator)
            measured = _timed(values) + [Measurement("passes", float(sum(passes)), "1", "registry")]
            if batching == COMPILED_FLOOR and math.isfinite(compile_sec):
                measured.append(Measurement("compile_sec", compile_sec, "s", "wall_clock"))
            yield Record(method, self.point(meta_batch, FLOOR_IMPL, batching), hashed, self.settings.seed,
                         measured, info={"status": "ok", "note": FLOOR_BATCHINGS[batching]}, advance=0)
        for row in rows:
            point = self.point(meta_batch, row.impl, row.batching)
            measured = contender_measurements(row, median.get((row.method, "plain"), math.nan),
                                              median.get((row.method, COMPILED_FLOOR), math.nan))
            yield Record(row.method, point, hashed, self.settings.seed, measured,
                         info={"status": row.status, "note": row.note}, advance=0)
