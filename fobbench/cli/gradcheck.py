"""``fobbench gradcheck``: meta-gradient quality on quadratic tasks with closed-form answers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fobbench import plugin_names as plugins
from fobbench.choices import DEFAULT_GRADCHECK_EXPERIMENTS
from fobbench.cli import checks, options
from fobbench.cli.app import app
from fobbench.cli.options import NU_AUTO_HELP, parse_nu
from fobbench.errors import FobbenchError
from fobbench.methods import hyperparameter_help, names, parse_methods
from fobbench.ranges import parse_range, parse_seeds

if TYPE_CHECKING:  # torch, pandas and rich tables are imported once the options are known good
    from fobbench.experiments import runner

EXAMPLE = (
    "Example: fobbench gradcheck --experiments all --inner-steps 1..128 --methods fobmaml-sym,imaml,maml"
)

ALIASES = tuple(options.alias(flag, kind) for flag, kind in (
    ("--k", str), ("--nu-k", str), ("--train-k", int), ("--outer-lr", float), ("--lr", float),
    ("--seed", str)))
"""Old spellings accepted (hidden, with a deprecation note)."""


def _short(value: float) -> str:
    """``4.3e-1`` rather than ``4.3e-01``: keeps the K columns inside 80 characters."""
    if math.isnan(value):
        return "–"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _show(files: runner.RunFiles) -> None:
    from rich import box
    from rich.table import Table

    from fobbench.experiments import gradcheck as experiment
    from fobbench.progress import out

    frame = files.frame()
    if frame.empty:
        return
    table = experiment.error_table(frame)
    if not table.empty:
        view = Table(title="normalized meta-gradient error ‖g − ∇F‖/‖∇F‖ by inner steps K",
                     box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        view.add_column("estimator", no_wrap=True)
        for k in table.columns:
            view.add_column(f"K={k}", justify="right", no_wrap=True, min_width=7)
        for label, row in table.iterrows():
            view.add_row(label, *[_short(v) for v in row])
        out.print(view)
        out.print(experiment.headline(table))
    rates = experiment.rates_table(frame)
    if not rates.empty:
        view = Table(title="fitted log-log slopes (95% CI) against theory", box=box.SIMPLE_HEAD,
                     pad_edge=False, collapse_padding=True)
        for column in ("fit", "solver", "method", "slope", "95% CI", "theory", "range"):
            view.add_column(column, no_wrap=True)
        for _, row in rates.iterrows():
            view.add_row(f"vs {'ν' if row['fit'] == 'nu' else 'δ'}", str(row["solver"]),
                         str(row["method"]), f"{row['slope']:.3f}",
                         f"{row['slope_lo']:.2f}..{row['slope_hi']:.2f}", f"{row['theory_slope']:.3f}",
                         str(row["range"]))
        out.print(view)
    _show_auto(frame)
    losses = frame[(frame["benchmark"] == "gradcheck.outer_loss") & (frame["metric"] == "suboptimality")]
    if not losses.empty:
        last = losses[losses["iteration"] == losses["iteration"].max()].copy()
        pairs = zip(last["method"], last["cg_steps"], strict=False)
        last["label"] = [experiment.method_label(m, c) for m, c in pairs]
        view = Table(title=f"meta-training: F(θ_t) − F* after {int(last['iteration'].max())} outer steps",
                     box=box.SIMPLE_HEAD, pad_edge=False)
        view.add_column("estimator", no_wrap=True)
        view.add_column("F − F*", justify="right")
        for label, value in last.groupby("label")["value"].mean().sort_values().items():
            view.add_row(label, f"{value:.2e}")
        out.print(view)


@app.command(epilog=EXAMPLE)
def gradcheck(
    experiments: Annotated[str, typer.Option(
        "--experiments", help="all, or a comma list of error_vs_k, outer_loss, error_vs_nu, lambda, rates."
    )] = ",".join(DEFAULT_GRADCHECK_EXPERIMENTS),
    methods: Annotated[str, typer.Option(
        "--methods", help=f"Comma-separated estimators, or all ({', '.join(names())})."
    )] = "all",
    inner_steps: Annotated[str, typer.Option("--inner-steps",
                                             help="Inner steps K of error_vs_k (range syntax).")]
    = "1,2,5,10,20,50,100",
    nu: Annotated[str, typer.Option("--nu", help="FO-B-MAML ν of error_vs_k and outer_loss (≠ 0)"
                                    + NU_AUTO_HELP + "; auto rows record nu_used and error_vs_nu "
                                    "(with --problem: the K sweep) also runs the --nu-grid to compare.")]
    = "0.01",
    dtype: Annotated[str, typer.Option(
        "--dtype", help="float64 or float32: the estimators' floating type (the truth stays float64).")]
    = "float64",
    lam: Annotated[float | None, typer.Option(
        "--lam", help="Proximal strength λ > 0 (default 2.0; 50 with --problem).")] = None,
    nu_grid: Annotated[str | None, typer.Option(
        "--nu-grid", help="ν values of error_vs_nu and the δ-rate fit (default 1e-5..1@11; "
        "1e-3..1e-1@9 with --problem).")] = None,
    nu_inner_steps: Annotated[str, typer.Option(
        "--nu-inner-steps", help="Inner steps K of error_vs_nu and the δ-rate fit.")] = "5,10,20,50,100",
    lam_grid: Annotated[str, typer.Option("--lam-grid", help="λ values of the lambda sweep.")] = "0.1..10@9",
    rate_nu: Annotated[str | None, typer.Option(
        "--rate-nu", help="ν values of the slope fit with a near-exact inner solve (default: each method's "
        "registered span, else 1e-3..1e-1@9).")] = None,
    rate_delta: Annotated[str, typer.Option("--rate-delta", help="δ values of the perturbed-solution "
                                            "rate fit.")] = "1e-12..1e-4@9",
    train_inner_steps: Annotated[int, typer.Option(
        "--train-inner-steps", help="Inner steps K of outer_loss.")]
    = 20,
    iters: Annotated[int, typer.Option("--iters", help="Outer iterations of outer_loss.")] = 50,
    outer: Annotated[str, typer.Option("--outer", help="Outer optimizer: sgd, clipped, sngdm, adam.")]
    = "sgd",
    meta_lr: Annotated[float | None, typer.Option(
        "--meta-lr",
        help="Outer (meta) step size (default: 0.25/L_F, L_F = largest eigenvalue of ∇²F).")] = None,
    inner_lr: Annotated[float | None, typer.Option(
        "--inner-lr",
        help="Inner step size α (default: 1/(L_max(1+|ν|)+λ) from the tasks' spectra).")] = None,
    cg_steps: Annotated[str, typer.Option("--cg-steps", help="iMAML CG step counts (one line each).")]
    = "2,5",
    es_samples: Annotated[int, typer.Option("--es-samples", help=hyperparameter_help("es_samples"))] = 16,
    es_sigma: Annotated[float, typer.Option("--es-sigma", help=hyperparameter_help("es_sigma"))] = 0.01,
    dim: Annotated[int, typer.Option("--dim", help="Meta-parameter dimension d.")] = 20,
    tasks: Annotated[int | None, typer.Option(
        "--tasks", help="Number of tasks M (default 10 quadratics; 2 with --problem).")] = None,
    problem: Annotated[str | None, typer.Option(
        "--problem", help="Measure on a real network instead of quadratics: a registered problem "
        f"({', '.join(plugins.names(plugins.PROBLEMS))}) or package.module:factory.")] = None,
    activation: Annotated[str | None, typer.Option(
        "--activation", help="Built-in model's activation with --problem: relu (paper), gelu, tanh, softplus."
    )] = None,
    pool: Annotated[str | None, typer.Option(
        "--pool", help="Built-in model's pooling with --problem: max (paper) or avg (default with a smooth "
        "activation).")] = None,
    hidden: Annotated[int | None, typer.Option(
        "--hidden", help="Conv4 filters per block with --problem omniglot (default 64).")] = None,
    check_tasks: Annotated[int, typer.Option(
        "--check-tasks", help="With --problem: tasks whose truth is recomputed by a second route.")] = 1,
    cond: Annotated[float, typer.Option("--cond", help="cond(A_i); spectrum log-spaced on [2, 2·cond].")]
    = 25.0,
    distinct_test: Annotated[bool, typer.Option(
        "--distinct-test/--same-test", help="Test quadratic f_i ≠ train quadratic f̂_i (paper: same).")
    ] = False,
    seeds: Annotated[str, typer.Option("--seeds",
                                       help="Seed(s) of tasks and ES noise; a list repeats.")] = "0",
    batching: Annotated[str, typer.Option("--batching", help="vmap over tasks, or loop (one at a time).")]
    = "vmap",
    threads: Annotated[int, typer.Option("--threads", help="torch CPU threads (1 is fastest here).")]
    = 1,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Results folder (default: results/gradcheck/<UTC stamp>-<commit>/).")] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="Continue the results folder of an interrupted run.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar or status line.")] = False,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Do not write PNG figures next to the CSVs.")]
    = False,
    deprecated_k: Annotated[str | None, typer.Option("--k", hidden=True)] = None,
    deprecated_nu_k: Annotated[str | None, typer.Option("--nu-k", hidden=True)] = None,
    deprecated_train_k: Annotated[int | None, typer.Option("--train-k", hidden=True)] = None,
    deprecated_outer_lr: Annotated[float | None, typer.Option("--outer-lr", hidden=True)] = None,
    deprecated_lr: Annotated[float | None, typer.Option("--lr", hidden=True)] = None,
    deprecated_seed: Annotated[str | None, typer.Option("--seed", hidden=True)] = None,
) -> None:
    """Normalized error of every meta-gradient estimator against the closed-form B-MAML gradient.

    Quadratic tasks f_i = f̂_i = ½θᵀA_iθ + θᵀb_i (App. D.1) give φ*_ν, ∇F and F* in closed form.
    Writes one CSV per sub-experiment (benchmark gradcheck.<name>) into one folder, figures as PNG
    next to them, and prints the estimator × K error table with a headline finding.
    """
    chosen = plan(options.resolve_aliases(dict(locals()), ALIASES))  # checks every value first
    from fobbench.experiments import runner

    runner.carry_out(chosen)


def plan(p: Mapping[str, Any], check_only: bool = False) -> runner.Plan:
    """The runner's plan of ``fobbench gradcheck`` from its option values (by parameter name).

    Every value is checked here, before anything runs (``check_only``: nothing else differs;
    ``fobbench run`` checks a whole suite this way).
    """
    p = {"problem": None, "activation": None, "pool": None, "hidden": None, "check_tasks": 1, **p}
    checks.check_gradcheck(p)  # every value, before torch is imported
    from fobbench.experiments import gradcheck as experiment
    from fobbench.experiments import runner
    from fobbench.paths import check_writable_dir, figure_dir
    from fobbench.progress import console, print_figures

    if p["problem"] is not None:
        return network_plan(p)
    for name in ("activation", "pool", "hidden"):
        if p[name] is not None:
            raise FobbenchError(f"--{name} applies to a network (--problem), not to the quadratic tasks")
    folder, resuming = runner.destination(p["out_dir"], p["resume"], experiment.default_out)
    if not (resuming and Path(folder).is_file()):  # a CSV given to --resume: the runner names the folder
        check_writable_dir(folder, "--resume" if resuming else "--out")
    config = experiment.GradcheckConfig(
        experiments=experiment.parse_experiments(p["experiments"]),
        methods=tuple(parse_methods(p["methods"])),
        ks=tuple(parse_range(p["inner_steps"], "--inner-steps", int)),
        nu=parse_nu(str(p["nu"])),
        lam=2.0 if p["lam"] is None else p["lam"],
        nu_grid=tuple(parse_range(p["nu_grid"] or "1e-5..1@11", "--nu-grid", float)),
        nu_ks=tuple(parse_range(p["nu_inner_steps"], "--nu-inner-steps", int)),
        lam_grid=tuple(parse_range(p["lam_grid"], "--lam-grid", float)),
        rate_nus=None if p["rate_nu"] is None else tuple(parse_range(p["rate_nu"], "--rate-nu", float)),
        rate_deltas=tuple(parse_range(p["rate_delta"], "--rate-delta", float)),
        train_k=p["train_inner_steps"],
        iters=p["iters"],
        outer=p["outer"],
        meta_lr=p["meta_lr"],
        inner_lr=p["inner_lr"],
        cg_steps=tuple(parse_range(p["cg_steps"], "--cg-steps", int)),
        es_samples=p["es_samples"],
        es_sigma=p["es_sigma"],
        dim=p["dim"],
        tasks=10 if p["tasks"] is None else p["tasks"],
        cond=p["cond"],
        distinct_test=p["distinct_test"],
        seeds=parse_seeds(p["seeds"], "--seeds"),
        batching=p["batching"],
        dtype=p.get("dtype", "float64"),
    )
    if p["threads"] < 1:
        raise FobbenchError(f"--threads must be >= 1 (got {p['threads']})")

    def show(files: runner.RunFiles) -> None:
        _show(files)
        figures = []
        if not p["no_plot"]:
            from fobbench.figures import gradcheck as figures_module

            figures = figures_module.draw(files.frame(), figure_dir(folder))
        if not p["quiet"]:
            names = ", ".join(f.name for f in files.paths.values())
            console.print(f"results: {Path(folder).absolute()}/ ({names})", soft_wrap=True)
            print_figures(figures)

    return runner.Plan(experiment.GradcheckRun(config), Path(folder), resuming, p["quiet"], p["threads"],
                       "gradcheck", show)


def network_plan(p: Mapping[str, Any]) -> runner.Plan:
    """``gradcheck --problem``: the real-network spec (truth by Newton–CG; three CSVs)."""
    from fobbench import plugins as loader
    from fobbench.experiments import gradcheck as experiment
    from fobbench.experiments import runner
    from fobbench.experiments.gradcheck import network
    from fobbench.paths import check_writable_dir
    from fobbench.progress import console

    if p["threads"] < 1:
        raise FobbenchError(f"--threads must be >= 1 (got {p['threads']})")
    defaults = network.NetworkConfig(problem=p["problem"])
    config = network.NetworkConfig(
        problem=p["problem"], activation=p["activation"], pool=p["pool"], hidden=p["hidden"],
        methods=tuple(parse_methods(p["methods"], allow_exact=False)) if p["methods"] != "all"
        else defaults.methods,
        ks=tuple(parse_range(p["inner_steps"], "--inner-steps", int)), nu=parse_nu(str(p["nu"])),
        dtype=p.get("dtype", "float64"),
        nu_grid=tuple(parse_range(p["nu_grid"], "--nu-grid", float)) if p["nu_grid"] else defaults.nu_grid,
        lam=defaults.lam if p["lam"] is None else p["lam"],
        tasks=defaults.tasks if p["tasks"] is None else p["tasks"],
        cg_steps=tuple(parse_range(p["cg_steps"], "--cg-steps", int)), es_samples=p["es_samples"],
        es_sigma=p["es_sigma"], seeds=parse_seeds(p["seeds"], "--seeds"), inner_lr=p["inner_lr"],
        check_tasks=p["check_tasks"],
    )
    folder, resuming = runner.destination(p["out_dir"], p["resume"], experiment.default_out)
    if not (resuming and Path(folder).is_file()):  # a CSV given to --resume: the runner names the folder
        check_writable_dir(folder, "--resume" if resuming else "--out")
    made = loader.problem(config.problem, config.options())  # fails here, before anything is written

    def show(files: runner.RunFiles) -> None:
        frame = files.frame()
        _show_network(frame)
        figures = []
        if not p["no_plot"]:
            from fobbench.figures import gradcheck as figures_module

            figures = figures_module.draw(frame, Path(folder))
        if not p["quiet"]:
            console.print(f"results: {folder}/ ({', '.join(f.name for f in files.paths.values())})"
                          + (f"; figures: {', '.join(f.name for f in figures)}" if figures else ""))

    return runner.Plan(network.NetworkRun(config, made), Path(folder), resuming, p["quiet"], p["threads"],
                       f"gradcheck --problem {config.problem}", show)


def _show_network(frame: Any) -> None:
    """Truth check, error × K table, ν slopes."""
    from rich import box
    from rich.table import Table

    from fobbench.experiments.gradcheck import summaries
    from fobbench.progress import out

    for title, table in summaries.network_tables(frame):
        view = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        view.add_column(str(table.index.name or ""), no_wrap=True)
        for column in table.columns:
            view.add_column(str(column), justify="right", no_wrap=True)
        for label, row in table.iterrows():
            view.add_row(str(label), *[v if isinstance(v, str) else _short(float(v)) for v in row])
        out.print(view)
    for line in summaries.network_notes(frame):
        out.print(line)
    _show_auto(frame)


def _show_auto(frame: Any) -> None:
    """``--nu auto`` against the best fixed ν of the grid (nothing without auto rows)."""
    from rich import box
    from rich.table import Table

    from fobbench.experiments.gradcheck import summaries
    from fobbench.progress import out

    table = summaries.auto_table(frame)
    if table.empty:
        return
    view = Table(title="--nu auto vs the best fixed ν of the grid (ratio = auto error / best error)",
                 box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in table.columns:
        justify = "left" if column in ("sweep", "method") else "right"
        view.add_column(str(column), justify=justify, no_wrap=True)
    for _, row in table.iterrows():
        view.add_row(row["sweep"], row["method"], str(row["K"]), *[
            f"{row[c]:.2f}" if c == "ratio" else _short(float(row[c]))
            for c in ("ν auto", "err auto", "ν best", "err best", "ratio")])
    out.print(view)
