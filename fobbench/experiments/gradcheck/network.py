"""``gradcheck --problem``: meta-gradient error of every estimator on a real network.

The truth is the implicit B-MAML gradient of :mod:`fobbench.truth` (float64; Newton–CG inner
solve to ‖∇‖ ≤ ``tol``, CG on exact HVPs to a relative residual ≤ ``cg_tol``), never an
estimator under test; on the first ``check_tasks`` tasks it is recomputed by a second route
(plain GD from θ to ``tol``, then a dense-Hessian direct solve) and their relative difference
is recorded. Three CSVs in one folder:

``network_truth``        one row per task: the truth's residuals, Lanczos extremes of
                         ∇²f̂(φ*) + λI, the two routes' agreement, status (``ok``,
                         ``nonconvex``, ``not_converged``).
``network_error_vs_k``   per method (iMAML per CG count) and K: relative error and cosine to
                         the truth, the inner residual δ = mean ‖φ_K − φ*‖ of the K-step solve.
``network_error_vs_nu``  FO-B-MAML's stencils on converged (Newton) perturbed solutions
                         against ν: the bias alone (Prop. 2: slope 1 forward, 2 symmetric,
                         4 Richardson), with each point's estimated error ``floor`` (solve
                         residuals, rounding, the truth's own error: :func:`stencil_floor`).
                         The perturbed solves of one ν are shared by every stencil
                         (:class:`PerturbedSolves`).

Tasks whose truth is not ``ok`` are left out of the averages (``tasks_ok`` says how many
remain); with none left, the rows carry the status and the measured residuals, no error.
A resumed run (``--resume``) skips the points its files already hold (a torn last point is
measured again) and solves the truths only if some point still needs them.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fobbench import plugins
from fobbench.errors import FobbenchError
from fobbench.estimators import EstimatorConfig, get, meta_gradient, names, parse_methods
from fobbench.estimators.nu_rule import AUTO
from fobbench.experiments.gradcheck.config import DTYPES, rate_grid
from fobbench.experiments.runner import Output, Record, Sink, Tick
from fobbench.inner import InnerConfig, solve
from fobbench.params import Data, flatten, unflatten
from fobbench.results import Measurement
from fobbench.truth import (
    STATUS_NOT_CONVERGED,
    STATUS_OK,
    InnerSolution,
    TaskFunctions,
    Truth,
    conjugate_gradient,
    implicit_gradient,
    newton_cg,
)
from fobbench.validate import integer, one_of, positive

SMOOTH = ("tanh", "softplus", "gelu")
EPS = 2.0**-52
"""float64 machine epsilon: the rounding of a stored solution, relative to its norm."""
OUTPUTS = {
    "network_truth": Output("network_truth", "gradcheck.network_truth", ("problem", "task", "lam"),
                            ("status", "route2", "params")),
    "network_error_vs_k": Output("network_error_vs_k", "gradcheck.network_error_vs_k",
                                 ("problem", "inner_steps", "cg_steps", "nu", "lam"),
                                 ("status", "tasks_ok", "inner_lr")),
    "network_error_vs_nu": Output("network_error_vs_nu", "gradcheck.network_error_vs_nu",
                                  ("problem", "solver", "nu", "lam"), ("status", "tasks_ok")),
}


@dataclass(frozen=True)
class NetworkConfig:
    """A gradcheck on a real network (see the module doc).

    Attributes:
        problem: a registered problem name or ``package.module:factory``.
        activation, pool, hidden: built-in model options passed to the problem factory when
            given (pool defaults to ``avg`` with a smooth activation: max-pooling's kinks stall
            the Newton solve even with tanh).
        methods: estimators (default: every trainable one).
        ks: inner steps K of the K sweep (default 1, 2, 5, 10, 20, 50, 100).
        nu: ν of the K sweep (default 0.01), or ``auto`` (:mod:`fobbench.estimators.nu_rule`): its
            rows record the ν chosen as ``nu_used``, and the methods that use ν also run the K
            sweep at every ν of ``nu_grid``, so the rule is compared with each fixed ν.
        nu_grid: ν of the ν sweep (default 1e-3..1e-1, 9 points).
        lam: λ (default 50: the randomly initialised BatchNorm networks have Hessian eigenvalues
            near −40 at θ, so λ = 2 gives a nonconvex inner problem there).
        tasks: tasks averaged (default 2: keeps the default run near a minute and a half on one
            core; the per-task truths, ν slopes and K table do not need more).
        inner_lr: GD step α of the estimators (default 0.8/λ_max(∇²f̂(φ*) + λI), max over tasks).
        tol, cg_tol: the truth's inner and linear tolerances (1e-10 each).
        check_tasks: tasks whose truth is recomputed by the second route (default 1).
        dense_max: largest parameter count for the dense second route (default 3000).
        dtype: ``float64`` (default) or ``float32``: the estimators' floating type (θ, data and
            model cast to it); the truth stays float64 (hashed when not float64).
    """

    problem: str
    activation: str | None = None
    pool: str | None = None
    hidden: int | None = None
    methods: tuple[str, ...] = field(default_factory=lambda: tuple(names(trainable=True)))
    ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)
    nu: float | str = 0.01
    nu_grid: tuple[float, ...] = field(default_factory=lambda: rate_grid(1e-3, 1e-1))
    lam: float = 50.0
    tasks: int = 2
    cg_steps: tuple[int, ...] = (2, 5)
    es_samples: int = 16
    es_sigma: float = 0.01
    seeds: tuple[int, ...] = (0,)
    inner_lr: float | None = None
    tol: float = 1e-10
    cg_tol: float = 1e-10
    check_tasks: int = 1
    dense_max: int = 3000
    dtype: str = "float64"

    def __post_init__(self) -> None:
        parse_methods(",".join(self.methods))
        one_of(self.dtype, tuple(DTYPES), "--dtype")
        integer(self.tasks, "--tasks")
        positive(self.lam, "--lam")
        if any(not isinstance(k, int) or k < 1 for k in self.ks) or not self.ks:
            raise FobbenchError(f"--inner-steps: every value must be an integer >= 1 (got {list(self.ks)})")
        if any(not (v > 0 and math.isfinite(v)) for v in self.nu_grid) or not self.nu_grid:
            raise FobbenchError(f"--nu-grid: every value must be > 0 (got {list(self.nu_grid)})")

    def options(self) -> dict[str, object]:
        """Options for the problem factory (those given)."""
        pool = self.pool
        if pool is None and self.activation in SMOOTH:
            pool = "avg"
        return {"activation": self.activation, "pool": pool, "hidden": self.hidden}

    def settings(self) -> dict[str, object]:
        extra = {} if self.dtype == "float64" else {"dtype": self.dtype}  # float64 hashes as before
        return {"tasks": self.tasks, "tol": self.tol, "cg_tol": self.cg_tol, "es_samples": self.es_samples,
                "es_sigma": self.es_sigma, "inner_lr_override": self.inner_lr, **self.options(), **extra}


def _double(data: Data) -> Data:
    return tuple(t.double() if t.is_floating_point() else t for t in data)


def _task(data: Data, index: list[int]) -> Data:
    return tuple(t[index] for t in data)


def _cosine(a: Tensor, b: Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


class Setup:
    """One seed's network, tasks and per-task truths (computed on first use, so that a resumed
    run whose points are all on disk solves nothing)."""

    def __init__(self, config: NetworkConfig, made: object, seed: int) -> None:
        self.config = config
        torch.manual_seed(seed)
        self.model = made.model().double()  # type: ignore[attr-defined]
        batch = plugins.check_tasks(f"--problem '{config.problem}'",
                                    made.sample("train", config.tasks,  # type: ignore[attr-defined]
                                                torch.Generator().manual_seed(seed)))
        self.support, self.query = _double(batch.support), _double(batch.query)
        self.loss = plugins.problem_loss(made, self.model)
        self.theta = {n: p.detach() for n, p in self.model.named_parameters()}
        self.name = str(getattr(made, "name", config.problem))
        self.functions = [TaskFunctions(self.loss, self.theta, tuple(t[i] for t in self.support),
                                        tuple(t[i] for t in self.query)) for i in range(config.tasks)]
        self.seconds: list[float] = []
        self.est_loss, self.est_theta = self.loss, self.theta
        self.est_dtype = DTYPES[config.dtype]
        if self.est_dtype != torch.float64:  # the estimators' copy in --dtype; the truth stays float64
            self.est_loss = plugins.problem_loss(made, copy.deepcopy(self.model).to(self.est_dtype))
            self.est_theta = {n: p.to(self.est_dtype) for n, p in self.theta.items()}

    @functools.cached_property
    def truths(self) -> list[Truth]:
        """Each task's truth (Newton–CG + CG), timed into :attr:`seconds`."""
        truths = []
        for fn in self.functions:
            start = time.perf_counter()
            truths.append(implicit_gradient(fn, self.config.lam, self.config.tol, self.config.cg_tol))
            self.seconds.append(time.perf_counter() - start)
        return truths

    @functools.cached_property
    def est_tasks(self) -> tuple[Data, Data]:
        """(support, query) of the ``ok`` tasks in the estimators' ``--dtype``, cast once."""
        def cast(data: Data) -> Data:
            return tuple(t.to(self.est_dtype) if t.is_floating_point() else t for t in _task(data, self.ok))

        return cast(self.support), cast(self.query)

    @property
    def ok(self) -> list[int]:
        """Tasks whose truth is ``ok`` (the only ones averaged)."""
        return [i for i, t in enumerate(self.truths) if t.status == STATUS_OK]

    @functools.cached_property
    def truth(self) -> Tensor | None:
        """The mean truth over the ``ok`` tasks (None when there is none)."""
        ok = self.ok
        return torch.stack([self.truths[i].grad for i in ok]).mean(0) if ok else None  # type: ignore[misc]

    @functools.cached_property
    def inner_lr(self) -> float:
        """The estimators' GD step: ``--inner-lr``, else 0.8/λ_max(∇²f̂(φ*) + λI) (max over tasks)."""
        highs = [t.lambda_max for t in self.truths if math.isfinite(t.lambda_max)]
        return self.config.inner_lr or (0.8 / max(highs) if highs else 1e-3)

    def status(self) -> str:
        """``ok`` when some task's truth is ok, else the first task's status."""
        return STATUS_OK if self.ok else self.truths[0].status

    def residuals(self) -> list[Measurement]:
        """The truth's own residuals (worst over the tasks used, else over all)."""
        used = [self.truths[i] for i in self.ok] or self.truths
        return [Measurement("truth_inner_residual", max(t.inner_residual for t in used), "1", "newton_cg"),
                Measurement("truth_cg_residual", max(t.cg_residual for t in used), "1", "cg_relative"),
                Measurement("truth_lambda_min", min(t.lambda_min for t in used), "1", "lanczos")]


Done = Callable[[str, dict[str, object], str], bool]
"""``done(method, point, output)``: True when a resumed file already holds the point."""


def second_route(fn: TaskFunctions, truth: Truth, config: NetworkConfig) -> tuple[str, list[Measurement]]:
    """Route 2: GD from θ with step 1/λ_max to ``tol`` (at most 20,000 steps), then a dense-Hessian
    direct solve when the model is small enough, else CG from the GD solution."""
    phi = fn.theta.clone()
    step = 1.0 / max(truth.lambda_max, config.lam)
    g = fn.objective_grad(phi, 0.0, config.lam)
    steps = 0
    while float(g.norm()) > config.tol and steps < 20_000:
        phi = phi - step * g
        g = fn.objective_grad(phi, 0.0, config.lam)
        steps += 1
    rhs = config.lam * fn.grad(phi, fn.query)
    if phi.numel() <= config.dense_max:
        hessian = fn.dense_hessian(phi, 0.0, config.lam)
        grad = torch.linalg.solve(hessian, rhs)
        low = float(torch.linalg.eigvalsh(hessian)[0])
        route = "gd+dense"
    else:
        hvp = fn.objective_hvp(phi, 0.0, config.lam)
        grad = conjugate_gradient(hvp, rhs, config.cg_tol, 4 * phi.numel()).x
        low = float("nan")
        route = "gd+cg"
    rows = [Measurement("route2_inner_residual", float(g.norm()), "1", "gd"),
            Measurement("route2_gd_steps", float(steps), "steps", "gd"),
            Measurement("route2_lambda_min", low, "1", "dense_eigvalsh")]
    if truth.grad is not None:
        rows.append(Measurement("route_agreement", float((grad - truth.grad).norm() / grad.norm()), "1",
                                "relative_difference"))
    return route, rows


def truth_rows(setup: Setup, done: Done) -> Iterator[Record]:
    config = setup.config
    n = setup.functions[0].theta.numel()
    for i, fn in enumerate(setup.functions):
        point = {"problem": setup.name, "task": i, "lam": config.lam}
        if done("truth", point, "network_truth"):
            yield Record("truth", point, output="network_truth")
            continue
        truth = setup.truths[i]
        rows = [Measurement("inner_residual", truth.inner_residual, "1", "newton_cg"),
                Measurement("cg_residual", truth.cg_residual, "1", "cg_relative"),
                Measurement("lambda_min", truth.lambda_min, "1", "lanczos"),
                Measurement("lambda_max", truth.lambda_max, "1", "lanczos"),
                Measurement("newton_iters", float(truth.newton_iters), "steps", "newton_cg"),
                Measurement("cg_iters", float(truth.cg_iters), "steps", "cg"),
                Measurement("seconds", setup.seconds[i], "s", "wall_clock")]
        route = ""
        if i < config.check_tasks:
            route, extra = second_route(fn, truth, config)
            rows += extra
        info = {"status": truth.status, "route2": route, "params": n}
        yield Record("truth", point, measurements=rows, info=info, output="network_truth")


def _variants(config: NetworkConfig, method: str) -> list[int | str]:
    return list(config.cg_steps) if get(method).sweeps == "cg_steps" else [""]


def k_rows(setup: Setup, done: Done) -> Iterator[Record]:
    config = setup.config
    deltas: dict[int, float] = {}

    def delta(k: int) -> float:
        """δ = mean ‖φ_K − φ*‖ over the ok tasks of K GD steps (computed once per K)."""
        if k not in deltas:
            inner = InnerConfig(steps=k, lr=setup.inner_lr, lam=config.lam)
            values = []
            for i in setup.ok:
                fn = setup.functions[i]
                phi = flatten(solve(setup.theta, setup.loss, fn.support, fn.query, 0.0, inner))
                values.append(float((phi - setup.truths[i].phi).norm()))
            deltas[k] = sum(values) / len(values) if values else float("nan")
        return deltas[k]

    for method in config.methods:
        # --nu auto: ν-methods also run at every fixed ν of the grid, for the comparison
        nus = [config.nu, *config.nu_grid] if config.nu == AUTO and get(method).uses_nu else [config.nu]
        for variant, nu, k in itertools.product(_variants(config, method), nus, config.ks):
            point = {"problem": setup.name, "inner_steps": k, "cg_steps": variant, "nu": nu,
                     "lam": config.lam}
            if done(method, point, "network_error_vs_k"):
                yield Record(method, point, output="network_error_vs_k")
                continue
            rows = setup.residuals()
            if setup.truth is not None:
                support, query = setup.est_tasks
                estimator = EstimatorConfig(inner=InnerConfig(steps=k, lr=setup.inner_lr, lam=config.lam),
                                            nu=nu, cg_steps=variant or config.cg_steps[-1],
                                            es_samples=config.es_samples, es_sigma=config.es_sigma)
                start = time.perf_counter()
                result = meta_gradient(method, setup.est_theta, setup.est_loss, support, query, estimator,
                                       generator=torch.Generator().manual_seed(0))
                grad = flatten(result.grad).double()
                seconds = time.perf_counter() - start
                rel = float((grad - setup.truth).norm() / setup.truth.norm())
                used = ([Measurement("nu_used", result.nu, "1", "auto_rule")]
                        if nu == AUTO and result.nu is not None else [])
                rows = [Measurement("rel_error", rel, "1", "implicit_truth"),
                        Measurement("cosine", _cosine(grad, setup.truth), "1", "implicit_truth"),
                        Measurement("delta", delta(k), "1", "distance_to_phi_star"),
                        Measurement("seconds", seconds, "s", "wall_clock"), *used, *rows]
            info = {"status": setup.status(), "tasks_ok": len(setup.ok), "inner_lr": setup.inner_lr}
            yield Record(method, point, measurements=rows, output="network_error_vs_k", info=info)


def _nu_methods(config: NetworkConfig) -> list[str]:
    """Methods of the ν sweep: those with a stencil of perturbed solutions that use ν."""
    return [m for m in config.methods if get(m).stencil is not None and get(m).uses_nu]


class PerturbedSolves:
    """Converged perturbed solutions φ_v (v = m·ν) of one ν, each solved once per task and shared
    by every stencil that needs it (forward, symmetric and Richardson share φ_ν and φ_−ν).

    Each solve is Newton–CG warm-started at the first-order prediction φ* − v·g/λ (g the task's
    truth: dφ_v/dv = −(∇²f̂(φ*) + λI)⁻¹∇f(φ*) = −g/λ at v = 0), so its first residual is O(v²)
    and one or two Newton steps finish it. It runs to ‖∇P_v‖ ≤ tol·ν (the error a residual r
    adds to the stencil is ~λ·r/(ν·λ_min), so this keeps it ν-independent) or until Newton
    stalls at the rounding floor; it counts as converged at ‖∇P_v‖ ≤ tol.
    """

    def __init__(self, setup: Setup, nu: float) -> None:
        self.setup, self.nu = setup, nu
        self.solved: dict[tuple[int, float], InnerSolution] = {}

    def phi(self, task: int, multiple: float) -> tuple[Tensor, float]:
        """(φ_{m·ν} of ``task``, its residual ‖∇P‖); φ* itself for m = 0."""
        truth = self.setup.truths[task]
        if multiple == 0.0:
            return truth.phi, truth.inner_residual
        key = (task, multiple)
        if key not in self.solved:
            config, v = self.setup.config, multiple * self.nu
            start = truth.phi - (v / config.lam) * truth.grad  # type: ignore[operator]
            self.solved[key] = newton_cg(self.setup.functions[task], v, config.lam, tol=config.tol * self.nu,
                                         start=start)
        sol = self.solved[key]
        return sol.phi, sol.grad_norm


def stencil_floor(setup: Setup, solves: PerturbedSolves, method: str) -> float:
    """Estimated relative error floor of ``method``'s stencil at this ν (no bias term).

    Per task, each solution φ_m enters with weight |c|·λ/ν and carries an error of at most its
    residual over the smallest eigenvalue of ∇²P (‖∇P_m‖/λ_min) plus float64 rounding
    (ε‖φ_m‖, ε = 2⁻⁵²); the bounds are averaged over tasks (as the estimate is), divided by
    ‖∇F‖, and the truth's own error is added (κ·cg_residual, κ = λ_max/λ_min, worst task).
    Errors below a few times this are rounding and tolerance, not bias: the ν slope fits leave
    them out (:func:`fobbench.experiments.gradcheck.summaries.network_slopes`).
    """
    config, nu = setup.config, solves.nu
    bounds, truth_error = [], 0.0
    for i in setup.ok:
        truth = setup.truths[i]
        total = 0.0
        for multiple, coefficient in get(method).stencil or ():
            phi, residual = solves.phi(i, multiple)
            total += abs(coefficient) * (residual / truth.lambda_min + EPS * float(phi.norm()))
        bounds.append(config.lam / nu * total)
        truth_error = max(truth_error, truth.lambda_max / truth.lambda_min * truth.cg_residual)
    return sum(bounds) / len(bounds) / float(setup.truth.norm()) + truth_error  # type: ignore[union-attr]


def nu_rows(setup: Setup, done: Done) -> Iterator[Record]:
    config = setup.config
    methods = _nu_methods(config)
    for nu in config.nu_grid:
        solves: PerturbedSolves | None = None
        for method in methods:
            point = {"problem": setup.name, "solver": "newton", "nu": nu, "lam": config.lam}
            if done(method, point, "network_error_vs_nu"):
                yield Record(method, point, output="network_error_vs_nu")
                continue
            rows = setup.residuals()
            status = setup.status()
            if setup.truth is not None:
                start = time.perf_counter()
                solves = solves or PerturbedSolves(setup, nu)
                grads, worst = [], 0.0
                for i in setup.ok:
                    fn = setup.functions[i]
                    total = torch.zeros_like(fn.theta)
                    for multiple, coefficient in get(method).stencil or ():
                        phi, residual = solves.phi(i, multiple)
                        if multiple != 0.0:
                            worst = max(worst, residual)
                        total = total + coefficient * (phi - fn.theta)
                    grads.append(-config.lam / nu * total)
                if worst > config.tol:
                    status = STATUS_NOT_CONVERGED
                grad = torch.stack(grads).mean(0)
                rows = [Measurement("rel_error", float((grad - setup.truth).norm() / setup.truth.norm()), "1",
                                    "implicit_truth"),
                        Measurement("cosine", _cosine(grad, setup.truth), "1", "implicit_truth"),
                        Measurement("perturbed_residual", worst, "1", "newton_cg"),
                        Measurement("floor", stencil_floor(setup, solves, method), "1", "error_bound"),
                        Measurement("seconds", time.perf_counter() - start, "s", "wall_clock"), *rows]
            yield Record(method, point, measurements=rows, output="network_error_vs_nu",
                         info={"status": status, "tasks_ok": len(setup.ok)})


def _nu_count(config: NetworkConfig) -> int:
    return len(config.nu_grid) * len(_nu_methods(config))


@dataclass(frozen=True)
class NetworkRun:
    """The runner's spec of ``gradcheck --problem``: three CSVs in one folder."""

    config: NetworkConfig
    made: object = field(compare=False, repr=False, default=None)

    def outputs(self) -> list[Output]:
        return list(OUTPUTS.values())

    def total(self) -> int:
        c = self.config
        ks = sum(len(_variants(c, m)) * (1 + len(c.nu_grid) * (c.nu == AUTO and get(m).uses_nu))
                 for m in c.methods) * len(c.ks)
        return len(c.seeds) * (c.tasks + ks + _nu_count(c))

    def records(self, sink: Sink) -> Iterator[Record | Tick]:
        """Every point of each seed; points a resumed file already holds are skipped (not
        recomputed), and the truths are solved only when some point still needs them."""
        made = self.made if self.made is not None else plugins.problem(self.config.problem,
                                                                         self.config.options())
        outputs = self.outputs()
        for seed in self.config.seeds:
            yield Tick(0, "truth (Newton–CG, float64)")
            setup = Setup(self.config, made, seed)
            settings = {**self.config.settings(), "problem_settings": plugins.describe(made)}

            def done(method: str, point: dict[str, object], output: str, seed: int = seed,
                     settings: dict[str, object] = settings) -> bool:
                return bool(sink.resuming) and any(o.name == output for o in outputs) and sink.done(
                    Record(method, point, settings, seed, output=output))

            for row in itertools.chain(truth_rows(setup, done), k_rows(setup, done), nu_rows(setup, done)):
                yield Record(row.method, row.point, settings, seed, row.measurements, row.info, row.output)


def unflat(vector: Tensor, setup: Setup) -> dict[str, Tensor]:
    """θ-shaped view of a flat vector (for users inspecting a truth)."""
    return unflatten(vector, setup.theta)
