"""``fobbench gradcheck``: meta-gradient quality on quadratic tasks with closed-form answers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich import box
from rich.table import Table

from fobbench.cli.app import app
from fobbench.errors import FobbenchError
from fobbench.estimators import parse_methods
from fobbench.experiments import gradcheck as experiment
from fobbench.paths import figure_dir
from fobbench.progress import console, out, print_figures, progress
from fobbench.ranges import parse_range, parse_seeds

EXAMPLE = (
    "Example: fobbench gradcheck --experiments all --k 1..128 --methods fobmaml-sym,imaml,maml"
)


def _short(value: float) -> str:
    """``4.3e-1`` rather than ``4.3e-01``: keeps the K columns inside 80 characters."""
    if math.isnan(value):
        return "–"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _show(files: experiment.RunFiles) -> None:
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
    losses = frame[(frame["benchmark"] == "gradcheck.outer_loss") & (frame["metric"] == "suboptimality")]
    if not losses.empty:
        last = losses[losses["iteration"] == losses["iteration"].max()].copy()
        last["label"] = [experiment.method_label(m, c) for m, c in zip(last["method"], last["cg_steps"])]
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
    )] = ",".join(experiment.DEFAULT_EXPERIMENTS),
    methods: Annotated[str, typer.Option(
        "--methods", help="Comma-separated estimators, or all (maml, fomaml, reptile, imaml, esmaml, "
        "fobmaml-forward, fobmaml-sym, exact)."
    )] = "all",
    k: Annotated[str, typer.Option("--k", help="Inner steps K of error_vs_k (range syntax).")]
    = "1,2,5,10,20,50,100",
    nu: Annotated[float, typer.Option("--nu", help="FO-B-MAML ν of error_vs_k and outer_loss (≠ 0).")] = 0.01,
    lam: Annotated[float, typer.Option("--lam", help="Proximal strength λ > 0.")] = 2.0,
    nu_grid: Annotated[str, typer.Option("--nu-grid", help="ν values of error_vs_nu and the δ-rate fit.")]
    = "1e-5..1@11",
    nu_k: Annotated[str, typer.Option("--nu-k", help="K values of error_vs_nu and the δ-rate fit.")]
    = "5,10,20,50,100",
    lam_grid: Annotated[str, typer.Option("--lam-grid", help="λ values of the lambda sweep.")] = "0.1..10@9",
    rate_nu: Annotated[str, typer.Option("--rate-nu", help="ν values of the slope fit with a near-exact "
                                         "inner solve.")] = "1e-3..1e-1@9",
    rate_delta: Annotated[str, typer.Option("--rate-delta", help="δ values of the perturbed-solution "
                                            "rate fit.")] = "1e-12..1e-4@9",
    train_k: Annotated[int, typer.Option("--train-k", help="Inner steps K of outer_loss.")] = 20,
    iters: Annotated[int, typer.Option("--iters", help="Outer iterations of outer_loss.")] = 50,
    outer: Annotated[str, typer.Option("--outer", help="Outer optimizer: sgd, clipped, sngdm, adam.")]
    = "sgd",
    outer_lr: Annotated[float | None, typer.Option(
        "--outer-lr", help="Outer step size (default: 0.25/L_F, L_F = largest eigenvalue of ∇²F).")] = None,
    lr: Annotated[float | None, typer.Option(
        "--lr", help="Inner step size α (default: 1/(L_max(1+|ν|)+λ) from the tasks' spectra).")] = None,
    cg_steps: Annotated[str, typer.Option("--cg-steps", help="iMAML CG step counts (one line each).")]
    = "2,5",
    es_samples: Annotated[int, typer.Option("--es-samples", help="ES-MAML antithetic directions.")] = 16,
    es_sigma: Annotated[float, typer.Option("--es-sigma", help="ES-MAML smoothing radius σ.")] = 0.01,
    dim: Annotated[int, typer.Option("--dim", help="Meta-parameter dimension d.")] = 20,
    tasks: Annotated[int, typer.Option("--tasks", help="Number of quadratic tasks M.")] = 10,
    cond: Annotated[float, typer.Option("--cond", help="cond(A_i); spectrum log-spaced on [2, 2·cond].")]
    = 25.0,
    distinct_test: Annotated[bool, typer.Option(
        "--distinct-test/--same-test", help="Test quadratic f_i ≠ train quadratic f̂_i (paper: same).")
    ] = False,
    seed: Annotated[str, typer.Option("--seed", help="Seed(s) of tasks and ES noise; a list repeats.")] = "0",
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
) -> None:
    """Normalized error of every meta-gradient estimator against the closed-form B-MAML gradient.

    Quadratic tasks f_i = f̂_i = ½θᵀA_iθ + θᵀb_i (App. D.1) give φ*_ν, ∇F and F* in closed form.
    Writes one CSV per sub-experiment (benchmark gradcheck.<name>) into one folder, figures as PNG
    next to them, and prints the estimator × K error table with a headline finding.
    """
    if out_dir is not None and resume is not None:
        raise FobbenchError("give either --out or --resume, not both")
    if threads < 1:
        raise FobbenchError(f"--threads must be >= 1 (got {threads})")
    config = experiment.GradcheckConfig(
        experiments=experiment.parse_experiments(experiments),
        methods=tuple(parse_methods(",".join(experiment.REGISTRY) if methods == "all" else methods)),
        ks=tuple(parse_range(k, "--k", int)),
        nu=nu,
        lam=lam,
        nu_grid=tuple(parse_range(nu_grid, "--nu-grid", float)),
        nu_ks=tuple(parse_range(nu_k, "--nu-k", int)),
        lam_grid=tuple(parse_range(lam_grid, "--lam-grid", float)),
        rate_nus=tuple(parse_range(rate_nu, "--rate-nu", float)),
        rate_deltas=tuple(parse_range(rate_delta, "--rate-delta", float)),
        train_k=train_k,
        iters=iters,
        outer=outer,
        outer_lr=outer_lr,
        lr=lr,
        cg_steps=tuple(parse_range(cg_steps, "--cg-steps", int)),
        es_samples=es_samples,
        es_sigma=es_sigma,
        dim=dim,
        tasks=tasks,
        cond=cond,
        distinct_test=distinct_test,
        seeds=parse_seeds(seed, "--seed"),
        batching=batching,
    )
    folder = resume if resume is not None else (out_dir or experiment.default_out())
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with progress(quiet) as bar:
            task = bar.add_task("gradcheck", total=experiment.total_points(config))
            files = experiment.run(config, folder, resume=resume is not None,
                                   advance=lambda name: bar.update(task, advance=1, description=name))
    finally:
        torch.set_num_threads(previous_threads)
    _show(files)
    figures = []
    if not no_plot:
        from fobbench.figures import gradcheck as figures_module

        figures = figures_module.draw(files.frame(), figure_dir(folder))
    if not quiet:
        console.print(f"results: {Path(folder).absolute()}/ ({', '.join(p.name for p in files.paths.values())})",
                      soft_wrap=True)
        print_figures(figures)
