"""``gradcheck``: meta-gradient quality of every estimator on quadratic tasks (paper Fig. 1, 4, 5).

Five sub-experiments, each written to its own CSV (``<out>/<name>.csv``, benchmark
``gradcheck.<name>``) in one folder per invocation, because a results file holds one
benchmark with one set of point columns:

``error_vs_k``   normalized error ‖g − ∇F‖/‖∇F‖ of every estimator for each K (Fig. 1 top);
                 iMAML once per ``cg_steps``.
``outer_loss``   meta-training θ from θ₀ with each estimator at K = ``train_k``: F(θ_t) and
                 F(θ_t) − F* per iteration, F* in closed form (Fig. 1 bottom).
``error_vs_nu``  error of FO-B-MAML forward/symmetric against ν for several K (Fig. 4).
``lambda``       adaptation distance ‖φ* − θ₀‖ and cond(A + λI) against λ (Fig. 5).
``rates``        fitted log-log slopes with 95% CIs: error vs ν with a near-exact inner solve
                 (theory 1 and 2, Prop. 2), and error vs inner precision δ at the best ν
                 (theory δ^{1/2} and δ^{2/3}, Corollary 1), both for δ from K GD steps and for
                 the Corollary's own model (exact solution plus an error of norm δ).

The inner step size is one value per sub-experiment, shared by every method and point:
α = 1/(L_max + |ν_max|·L_test + λ) from the tasks' spectra (``safe_lr``), unless ``lr`` is
given; it is recorded as the ``inner_lr`` info column with the GD contraction factor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from fobbench.experiments.gradcheck import rates, sweeps
from fobbench.experiments.gradcheck.config import (
    DEFAULT_EXPERIMENTS,
    EXPERIMENTS,
    OUTER_LR_FACTOR,
    RATE_NUS,
    RATE_POINTS,
    Context,
    Done,
    GradcheckConfig,
    parse_experiments,
    rate_grid,
)
from fobbench.experiments.gradcheck.rates import heavy_ball, sum_stencil
from fobbench.experiments.gradcheck.summaries import error_table, headline, method_label, rates_table
from fobbench.experiments.runner import Output, Record, RunFiles, Sink, Tick, execute
from fobbench.results import default_path
from fobbench.stats import Fit, fit_slope


@dataclass(frozen=True)
class Experiment:
    """A sub-experiment: its CSV layout, its point count and its row generator."""

    name: str
    point_columns: tuple[str, ...]
    info_columns: tuple[str, ...]
    count: Callable[[GradcheckConfig], int]
    rows: Callable[[Context, Done], Iterator[Record]]
    extra_settings: Callable[[GradcheckConfig], dict[str, object]] = lambda config: {}
    """Settings beyond the point columns that change this experiment's values (hashed)."""

    @property
    def benchmark(self) -> str:
        """``gradcheck.<name>``."""
        return f"gradcheck.{self.name}"




REGISTRY_EXPERIMENTS: dict[str, Experiment] = {
    "error_vs_k": Experiment("error_vs_k", ("inner_steps", "cg_steps", "nu", "lam"),
                             ("inner_lr", "contraction"),
                             sweeps._error_vs_k_count, sweeps._error_vs_k),
    "outer_loss": Experiment("outer_loss", ("inner_steps", "cg_steps", "iteration", "nu", "lam"),
                             ("inner_lr", "outer", "meta_lr", "f_star"),
                             sweeps._outer_loss_count, sweeps._outer_loss,
                             lambda c: {"outer": c.outer, "meta_lr": c.meta_lr}),
    "error_vs_nu": Experiment("error_vs_nu", ("inner_steps", "nu", "lam"), ("inner_lr", "contraction"),
                              sweeps._error_vs_nu_count, sweeps._error_vs_nu,
                              lambda c: {"nu_max": max(c.nu_grid)}),
    "lambda": Experiment("lambda", ("lam",), (), sweeps._lambda_count, sweeps._lambda),
    "rates": Experiment("rates", ("fit", "solver", "inner_steps", "lam", "x"),
                        ("inner_lr", "momentum", "fit_points", "fit_range"), rates.count, rates.records,
                        lambda c: {"nu_grid": c.nu_grid, "nu_ks": c.nu_ks,
                                   "rate_nus": c.rate_nus or rate_grid(*RATE_NUS),
                                   "rate_deltas": c.rate_deltas}),
}



def default_out() -> Path:
    """``results/gradcheck/<UTC stamp>-<commit>/``: one folder per invocation."""
    path = default_path("gradcheck")
    folder = path.with_suffix("")
    suffix = 1
    while folder.exists():
        folder = path.with_name(f"{path.stem}-{suffix}")
        suffix += 1
    return folder


def total_points(config: GradcheckConfig) -> int:
    """Number of points the run visits (for a progress bar)."""
    return len(config.seeds) * sum(REGISTRY_EXPERIMENTS[n].count(config) for n in config.experiments)


@dataclass(frozen=True)
class GradcheckRun:
    """The runner's spec of a gradcheck invocation: one CSV per sub-experiment, in one folder."""

    config: GradcheckConfig

    def outputs(self) -> list[Output]:
        """One output per selected sub-experiment (``<folder>/<name>.csv``)."""
        return [Output(name, REGISTRY_EXPERIMENTS[name].benchmark, REGISTRY_EXPERIMENTS[name].point_columns,
                       REGISTRY_EXPERIMENTS[name].info_columns) for name in self.config.experiments]

    def total(self) -> int:
        """Points visited, over seeds and sub-experiments."""
        return total_points(self.config)

    def records(self, sink: Sink) -> Iterator[Record | Tick]:
        """Each seed's problem, then every selected sub-experiment's records in turn."""
        for seed in self.config.seeds:
            ctx = Context(self.config, seed)
            for name in self.config.experiments:
                experiment = REGISTRY_EXPERIMENTS[name]
                settings = {**ctx.settings(), **experiment.extra_settings(self.config)}

                def done(method: str, point: dict[str, object], _name: str = name,
                         _settings: dict[str, object] = settings, _seed: int = seed) -> bool:
                    return sink.done(Record(method, point, _settings, _seed, output=_name))

                yield Tick(0, name)
                for row in experiment.rows(ctx, done):
                    yield replace(row, settings=settings, seed=seed, output=name)


def run(config: GradcheckConfig, out_dir: Path, resume: bool = False, quiet: bool = True) -> RunFiles:
    """Run the selected sub-experiments through the runner, into ``out_dir/<name>.csv``.

    A new run refuses a folder that already holds one of its CSV files; ``resume=True``
    continues the files found there (new ones are created) and skips finished points.
    """
    return execute(GradcheckRun(config), Path(out_dir), resume=resume, quiet=quiet, label="gradcheck")



__all__ = [
    "DEFAULT_EXPERIMENTS", "EXPERIMENTS", "OUTER_LR_FACTOR", "RATE_NUS", "RATE_POINTS",
    "REGISTRY_EXPERIMENTS", "Context", "Experiment", "Fit", "GradcheckConfig", "GradcheckRun", "RunFiles",
    "default_out", "error_table", "fit_slope", "headline", "heavy_ball", "method_label",
    "parse_experiments", "rates_table", "run", "sum_stencil", "total_points",
]
