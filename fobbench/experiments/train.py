"""Few-shot meta-training with any estimator of the registry (paper §6.2–6.3, Fig. 2, Table 2).

One generic loop serves every :class:`~fobbench.problems.base.FewShotProblem` (MNIST-1D,
Omniglot). Per method and seed:

1. θ is initialised from the seed (same θ₀ for every method), the outer optimizer built.
2. Iteration t (1..T) samples a meta-batch of training tasks with a generator seeded by
   ``(seed, t)``, estimates the meta-gradient for all tasks at once (``vmap``) and applies
   one outer step. Because every random draw is a function of ``(seed, t)``, a run resumed
   from a checkpoint reproduces an uninterrupted run exactly.
3. At t = 0, every ``eval_every`` iterations and at t = T, θ is adapted (same inner solver,
   v = 0, K steps) on a FIXED set of held-out evaluation tasks (and a fixed set of training
   tasks) and the mean query accuracy with its 95% t-interval and the mean query loss are
   written through the results store, with timing metrics.
4. Every ``checkpoint_every`` iterations and at T, θ, the optimizer state, RNG states and
   timing counters are saved with ``torch.save``.

Speed is reported against a floor: the time of the plain forward+backward passes the
method cannot avoid (each estimator's registered ``floor``), each timed as one ordinary
``nn.Module`` forward+backward over the examples of all tasks of a meta-batch at once
(:func:`fobbench.measure.floor.honest_floor`).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fobbench import distributed as dd
from fobbench.errors import DivergedError, FobbenchError
from fobbench.estimators import ALL_BATCHINGS, COMPILED, EstimatorConfig, FloorPasses, get, method_config
from fobbench.estimators.nu_rule import AUTO
from fobbench.experiments.runner import Output, Record, Sink, Tick
from fobbench.inner import solve
from fobbench.measure.floor import floor_work, honest_floor, run_floor_work, vmap_floor
from fobbench.meta_optim import OUTER, apply, make_outer
from fobbench.methods import check_compilable
from fobbench.params import Data, LossFn, Params, classification_loss, detached
from fobbench.plugins import problem_loss
from fobbench.problems.base import FewShotProblem, TaskBatch
from fobbench.results import Measurement
from fobbench.stats import t_half_width
from fobbench.validate import integer, one_of, positive

INFO_COLUMNS = ("world_size",)
"""Per-row columns outside the config hash: ``world_size``, the number of torch.distributed
processes that trained the row (1 without torchrun), so runs with different N compare as one."""

POINT_COLUMNS = (
    "problem", "split", "split_hash", "ways", "shots", "queries", "meta_batch", "inner_steps", "inner_lr",
    "inner_optimizer", "lam", "nu", "cg_steps", "outer", "meta_lr", "eval_tasks", "iteration",
    "inner_protocol",
)
"""Columns of every ``train.*`` results row that define its point."""

PROCESS_CPU = "process_cpu_time"
"""``measured_by`` of the CPU-time speed figures (``train`` on CPU: ``time.process_time``)."""

FLOOR_SAMPLES = 20
"""About how many times a run re-measures its floor between iterations (classification
problems): one execution of the floor's passes every ⌈iterations/20⌉ timed iterations, ~1.5 s
of a 50-iteration MNIST-1D run."""

TIMING_METRICS = ("wall_time", "sec_per_iter", "cpu_sec_per_iter", "grad_sec", "floor_sec", "floor_ratio")
"""Metrics that are wall-clock measurements (differ between identical runs)."""

def floor_passes(method: str, config: EstimatorConfig) -> FloorPasses:
    """The passes of ``method``'s speed floor, as its registration declares
    (:attr:`~fobbench.estimators.Estimator.floor`; default K support + 1 query pass).

    Second-order work (backprop through the solver, Hessian-vector products) is overhead
    above the floor.
    """
    return get(method).floor(config)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a meta-training run.

    Attributes:
        methods: estimator names (any registry method but ``exact``).
        estimator: inner solver (K, α, λ) and method constants (ν, CG steps, ES samples).
        iterations: T, outer iterations (default 600, the paper's MNIST-1D schedule).
        meta_batch: tasks per meta-gradient (default 16).
        meta_lr: outer step size (default 3e-3).
        outer: outer optimizer, ``sgd|clipped|sngdm|adam`` (default ``adam``, the paper's).
        eval_every: iterations between evaluations (default 50; also at 0 and T).
        eval_tasks: fixed held-out tasks per evaluation (default 200).
        seeds: repeats; each seed fixes θ₀ and the task stream (default (0,)).
        checkpoint_every: iterations between checkpoints (default 100; also at T).
        chunk_size: tasks per vmap chunk (None: the whole meta-batch at once; evaluation then
            adapts ``meta_batch`` tasks at a time).
        batching: ``vmap`` (default), ``loop`` (one task at a time: least memory) or
            ``compiled`` (the vmap call under ``torch.compile``: ``--compile``).
        device: ``cpu`` or ``cuda``.
        floor_repeats: length of the up-front floor measurement in half-seconds per pass kind
            (fastest of the ``torch.utils.benchmark`` blocks; default 3). Classification runs
            replace it by the mean of the samples taken between iterations
            (:meth:`_MethodRun.sample_floor`) once they have one.
    """

    methods: tuple[str, ...] = ("fobmaml-sym",)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    iterations: int = 600
    meta_batch: int = 16
    meta_lr: float = 3e-3
    outer: str = "adam"
    eval_every: int = 50
    eval_tasks: int = 200
    seeds: tuple[int, ...] = (0,)
    checkpoint_every: int = 100
    chunk_size: int | None = None
    batching: str = "vmap"
    device: str = "cpu"
    floor_repeats: int = 3

    def __post_init__(self) -> None:
        if not self.methods:
            raise FobbenchError("--methods: no method given")
        for name in self.methods:
            if not get(name).trainable:
                raise FobbenchError(f"--methods: '{name}' cannot train a network (it needs a closed form)")
            method_config(get(name), self.estimator)  # e.g. --lam 0 with a method that needs λ
        checks = (
            ("--iterations", self.iterations, 1), ("--meta-batch", self.meta_batch, 1),
            ("--eval-every", self.eval_every, 1), ("--eval-tasks", self.eval_tasks, 2),
            ("--checkpoint-every", self.checkpoint_every, 1),
        )
        for option, value, least in checks:
            integer(value, option, least)
        if self.chunk_size is not None:
            integer(self.chunk_size, "--chunk-size")
        positive(self.meta_lr, "--meta-lr")
        one_of(self.outer, OUTER, "--outer", "optimizer")
        one_of(self.batching, ALL_BATCHINGS, "--batching")
        if self.batching == COMPILED:
            for name in self.methods:
                check_compilable(get(name), self.estimator.nu)
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise FobbenchError(f"--seeds must be integers >= 0 (got {list(self.seeds)})")
        if self.device not in ("cpu", "cuda"):
            raise FobbenchError(f"--device must be cpu or cuda (got {self.device})")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise FobbenchError("--device cuda: no CUDA device is available to this torch build")


# ----------------------------------------------------------------------------------------
# Random streams, task batches, timing


def stream_seed(*parts: object) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (e.g. ``(seed, "train", t)``)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def stream(*parts: object) -> torch.Generator:
    """A CPU generator seeded by :func:`stream_seed` of ``parts``."""
    return torch.Generator().manual_seed(stream_seed(*parts))


def to_device(batch: TaskBatch, device: str) -> TaskBatch:
    """``batch`` with every tensor on ``device``."""
    return TaskBatch(tuple(t.to(device) for t in batch.support), tuple(t.to(device) for t in batch.query))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True)
class Evaluation:
    """Query accuracy and loss after adaptation, over a fixed set of tasks.

    Attributes:
        acc: mean query accuracy over tasks (fraction).
        ci95: half-width of its 95% t-interval over tasks.
        loss: mean query cross-entropy (nats).
        tasks: number of tasks.
    """

    acc: float
    ci95: float
    loss: float
    tasks: int


def evaluate(model: nn.Module, theta: Params, tasks: TaskBatch, config: EstimatorConfig,
             chunk_size: int | None = None, loss: LossFn | None = None) -> Evaluation:
    """Adapt θ on each task's support set (v = 0, K steps), then score its query set.

    Every task is adapted independently from θ with the same inner solver the methods train
    with; BatchNorm uses the query batch's statistics (as in MAML evaluation). A plugin
    problem's own ``loss`` (regression) gives the query loss and a NaN accuracy.
    """
    return summarize(*evaluate_tasks(model, theta, tasks, config, chunk_size, loss=loss))


def summarize(losses: Tensor, accs: Tensor) -> Evaluation:
    """Mean accuracy, its 95% t-interval and mean loss from per-task query losses and accuracies
    (accuracy and interval are NaN for a plugin problem without accuracies)."""
    acc = accs.double().cpu().numpy()
    if np.isnan(acc).all():
        return Evaluation(acc=float("nan"), ci95=float("nan"), loss=float(losses.double().mean()),
                          tasks=len(acc))
    return Evaluation(acc=float(acc.mean()), ci95=t_half_width(acc), loss=float(losses.double().mean()),
                      tasks=len(acc))


def evaluate_tasks(model: nn.Module, theta: Params, tasks: TaskBatch, config: EstimatorConfig,
                   chunk_size: int | None = None, part: slice | None = None,
                   loss: LossFn | None = None) -> tuple[Tensor, Tensor]:
    """Per-task (query losses, query accuracies) of :func:`evaluate`, of the tasks ``part`` only
    when given (one rank's share under torch.distributed)."""
    if part is not None:
        tasks = TaskBatch(tuple(d[part] for d in tasks.support), tuple(d[part] for d in tasks.query))
    theta = detached(theta)
    if loss is not None:
        custom = loss

        def scored(th: Params, support: Data, query: Data) -> tuple[Tensor, Tensor]:
            phi = solve(th, custom, support, query, 0.0, config.inner)
            value = custom(phi, query)
            return value, torch.full_like(value, float("nan"))

        with torch.no_grad():
            return torch.func.vmap(scored, in_dims=(None, 0, 0), chunk_size=chunk_size)(
                theta, tasks.support, tasks.query)
    classification = classification_loss(model)

    def one(th: Params, support: Data, query: Data) -> tuple[Tensor, Tensor]:
        phi = solve(th, classification, support, query, 0.0, config.inner)
        logits = torch.func.functional_call(model, phi, (query[0],))
        return nn.functional.cross_entropy(logits, query[1]), (logits.argmax(-1) == query[1]).float().mean()

    with torch.no_grad():
        return torch.func.vmap(one, in_dims=(None, 0, 0), chunk_size=chunk_size)(
            theta, tasks.support, tasks.query
        )


def evaluate_on(ctx: dd.DistContext, model: nn.Module, theta: Params, tasks: TaskBatch,
                config: EstimatorConfig, chunk_size: int | None = None,
                loss: LossFn | None = None) -> Evaluation:
    """:func:`evaluate` with the tasks shared out over the ranks of ``ctx`` (a collective).

    Each rank adapts its slice; the per-task values are gathered in task order, so the mean
    and t-interval are computed from the same numbers as in one process.
    """
    if not ctx.distributed:
        return evaluate(model, theta, tasks, config, chunk_size, loss)
    count = int(tasks.support[0].shape[0])
    losses, accs = evaluate_tasks(model, theta, tasks, config, chunk_size, ctx.slice(count), loss)
    return summarize(dd.gather_values(losses, count, ctx), dd.gather_values(accs, count, ctx))


# ----------------------------------------------------------------------------------------
# Checkpoints


def _rng_state() -> dict[str, object]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, object] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, object]) -> None:
    torch.set_rng_state(state["torch"])  # type: ignore[arg-type]
    kind, keys, pos, has_gauss, cached = state["numpy"]  # type: ignore[misc]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_tuples(state["python"]))  # type: ignore[arg-type]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])  # type: ignore[arg-type]


def _tuples(value: object) -> object:
    """Lists back to tuples (``random.setstate`` wants the exact nesting it produced)."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    return value


def checkpoint_path(folder: Path, method: str, seed: int) -> Path:
    """Checkpoint file of one (method, seed) run inside ``folder``."""
    return folder / f"{method}-seed{seed}.pt"


def checkpoint_folder(csv_path: Path) -> Path:
    """Where the checkpoints of a results file live: ``<csv stem>-checkpoints/`` beside it."""
    return csv_path.parent / f"{csv_path.stem}-checkpoints"


def save_checkpoint(path: Path, state: dict[str, object]) -> None:
    """``torch.save`` to a temporary file, then an atomic rename (a kill never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, object]:
    """A checkpoint written by :func:`save_checkpoint` (tensors, numbers and strings only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (a foreign or damaged file is user input)
        raise FobbenchError(f"{path}: not a readable fobbench checkpoint ({type(error).__name__})") from None


# ----------------------------------------------------------------------------------------
# The loop


@dataclass
class _Timer:
    """Timing counters of one (method, seed) run, carried across resumes."""

    wall: float = 0.0          # seconds of this run in earlier processes
    iter_seconds: float = 0.0  # summed over timed iterations
    grad_seconds: float = 0.0
    timed: int = 0             # timed iterations (each process skips its first: warm-up)
    cpu_seconds: float = 0.0   # this process's CPU time over the cpu_timed iterations
    cpu_timed: int = 0         # (0 in checkpoints written before CPU time was kept)
    floor_seconds: float = 0.0  # floor samples taken between timed iterations (their clock)
    floor_samples: int = 0
    compile_seconds: float = math.nan  # wall time of this process's first, compiling iteration


def settings_of(problem: FewShotProblem, config: TrainConfig,
                method: str | None = None) -> tuple[dict[str, object], dict[str, object]]:
    """(point without iteration, hashed settings) of a run: the problem's description split
    into CSV columns and the rest (data arguments, estimator constants, batching, device).

    With ``method``, ``lam`` is the λ that method adapts with under the run's inner protocol
    (0 for MAML, FO-MAML, Reptile, ES-MAML under ``published``)."""
    from fobbench.plugins import describe as describe_of

    describe = describe_of(problem)
    est = config.estimator if method is None else method_config(get(method), config.estimator)
    point = {
        "problem": problem.name,
        "split": describe.pop("split", ""),
        "split_hash": describe.pop("split_hash", ""),
        "ways": getattr(problem, "ways", ""),
        "shots": getattr(problem, "shots", ""),
        "queries": getattr(problem, "queries", ""),
        "meta_batch": config.meta_batch,
        "inner_steps": est.inner.steps,
        "inner_lr": est.inner.lr,
        "inner_optimizer": est.inner.optimizer,
        "lam": est.inner.lam,
        "nu": est.nu,
        "cg_steps": est.cg_steps,
        "outer": config.outer,
        "meta_lr": config.meta_lr,
        "eval_tasks": config.eval_tasks,
        "inner_protocol": est.inner_protocol,
    }
    for key in ("problem", "ways", "shots", "queries"):
        describe.pop(key, None)
    settings = {
        "problem_settings": describe,
        "es_samples": est.es_samples,
        "imaml_damping": est.imaml_damping(),
        "es_sigma": est.es_sigma,
        "batching": config.batching,
        "device": config.device,
        "task_streams": "sha256(seed:train:t), eval tasks sha256(eval), train-eval tasks sha256(train-eval)",
    }
    return point, settings


def _check_finite(grad: Params, method: str, seed: int, iteration: int, path: Path) -> None:
    """Stop the run (:class:`DivergedError`, exit 1) when the meta-gradient holds NaN or inf,
    before it reaches θ; the rows written so far stay in ``path``."""
    bad = [n for n, g in grad.items() if not bool(torch.isfinite(g).all())]
    if bad:
        raise DivergedError(
            f"train: {method} seed {seed}: the meta-gradient became non-finite at iteration {iteration} "
            f"(first in '{bad[0]}'); rows so far are kept in {path}")


class _MethodRun:
    """Meta-training of one (method, seed): set-up, resume, evaluation, steps, checkpoints.

    Built from the seed (same θ₀ for every method); :meth:`restore` continues from this run's
    checkpoint. Every random draw is a function of ``(seed, t)``, so a resumed run reproduces
    an uninterrupted one exactly (timing metrics apart). ``est`` is the method's own settings
    under the run's inner protocol (:func:`~fobbench.estimators.method_config`: λ = 0 for the
    plain methods under ``published``); training, evaluation and the floor all use it.

    Under torch.distributed (``ctx``) every rank builds the same run: rank 0 alone reads the
    results file and the checkpoint and tells the others (:func:`~fobbench.distributed.broadcast_object`);
    meta-gradients and evaluations are shared out over the ranks; only rank 0 writes.
    """

    def __init__(self, problem: FewShotProblem, config: TrainConfig, method: str, seed: int, sink: Sink,
                 checkpoints: Path, ctx: dd.DistContext = dd.SINGLE) -> None:
        self.started = time.perf_counter()
        self.problem, self.config, self.method, self.seed, self.sink = problem, config, method, seed, sink
        self.ctx = ctx
        self.device = ctx.device if ctx.distributed else config.device
        # On CPU the floor and the ratio are in process CPU time: other processes on a shared
        # machine slow the wall clock of the floor and of the iterations by different amounts.
        self.cpu_time = str(self.device).startswith("cpu")
        self.clock: Callable[[], float] = time.process_time if self.cpu_time else time.perf_counter
        self.est = method_config(get(method), config.estimator)
        self.point, self.settings = settings_of(problem, config, method)
        own_hash = sink.point_hash(Record(method, self.point, self.settings, seed)) if ctx.is_writer else None
        self.run_hash = str(dd.broadcast_object(own_hash, ctx))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = problem.model().to(self.device)
        self.theta: Params = dict(self.model.named_parameters())
        self.optimizer = make_outer(config.outer, self.theta.values(), config.meta_lr)
        self.loss = problem_loss(problem, self.model)
        # A plugin's own loss (e.g. regression), or None for classification.
        self.custom_loss = None if getattr(problem, "loss", None) is None else self.loss
        self.timer = _Timer()
        self.path = checkpoint_path(checkpoints, method, seed)
        self.floor = 0.0
        self.floor_work: list[tuple[int, Tensor, Tensor]] = []  # see fobbench.measure.floor.floor_work
        self.floor_every = max(1, math.ceil(config.iterations / FLOOR_SAMPLES))
        # The ν of the last outer step (`--nu auto`'s choice included); None for methods without ν.
        self.nu_used: float | None = get(method).nu(self.est, next(iter(self.theta.values())).dtype)

    def saved(self) -> dict[str, object] | None:
        """This run's checkpoint when the sink resumes and it exists, read by rank 0 and sent to
        every rank (nothing in it is rank-specific, so a resume may use another number of ranks)."""
        own = None
        if self.ctx.is_writer and self.sink.resuming and self.path.is_file():
            own = load_checkpoint(self.path)
        return dd.broadcast_object(own, self.ctx)  # type: ignore[return-value]

    def restore(self, state: Mapping[str, object]) -> int:
        """Continue from a checkpoint (θ, optimizer, RNG, timers); the iteration it reached."""
        if state.get("run_hash") != self.run_hash:
            raise FobbenchError(
                f"--resume: {self.path} was written with other settings than this command's; "
                "rerun with the original options"
            )
        with torch.no_grad():
            for name, value in state["theta"].items():  # type: ignore[union-attr]
                self.theta[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        _set_rng_state(state["rng"])  # type: ignore[arg-type]
        self.timer = _Timer(**state["timer"])  # type: ignore[arg-type]
        return int(state["iteration"])  # type: ignore[arg-type]

    def prepare(self) -> None:
        """The fixed evaluation tasks and the speed floor of this method on one meta-batch."""
        config, device, problem = self.config, self.device, self.problem
        self.eval_tasks = to_device(problem.sample("eval", config.eval_tasks, stream("eval")), device)
        self.train_tasks = to_device(problem.sample("train", config.eval_tasks, stream("train-eval")), device)
        batch = to_device(problem.sample("train", config.meta_batch, stream(self.seed, "floor")), device)
        if self.ctx.distributed:  # this rank's share of the meta-batch: the passes it must do
            mine = self.ctx.slice(config.meta_batch)
            batch = TaskBatch(tuple(d[mine] for d in batch.support), tuple(d[mine] for d in batch.query))
        passes = floor_passes(self.method, self.est)
        timing = {"min_run_time": 0.5 * config.floor_repeats, "statistic": "min", "clock": self.clock}
        if self.custom_loss is None:  # classification: plain nn.Module passes
            self.floor = honest_floor(self.model, batch.support, batch.query, passes, **timing).seconds
            self.floor_work = floor_work(batch.support, batch.query, passes)
        else:  # a plugin's own loss: the vmap(grad) reference over the same passes
            self.floor = vmap_floor(self.loss, self.theta, batch.support, batch.query, passes,
                                    **timing).seconds

    def record(self, t: int) -> Record:
        """Evaluation at iteration ``t`` (no measurements when a resumed file holds it).

        A collective under torch.distributed: rank 0 decides whether the point is done.
        """
        record = Record(self.method, {**self.point, "iteration": t}, self.settings, self.seed,
                        info={"world_size": self.ctx.world_size})
        if dd.broadcast_object(self.sink.done(record) if self.ctx.is_writer else None, self.ctx):
            return record
        # Evaluation adapts at most a meta-batch of tasks at once (Omniglot's 200 tasks in one
        # vmap call would hold gigabytes of activations).
        chunk = self.config.chunk_size or self.config.meta_batch
        custom = self.custom_loss
        held_out = evaluate_on(self.ctx, self.model, self.theta, self.eval_tasks, self.est, chunk, custom)
        seen = evaluate_on(self.ctx, self.model, self.theta, self.train_tasks, self.est, chunk, custom)
        if not math.isfinite(held_out.loss) or not math.isfinite(seen.loss):
            raise DivergedError(
                f"train: {self.method} seed {self.seed}: the query loss became non-finite at iteration {t}; "
                f"rows so far are kept in {self.sink.path()}")
        timer = self.timer
        measurements = [
            Measurement("eval_acc", held_out.acc, "1", "query_after_adaptation"),
            Measurement("eval_acc_ci95", held_out.ci95, "1", "t_interval_over_tasks"),
            Measurement("eval_loss", held_out.loss, "nats", "query_after_adaptation"),
            Measurement("train_acc", seen.acc, "1", "query_after_adaptation"),
            Measurement("train_loss", seen.loss, "nats", "query_after_adaptation"),
            Measurement("wall_time", timer.wall + time.perf_counter() - self.started, "s", "wall_clock"),
        ]
        if math.isfinite(timer.compile_seconds):
            measurements.append(Measurement("compile_sec", timer.compile_seconds, "s", "wall_clock"))
        if self.nu_used is not None:
            measurements.append(Measurement("nu_used", self.nu_used, "1",
                                            "auto_rule" if self.est.nu == AUTO else "fixed"))
        if timer.timed:
            per_iter = timer.iter_seconds / timer.timed
            floor = timer.floor_seconds / timer.floor_samples if timer.floor_samples else self.floor
            measurements += [
                Measurement("sec_per_iter", per_iter, "s", "wall_clock"),
                Measurement("grad_sec", timer.grad_seconds / timer.timed, "s", "wall_clock"),
            ]
            if not self.cpu_time:
                measurements += [Measurement("floor_sec", floor, "s", "wall_clock"),
                                 Measurement("floor_ratio", per_iter / floor, "1", "wall_clock")]
            elif timer.cpu_timed:
                cpu_per_iter = timer.cpu_seconds / timer.cpu_timed
                measurements += [
                    Measurement("cpu_sec_per_iter", cpu_per_iter, "s", PROCESS_CPU),
                    Measurement("floor_sec", floor, "s", PROCESS_CPU),
                    Measurement("floor_ratio", cpu_per_iter / floor, "1", PROCESS_CPU),
                ]
        return replace(record, measurements=measurements, advance=0)

    def step(self, t: int, timed: bool) -> None:
        """Meta-iteration ``t``: sample the meta-batch, estimate, one outer step (timed unless warm-up)."""
        config, device = self.config, self.device
        _sync(device)
        tick, cpu_tick = time.perf_counter(), time.process_time()
        batch = to_device(self.problem.sample("train", config.meta_batch, stream(self.seed, "train", t)),
                          device)
        estimate = dd.meta_gradient_on(
            self.ctx, self.method, self.theta, self.loss, batch.support, batch.query, self.est,
            batching=config.batching, chunk_size=config.chunk_size, generator=stream(self.seed, "noise", t),
        )
        _check_finite(estimate.grad, self.method, self.seed, t, self.sink.path())
        self.nu_used = estimate.nu
        apply(self.optimizer, self.theta, estimate.grad)
        _sync(device)
        if not timed and config.batching == COMPILED:
            self.timer.compile_seconds = time.perf_counter() - tick
        if timed:
            self.timer.iter_seconds += time.perf_counter() - tick
            self.timer.grad_seconds += estimate.seconds
            self.timer.timed += 1
            self.timer.cpu_seconds += time.process_time() - cpu_tick
            self.timer.cpu_timed += 1
            if self.floor_work and self.timer.timed % self.floor_every == 1 % self.floor_every:
                self.sample_floor()

    def sample_floor(self) -> None:
        """One execution of the floor's plain passes, timed into the run's floor samples.

        Interleaved with the iterations so that the floor and the iterations are timed over the
        same stretch of the run: a shared machine's speed drifts (the up-front floor of three
        identical idle runs read 0.12, 0.18, 0.17 s), and a floor taken once at the start moved
        the ratio with it. The global RNG is left as it was, so training is unchanged.
        """
        with torch.random.fork_rng(devices=[]):
            _sync(self.device)
            start = self.clock()
            run_floor_work(self.model, self.floor_work)
            _sync(self.device)
            self.timer.floor_seconds += self.clock() - start
        self.timer.floor_samples += 1

    def checkpoint(self, t: int) -> None:
        """Save θ, optimizer, RNG states and timers after iteration ``t`` (atomic rename; rank 0 only)."""
        if not self.ctx.is_writer:
            return
        save_checkpoint(self.path, {
            "format": "fobbench.train-checkpoint/1",
            "run_hash": self.run_hash,
            "method": self.method,
            "seed": self.seed,
            "iteration": t,
            "theta": {n: p.detach().cpu().clone() for n, p in self.theta.items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": _rng_state(),
            "timer": {**self.timer.__dict__, "wall": self.timer.wall + time.perf_counter() - self.started},
        })


def run_one(problem: FewShotProblem, config: TrainConfig, method: str, seed: int, sink: Sink,
            checkpoints: Path, ctx: dd.DistContext = dd.SINGLE) -> Iterator[Record | Tick]:
    """Meta-train ``method`` from seed ``seed``: evaluation records, one tick per iteration.

    On a resumed sink, continues from this run's checkpoint (when there is one); records of
    points the file already holds carry no measurements. Each process does not time its first
    iteration (warm-up) unless it is the only one. Under torch.distributed (``ctx``) every rank
    runs this with the same arguments; only rank 0's sink writes.
    """
    run = _MethodRun(problem, config, method, seed, sink, checkpoints, ctx)
    total = config.iterations
    state = run.saved()
    start = run.restore(state) if state is not None else 0
    if start >= total:
        yield Tick(total)
        return
    yield Tick(start)
    run.prepare()
    if start == 0:
        yield run.record(0)
    for t in range(start + 1, total + 1):
        run.step(t, timed=t > start + 1 or start + 1 == total)
        if t % config.eval_every == 0 or t == total:
            yield run.record(t)
        if t % config.checkpoint_every == 0 or t == total:
            run.checkpoint(t)
        yield Tick(1)


@dataclass(frozen=True)
class TrainRun:
    """The runner's spec of a training run: every method × seed of ``config`` on ``problem``.

    Methods run one after another for each seed (method-major), all from the same θ₀ and
    task stream per seed, so differences between methods come from the estimators.
    Checkpoints go to ``<csv stem>-checkpoints/`` beside the results file. ``dist`` is the
    torch.distributed context every rank runs the spec in (default: one process); only rank
    0's plan writes (:attr:`fobbench.experiments.runner.Plan.write`).
    """

    problem: FewShotProblem
    config: TrainConfig
    benchmark: str
    dist: dd.DistContext = dd.SINGLE

    def outputs(self) -> list[Output]:
        """One CSV of evaluation rows."""
        return [Output("", self.benchmark, POINT_COLUMNS, INFO_COLUMNS, device=self.config.device)]

    def total(self) -> int:
        """One unit per meta-iteration of every (method, seed)."""
        return len(self.config.methods) * len(self.config.seeds) * self.config.iterations

    def records(self, sink: Sink) -> Iterator[Record | Tick]:
        """Each (method, seed) run in turn."""
        dd.check_split(self.config.meta_batch, self.dist)
        dd.check_split(self.config.eval_tasks, self.dist, "--eval-tasks")
        folder = checkpoint_folder(sink.path())
        for method in self.config.methods:
            for seed in self.config.seeds:
                yield from run_one(self.problem, self.config, method, seed, sink, folder, self.dist)
