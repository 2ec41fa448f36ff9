"""``fobbench train mnist1d|omniglot``: few-shot meta-training curves, accuracy and speed."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from fobbench.cli import checks, options
from fobbench.cli.app import app
from fobbench.cli.options import NU_AUTO_HELP, opt, parse_nu
from fobbench.errors import FobbenchError
from fobbench.methods import COMPILED, METHODS, hyperparameter_help, names, parse_methods
from fobbench.ranges import parse_seeds

if TYPE_CHECKING:  # torch, pandas and matplotlib are imported once the options are known good
    from fobbench import distributed as dd
    from fobbench.experiments import runner
    from fobbench.experiments import train as experiment
    from fobbench.problems.base import FewShotProblem

train_app = typer.Typer(
    help="Meta-train a few-shot classifier with each estimator; accuracy curves, final table, speed.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")

SHARED = (
    opt("method", str, "fobmaml-sym", help="One estimator (ignored when --methods is given)."),
    opt("methods", str | None, None,
        help=f"Comma-separated estimators side by side, or all ({', '.join(names(trainable=True))})."),
    opt("iterations", int, 600, help="Meta-iterations T (outer steps)."),
    opt("meta_batch", int, 16, help="Tasks per meta-gradient."),
    opt("inner_steps", int, 5, help="Inner steps K of every method."),
    opt("inner_lr", float, 0.1, help="Inner step size α of every method."),
    opt("inner_optimizer", str, "gd", help="Inner solver: gd, momentum or adam."),
    opt("meta_lr", float, 3e-3, help="Outer (meta) step size."),
    opt("outer", str, "adam", help="Outer optimizer: sgd, clipped, sngdm or adam."),
    opt("lam", float, 2.0,
        help="Proximal strength λ of the inner problem (> 0; 0 only for "
             f"{', '.join(n for n in names(trainable=True) if not METHODS[n].proximal)})."),
    opt("nu", str, "0.1", help=hyperparameter_help("nu").rstrip(".") + NU_AUTO_HELP + "."),
    opt("inner_protocol", str, "proximal",
        help=f"{hyperparameter_help('inner_protocol')} Under published, λ = 0 for "
             f"{', '.join(n for n in names(trainable=True) if not METHODS[n].proximal)}."),
    opt("cg_steps", int, 5, help=hyperparameter_help("cg_steps")),
    opt("es_samples", int, 16, help=hyperparameter_help("es_samples")),
    opt("es_sigma", float, 0.01, help=hyperparameter_help("es_sigma")),
    opt("ways", int, 3, help="N classes per task."),
    opt("shots", int, 5, help="K support examples per class."),
    opt("queries", int, 10, help="Query examples per class."),
    opt("eval_every", int, 50, help="Iterations between evaluations (also at 0 and T)."),
    opt("eval_tasks", int, 200, help="Fixed held-out tasks per evaluation."),
    opt("seeds", str, "0", help="Seeds (repeats): 0..4 is 0,1,2,3,4; or a list 0,3,7."),
    opt("checkpoint_every", int, 100,
        help="Iterations between checkpoints (also at T), saved beside the CSV."),
    opt("chunk_size", int | None, None, help="Tasks per vmap chunk (default: the whole meta-batch at once)."),
    opt("batching", str, "vmap", help="vmap (tasks batched) or loop (one task at a time)."),
    opt("compile", bool, False,
        help="torch.compile the vmapped meta-gradient (cache: $FOBBENCH_CACHE/inductor; the first, "
             "compiling iteration is recorded apart as compile_sec). Needs a fixed --nu."),
    opt("device", str, "cpu", help="cpu or cuda."),
    opt("dist_backend", str | None, None,
        help="Under torchrun: gloo or nccl (default: nccl with --device cuda, else gloo)."),
    opt("threads", int | None, None,
        help="torch CPU threads (default: half the cores, at most torch's default: 1 on a 2-core machine; "
             "recorded in every row)."),
    opt("out_file", Path | None, None, "--out",
        help="Results CSV (default: results/train/<UTC stamp>-<commit>.csv)."),
    opt("resume", Path | None, None,
        help="Continue an interrupted run's CSV from its checkpoints (same options)."),
    opt("no_plot", bool, False, help="Do not write figures beside the CSV."),
    opt("fmt", str, "png", "--format", help="Figure format: png, svg or pdf."),
    opt("quiet", bool, False, help="No progress bar."),
)
"""Options of both problems, declared once (problem-specific defaults are passed per command)."""

ALIASES = (options.alias("--k", int), options.alias("--outer-lr", float), options.alias("--seed"))
"""Old spellings accepted (hidden, with a deprecation note)."""


def _config(p: Mapping[str, Any], check_only: bool = False) -> experiment.TrainConfig:
    """The training settings from the option values (``check_only``: see :func:`plan`)."""
    from fobbench.estimators import EstimatorConfig
    from fobbench.experiments import train as experiment
    from fobbench.inner import InnerConfig

    chosen = parse_methods(p["methods"] or p["method"], "--methods" if p["methods"] else "--method",
                           allow_exact=False)
    inner = InnerConfig(steps=p["inner_steps"], lr=p["inner_lr"], lam=p["lam"],
                        optimizer=p["inner_optimizer"])
    estimator = EstimatorConfig(inner=inner, nu=parse_nu(p["nu"]), cg_steps=p["cg_steps"],
                                es_samples=p["es_samples"], es_sigma=p["es_sigma"],
                                inner_protocol=p["inner_protocol"])
    return experiment.TrainConfig(
        methods=tuple(dict.fromkeys(chosen)), estimator=estimator, seeds=parse_seeds(str(p["seeds"])),
        iterations=p["iterations"], meta_batch=p["meta_batch"], meta_lr=p["meta_lr"], outer=p["outer"],
        eval_every=p["eval_every"], eval_tasks=p["eval_tasks"], checkpoint_every=p["checkpoint_every"],
        chunk_size=p["chunk_size"], batching=COMPILED if p["compile"] else p["batching"],
        # whether a CUDA device is present is a fact of the machine: checked when the run starts
        device="cpu" if check_only and p["device"] == "cuda" else p["device"],
    )


def _number(value: float, spec: str) -> str:
    return "–" if math.isnan(value) else format(value, spec)


def _show(path: Path) -> None:
    from rich import box
    from rich.table import Table

    from fobbench.figures import train as figures
    from fobbench.progress import out
    from fobbench.results import read_results

    frame = read_results(path)
    table = figures.summarize(frame)
    if table.empty:
        return
    view = Table(title=f"{table['benchmark'].iloc[0]}: few-shot accuracy and speed per method",
                 box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("method", "seeds", "iter", "acc", "±95%", "early", "ms/it", "×floor", "wall"):
        if column == "method":
            view.add_column(column, min_width=min(28, int(table["label"].str.len().max())), overflow="fold")
        else:
            view.add_column(column, justify="right", no_wrap=True)
    for _, row in table.iterrows():
        view.add_row(
            str(row["label"]), str(row["seeds"]), str(row["iteration"]), f"{row['final_acc']:.3f}",
            f"{row['final_ci95']:.3f}", f"{row['early_acc']:.3f}@{row['early_iteration']}",
            _number(row["sec_per_iter"] * 1e3, ".0f"), _number(row["floor_ratio"], ".2f"),
            _number(row["wall_time"], ".0f"),
        )
    out.print(view)
    over = ", ".join(sorted(set(table["ci_over"])))
    out.print(f"acc: held-out query accuracy after adaptation at iteration iter, ±95% interval over {over}; "
              f"early: the same at the evaluation nearest iteration {figures.SUMMARY_ITERATION}; ms/it: time "
              "per meta-iteration without evaluation; ×floor: a meta-iteration ÷ the plain fwd+bwd passes "
              "the method must do (each estimator's registered floor, e.g. 2K − 1 of support+query for "
              "FO-B-MAML-sym, K support + 1 query for MAML), both timed over the same stretch of the run, "
              "in process CPU time on CPU; wall: seconds of the run's wall time with evaluations.")


def plan(p: Mapping[str, Any], benchmark: str, problem: Callable[[Mapping[str, Any]], FewShotProblem],
         check_only: bool = False, ctx: dd.DistContext | None = None) -> runner.Plan:
    """The runner's plan of a ``train`` command from its option values (by parameter name).

    ``ctx``: the torch.distributed context this process runs in (None: a single process);
    ranks other than 0 compute their share but write, show and draw nothing.

    ``check_only`` (``fobbench run`` checking a whole suite before its first run) checks
    every value without loading data or touching a device: the plan it returns has no
    problem and must not be carried out.
    """
    checks.check_train(p)  # every value, before torch is imported
    from fobbench import distributed as dd
    from fobbench.experiments import runner
    from fobbench.experiments import train as experiment
    from fobbench.figures.common import check_format
    from fobbench.measure.timing import default_threads
    from fobbench.paths import check_writable_file, figure_dir
    from fobbench.progress import console, print_figures
    from fobbench.results import default_path, read_results

    ctx = dd.SINGLE if ctx is None else ctx
    check_format(p["fmt"])
    config = _config(p, check_only)
    if p["threads"] is not None and p["threads"] < 1:
        raise FobbenchError(f"--threads must be >= 1 (got {p['threads']})")
    path, resuming = runner.destination(p["out_file"], p["resume"], lambda: default_path(benchmark))
    check_writable_file(path, "--resume" if resuming else "--out")  # before any data are generated
    if check_only:  # the task shape was checked by checks.check_train
        return runner.Plan(experiment.TrainRun(None, config, benchmark), Path(path), resuming)  # type: ignore[arg-type]

    def show(files: runner.RunFiles) -> None:
        written = files.paths[""]
        _show(written)
        console.print(f"results: {written}\ncheckpoints: {experiment.checkpoint_folder(written)}",
                      soft_wrap=True)
        if not p["no_plot"]:
            from fobbench.figures.train import draw

            print_figures(draw(read_results(written), figure_dir(written), p["fmt"]))

    spec = experiment.TrainRun(problem(p), config, benchmark, ctx)
    threads = p["threads"] if p["threads"] is not None else default_threads("train")
    return runner.Plan(spec, Path(path), resuming, p["quiet"] or not ctx.is_writer, threads,
                       f"{benchmark} {','.join(config.methods)}", show, write=ctx.is_writer)


def carry_out(p: Mapping[str, Any], benchmark: str, problem: Callable[[Mapping[str, Any]], FewShotProblem]
              ) -> None:
    """Run a ``train`` command: in one process, or as one rank of a torchrun job.

    Started by torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set), every rank joins the
    process group (gloo on CPU, nccl on CUDA, or ``--dist-backend``) and trains its share of
    each meta-batch; rank 0 writes the CSV (with ``world_size``), checkpoints and figures.
    """
    checks.check_train(p)  # before torch is imported
    from fobbench import distributed as dd
    from fobbench.experiments import runner

    with dd.session(device=p["device"], backend=p["dist_backend"]) as ctx:
        runner.carry_out(plan(p, benchmark, problem, ctx=ctx))


def mnist1d_problem(p: Mapping[str, Any]) -> FewShotProblem:
    """MNIST-1D tasks of the requested shape (data generated offline and cached): the registered
    problem ``mnist1d``, resolved like any plugin (name → factory → protocol check)."""
    from fobbench import plugins

    options = {"ways": p["ways"], "shots": p["shots"], "queries": p["queries"],
               "num_samples": p["num_samples"]}
    return plugins.problem("mnist1d", options)  # type: ignore[return-value]


def omniglot_problem(p: Mapping[str, Any]) -> FewShotProblem:
    """Omniglot tasks of the requested shape and split, from the local data folder: the
    registered problem ``omniglot``, resolved like any plugin."""
    from fobbench import plugins

    options = {"data_dir": p["data_dir"], "ways": p["ways"], "shots": p["shots"], "queries": p["queries"],
               "split": p["split"], "image_size": p["image_size"], "quiet": p["quiet"]}
    return plugins.problem("omniglot", options)  # type: ignore[return-value]


MNIST1D = (*SHARED, opt("num_samples", int, 12_000,
                        help="Examples generated by mnist1d (80% meta-train, 20% held out for evaluation)."))
OMNIGLOT = (
    *SHARED,
    opt("data_dir", Path | None, None,
        help="Omniglot folder (default $FOBBENCH_DATA, else ~/.cache/fobbench/omniglot)."),
    opt("split", str, "maml", help="Character split: maml, lake or vinyals."),
    opt("image_size", int, 28, help="Image side in pixels."),
)

train_app.command(
    "mnist1d",
    epilog="Example: fobbench train mnist1d --methods fobmaml-sym,maml,fomaml,reptile,imaml --iterations 600",
)(options.command(
    lambda p: carry_out(p, "train.mnist1d", mnist1d_problem), MNIST1D, ALIASES,
    doc="""MNIST-1D N-way K-shot (paper §6.2, App. D.2): Conv1D, 12,000 generated examples.

    Meta-training tasks: the 9,600 training examples. Evaluation tasks: the 2,400 held-out examples.

    Both splits hold all 10 classes. Data are generated offline by the mnist1d package and cached.
    """,
))

train_app.command(
    "omniglot",
    epilog="Example: fobbench train omniglot --data-dir ~/data/omniglot --methods fobmaml-sym,maml --shots 1",
)(options.command(
    lambda p: carry_out(p, "train.omniglot", omniglot_problem), OMNIGLOT, ALIASES,
    defaults={"meta_batch": 32, "meta_lr": 1e-3, "ways": 5, "shots": 1, "queries": 15},
    doc="""Omniglot N-way K-shot (paper §6.3, App. D.4): Conv4 on real Omniglot images.

    Meta-training tasks: the split's training characters. Evaluation tasks: its test characters.
    """,
))


def plugin_problem(p: Mapping[str, Any]) -> FewShotProblem:
    """The ``--problem`` plugin (a registered name or package.module:factory), probed once."""
    from fobbench import plugins

    options = {"ways": p["ways"], "shots": p["shots"], "queries": p["queries"], "activation": p["activation"]}
    return plugins.problem(p["problem"], options)  # type: ignore[return-value]


def carry_out_plugin(p: Mapping[str, Any]) -> None:
    """Run ``train problem`` (its options checked before torch is imported)."""
    chosen = plan(p, "train.plugin", plugin_problem)
    from fobbench.experiments import runner

    runner.carry_out(chosen)


def _problem_names() -> str:
    from fobbench import plugin_names as plugins

    return ", ".join(plugins.names(plugins.PROBLEMS))


PLUGIN = (
    opt("problem", str, ..., help=f"A registered problem ({_problem_names()}) or package.module:factory."),
    *SHARED,
    opt("activation", str | None, None, help="Activation of a built-in model (relu, gelu, tanh, softplus)."),
)

train_app.command(
    "problem",
    epilog="Example: fobbench train problem --problem blobs:problem --methods fobmaml-sym,maml",
)(options.command(
    lambda p: carry_out_plugin(p), PLUGIN, ALIASES,
    doc="""Any problem: a registered name or your own package.module:factory.

    The factory returns an object with name, sample(split, tasks, generator) and model()
    (fobbench.plugins.Problem); see the README, "Benchmark your own model".
    """,
))
