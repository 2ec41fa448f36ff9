"""``fobbench train mnist1d|omniglot``: few-shot meta-training curves, accuracy and speed."""

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
from fobbench.estimators import EstimatorConfig, parse_methods
from fobbench.estimators.nu_rule import AUTO
from fobbench.experiments import train as experiment
from fobbench.figures import train as figures
from fobbench.figures.common import check_format
from fobbench.inner import InnerConfig
from fobbench.problems.base import FewShotProblem
from fobbench.progress import console, out, progress
from fobbench.ranges import parse_seeds
from fobbench.results import ResultWriter, default_path, read_results

train_app = typer.Typer(
    help="Meta-train a few-shot classifier with each estimator; accuracy curves, final table, speed.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")

# Options shared by both problems (typed once, used in both signatures).
Method = Annotated[str, typer.Option("--method", help="One estimator (ignored when --methods is given).")]
Methods = Annotated[str | None, typer.Option(
    "--methods", help="Comma-separated estimators side by side, e.g. fobmaml-sym,maml,fomaml,reptile,imaml "
    "(any of the registry but exact).")]
Iterations = Annotated[int, typer.Option("--iterations", help="Meta-iterations T (outer steps).")]
MetaBatch = Annotated[int, typer.Option("--meta-batch", help="Tasks per meta-gradient.")]
InnerLr = Annotated[float, typer.Option("--inner-lr", help="Inner step size α of every method.")]
MetaLr = Annotated[float, typer.Option("--meta-lr", help="Outer (meta) step size.")]
InnerSteps = Annotated[int, typer.Option("--inner-steps", help="Inner steps K.")]
InnerOpt = Annotated[str, typer.Option("--inner-optimizer", help="Inner solver: gd, momentum or adam.")]
Lam = Annotated[float, typer.Option(
    "--lam", help="Proximal strength λ of the inner problem (> 0; 0 only for maml, fomaml, reptile, esmaml).")]
Nu = Annotated[str, typer.Option(
    "--nu", help="FO-B-MAML perturbation ν ≠ 0, or auto (chosen from the dtype and λ; see README).")]
InnerProtocol = Annotated[str, typer.Option(
    "--inner-protocol", help="Inner problem: proximal (every method on f̂ + λ/2‖φ−θ‖²) or published "
    "(MAML, FO-MAML, Reptile, ES-MAML on f̂ alone, λ = 0, as published; FO-B-MAML and iMAML keep λ).")]
CgSteps = Annotated[int, typer.Option("--cg-steps", help="iMAML conjugate-gradient steps.")]
EsSamples = Annotated[int, typer.Option("--es-samples", help="ES-MAML antithetic Gaussian directions.")]
EsSigma = Annotated[float, typer.Option("--es-sigma", help="ES-MAML smoothing radius σ.")]
Outer = Annotated[str, typer.Option("--outer", help="Outer optimizer: sgd, clipped, sngdm or adam.")]
EvalEvery = Annotated[int, typer.Option("--eval-every", help="Iterations between evaluations (also at 0 and T).")]
EvalTasks = Annotated[int, typer.Option("--eval-tasks", help="Fixed held-out tasks per evaluation.")]
Seeds = Annotated[str, typer.Option(
    "--seeds", help="Seeds (repeats): 0..4 is 0,1,2,3,4; or a list 0,3,7.")]
CheckpointEvery = Annotated[int, typer.Option(
    "--checkpoint-every", help="Iterations between checkpoints (also at T), saved beside the CSV.")]
ChunkSize = Annotated[int | None, typer.Option(
    "--chunk-size", help="Tasks per vmap chunk (default: the whole meta-batch at once).")]
Batching = Annotated[str, typer.Option("--batching", help="vmap (tasks batched) or loop (one task at a time).")]
Device = Annotated[str, typer.Option("--device", help="cpu or cuda.")]
Threads = Annotated[int | None, typer.Option(
    "--threads", help="torch CPU threads (default: torch's; 1 is steadier on a shared machine).")]
OutFile = Annotated[Path | None, typer.Option("--out", help="Results CSV (default: results/train/<UTC stamp>-<commit>.csv).")]
Resume = Annotated[Path | None, typer.Option(
    "--resume", help="Continue an interrupted run's CSV from its checkpoints (same options).")]
NoPlot = Annotated[bool, typer.Option("--no-plot", help="Do not write figures beside the CSV.")]
Format = Annotated[str, typer.Option("--format", help="Figure format: png, svg or pdf.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bar.")]
Ways = Annotated[int, typer.Option("--ways", help="N classes per task.")]
Shots = Annotated[int, typer.Option("--shots", help="K support examples per class.")]
Queries = Annotated[int, typer.Option("--queries", help="Query examples per class.")]


def _config(method: str, methods: str | None, **values: object) -> experiment.TrainConfig:
    names = parse_methods(methods if methods else method, "--methods" if methods else "--method",
                          allow_exact=False)
    inner = InnerConfig(steps=values.pop("inner_steps"), lr=values.pop("inner_lr"),  # type: ignore[arg-type]
                        lam=values.pop("lam"), optimizer=values.pop("inner_optimizer"))  # type: ignore[arg-type]
    estimator = EstimatorConfig(inner=inner, nu=parse_nu(str(values.pop("nu"))), cg_steps=values.pop("cg_steps"),  # type: ignore[arg-type]
                                es_samples=values.pop("es_samples"), es_sigma=values.pop("es_sigma"),  # type: ignore[arg-type]
                                inner_protocol=values.pop("inner_protocol"))  # type: ignore[arg-type]
    seeds = parse_seeds(str(values.pop("seeds")))
    return experiment.TrainConfig(methods=tuple(dict.fromkeys(names)), estimator=estimator, seeds=seeds,
                                  **values)  # type: ignore[arg-type]


def parse_nu(text: str) -> float | str:
    """``--nu``: a number or ``auto``; anything else is a one-line error naming the option."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise FobbenchError(f"--nu must be a non-zero number or 'auto' (got '{text}')") from None


def _number(value: float, spec: str) -> str:
    return "–" if math.isnan(value) else format(value, spec)


def _show(path: Path) -> None:
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
              f"early: the same at the evaluation nearest iteration {figures.SUMMARY_ITERATION}; ms/it: time per "
              "meta-iteration without evaluation; ×floor: ms/it ÷ the plain fwd+bwd passes the method must do "
              "(2K of support+query for FO-B-MAML; K support + 1 query for MAML, FO-MAML, iMAML; K support "
              "for Reptile); wall: seconds of the run's wall time with evaluations.")


def _train(problem_factory, benchmark: str, config: experiment.TrainConfig, threads: int | None,
           out_file: Path | None, resume: Path | None, no_plot: bool, fmt: str, quiet: bool) -> None:
    """Shared body of the train commands: writer → loop with progress → table → figures."""
    if out_file is not None and resume is not None:
        raise FobbenchError("give either --out or --resume, not both")
    check_format(fmt)
    if threads is not None:
        if threads < 1:
            raise FobbenchError(f"--threads must be >= 1 (got {threads})")
        torch.set_num_threads(threads)
    problem: FewShotProblem = problem_factory()
    path = resume if resume is not None else (out_file if out_file is not None else default_path(benchmark))
    writer = ResultWriter(path, benchmark, experiment.POINT_COLUMNS, device=config.device,
                          resume=resume is not None)
    total = len(config.methods) * len(config.seeds) * config.iterations
    with progress(quiet) as bar:
        task = bar.add_task(f"{benchmark} {','.join(config.methods)}", total=total)
        folder = experiment.run(problem, config, writer, resume=resume is not None,
                                advance=lambda n: bar.advance(task, n))
    _show(writer.path)
    console.print(f"results: {writer.path}\ncheckpoints: {folder}", soft_wrap=True)
    if not no_plot:
        from fobbench.figures.train import draw

        figure_dir = writer.path.parent / f"{writer.path.stem}-figures"
        paths = draw(read_results(writer.path), figure_dir, fmt)
        if paths:
            console.print(f"figures: {figure_dir}/ ({len(paths)} files)", soft_wrap=True)


@train_app.command(
    "mnist1d",
    epilog="Example: fobbench train mnist1d --methods fobmaml-sym,maml,fomaml,reptile,imaml --iterations 600",
)
def mnist1d(
    method: Method = "fobmaml-sym",
    methods: Methods = None,
    iterations: Iterations = 600,
    meta_batch: MetaBatch = 16,
    inner_lr: InnerLr = 0.1,
    meta_lr: MetaLr = 3e-3,
    inner_steps: InnerSteps = 5,
    inner_optimizer: InnerOpt = "gd",
    lam: Lam = 2.0,
    nu: Nu = "0.1",
    inner_protocol: InnerProtocol = "proximal",
    cg_steps: CgSteps = 5,
    es_samples: EsSamples = 16,
    es_sigma: EsSigma = 0.01,
    outer: Outer = "adam",
    ways: Ways = 3,
    shots: Shots = 5,
    queries: Queries = 10,
    num_samples: Annotated[int, typer.Option(
        "--num-samples", help="Examples generated by mnist1d (80% meta-train, 20% held out for evaluation).")]
    = 12_000,
    eval_every: EvalEvery = 50,
    eval_tasks: EvalTasks = 200,
    seeds: Seeds = "0",
    checkpoint_every: CheckpointEvery = 100,
    chunk_size: ChunkSize = None,
    batching: Batching = "vmap",
    device: Device = "cpu",
    threads: Threads = None,
    out_file: OutFile = None,
    resume: Resume = None,
    no_plot: NoPlot = False,
    fmt: Format = "png",
    quiet: Quiet = False,
) -> None:
    """MNIST-1D N-way K-shot (paper §6.2, App. D.2): Conv1D, 12,000 generated examples.

    Meta-training tasks: the 9,600 training examples. Evaluation tasks: the 2,400 held-out examples.

    Both splits hold all 10 classes. Data are generated offline by the mnist1d package and cached.
    """
    from fobbench.problems.mnist1d import MNIST1DProblem

    config = _config(method, methods, iterations=iterations, meta_batch=meta_batch, inner_lr=inner_lr,
                     meta_lr=meta_lr, inner_steps=inner_steps, inner_optimizer=inner_optimizer, lam=lam,
                     nu=nu, inner_protocol=inner_protocol, cg_steps=cg_steps, es_samples=es_samples, es_sigma=es_sigma, outer=outer,
                     eval_every=eval_every, eval_tasks=eval_tasks, seeds=seeds,
                     checkpoint_every=checkpoint_every, chunk_size=chunk_size, batching=batching, device=device)
    _train(lambda: MNIST1DProblem(ways=ways, shots=shots, queries=queries, num_samples=num_samples),
           "train.mnist1d", config, threads, out_file, resume, no_plot, fmt, quiet)


@train_app.command(
    "omniglot",
    epilog="Example: fobbench train omniglot --data-dir ~/data/omniglot --methods fobmaml-sym,maml --ways 5 --shots 1",
)
def omniglot(
    method: Method = "fobmaml-sym",
    methods: Methods = None,
    iterations: Iterations = 600,
    meta_batch: MetaBatch = 32,
    inner_lr: InnerLr = 0.1,
    meta_lr: MetaLr = 1e-3,
    inner_steps: InnerSteps = 5,
    inner_optimizer: InnerOpt = "gd",
    lam: Lam = 2.0,
    nu: Nu = "0.1",
    inner_protocol: InnerProtocol = "proximal",
    cg_steps: CgSteps = 5,
    es_samples: EsSamples = 16,
    es_sigma: EsSigma = 0.01,
    outer: Outer = "adam",
    ways: Ways = 5,
    shots: Shots = 1,
    queries: Queries = 15,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Omniglot folder (default $FOBBENCH_DATA, else ~/.cache/fobbench/omniglot).")] = None,
    split: Annotated[str, typer.Option("--split", help="Character split: maml, lake or vinyals.")] = "maml",
    image_size: Annotated[int, typer.Option("--image-size", help="Image side in pixels.")] = 28,
    eval_every: EvalEvery = 50,
    eval_tasks: EvalTasks = 200,
    seeds: Seeds = "0",
    checkpoint_every: CheckpointEvery = 100,
    chunk_size: ChunkSize = None,
    batching: Batching = "vmap",
    device: Device = "cpu",
    threads: Threads = None,
    out_file: OutFile = None,
    resume: Resume = None,
    no_plot: NoPlot = False,
    fmt: Format = "png",
    quiet: Quiet = False,
) -> None:
    """Omniglot N-way K-shot (paper §6.3, App. D.4): Conv4 on real Omniglot images.

    Meta-training tasks: the split's training characters. Evaluation tasks: its test characters.
    """
    try:
        from fobbench.problems.omniglot import OmniglotProblem
    except ImportError as error:
        raise FobbenchError(f"the Omniglot problem is not available in this installation ({error})") from None

    config = _config(method, methods, iterations=iterations, meta_batch=meta_batch, inner_lr=inner_lr,
                     meta_lr=meta_lr, inner_steps=inner_steps, inner_optimizer=inner_optimizer, lam=lam,
                     nu=nu, inner_protocol=inner_protocol, cg_steps=cg_steps, es_samples=es_samples, es_sigma=es_sigma, outer=outer,
                     eval_every=eval_every, eval_tasks=eval_tasks, seeds=seeds,
                     checkpoint_every=checkpoint_every, chunk_size=chunk_size, batching=batching, device=device)
    _train(lambda: OmniglotProblem(data_dir=data_dir, ways=ways, shots=shots, queries=queries, split=split,
                                   image_size=image_size, quiet=quiet),
           "train.omniglot", config, threads, out_file, resume, no_plot, fmt, quiet)
