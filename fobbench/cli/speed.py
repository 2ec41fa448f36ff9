"""``fobbench speed``: time and peak memory of one meta-gradient per method, batching and
meta-batch, against each method's honest floor and the peer libraries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fobbench.choices import PEERS
from fobbench.cli import checks, options
from fobbench.cli.app import app
from fobbench.cli.options import opt
from fobbench.errors import FobbenchError
from fobbench.methods import hyperparameter_help, parse_methods, rank_of
from fobbench.ranges import parse_range, parse_seeds

if TYPE_CHECKING:  # torch, pandas and matplotlib are imported once the options are known good
    import pandas as pd

    from fobbench.experiments import runner
    from fobbench.experiments import speed as experiment

OPTIONS = (
    opt("problem", str, "mnist1d", help="mnist1d (Conv1D, App. D.2) or omniglot (Conv4; needs --data-dir)."),
    opt("methods", str, "maml,fomaml,fobmaml-sym", help="Comma-separated estimators, or all."),
    opt("batching", str, "vmap,loop", help="fobbench batchings to time: vmap, loop (comma-separated)."),
    opt("compile", bool, False, "--compile",
        help="Also time torch.compile of the vmapped meta-gradient (cache: $FOBBENCH_CACHE/inductor; "
             "the first, compiling call is reported apart as compile_sec)."),
    opt("peers", str | None, None,
        help=f"Peer libraries timed beside fobbench: {','.join(PEERS)} or all "
             "(pip install 'fobbench[peers]')."),
    opt("meta_batch", str, "16", help="Tasks per meta-gradient; a list or range times each (e.g. 4,16)."),
    opt("rounds", int, 3, help="Interleaved rounds over all contenders (each: Timer.blocked_autorange)."),
    opt("min_run_time", float, 1.0, help="Seconds blocked_autorange spends per contender and round."),
    opt("inner_steps", int, 5, help="Inner steps K of every method."),
    opt("inner_lr", float, 0.1, help="Inner step size α of every method."),
    opt("lam", float, 2.0, help="Proximal strength λ > 0 of the inner problem."),
    opt("nu", float, 0.1, help=hyperparameter_help("nu")),
    opt("cg_steps", int, 5, help=hyperparameter_help("cg_steps")),
    opt("es_samples", int, 16, help=hyperparameter_help("es_samples")),
    opt("ways", int, 3, help="N classes per task."),
    opt("shots", int, 5, help="K support examples per class."),
    opt("queries", int, 10, help="Query examples per class."),
    opt("num_samples", int, 12_000, help="MNIST-1D examples generated."),
    opt("data_dir", Path | None, None, help="Omniglot folder (default $FOBBENCH_DATA)."),
    opt("seeds", str, "0", help="Seed of the model and the tasks (one)."),
    opt("no_memory", bool, False, help="Skip the peak-memory call of each contender."),
    opt("no_floors", bool, False, help="Skip the floors."),
    opt("device", str, "cpu", help="cpu or cuda."),
    opt("threads", int | None, None,
        help="torch CPU threads (default 1 for this timing benchmark: a shared pool stalls; recorded)."),
    opt("out_file", Path | None, None, "--out",
        help="Results CSV (default results/speed/<time>-<commit>.csv)."),
    opt("resume", Path | None, None, help="Continue this results CSV, skipping finished methods."),
    opt("no_plot", bool, False, help="Do not draw the figure beside the CSV."),
    opt("fmt", str, "png", "--format", help="Figure format: png, svg or pdf."),
    opt("quiet", bool, False, help="No progress bar."),
)


def _problem(p: Mapping[str, Any]) -> Any:
    if p["problem"] == "mnist1d":
        from fobbench.problems.mnist1d import MNIST1DProblem

        return MNIST1DProblem(ways=p["ways"], shots=p["shots"], queries=p["queries"],
                              num_samples=p["num_samples"])
    if p["problem"] == "omniglot":
        from fobbench.problems.omniglot import OmniglotProblem

        return OmniglotProblem(data_dir=p["data_dir"], ways=p["ways"], shots=p["shots"], queries=p["queries"],
                               quiet=p["quiet"])
    raise FobbenchError(f"--problem: unknown '{p['problem']}' (choose from mnist1d, omniglot)")


def settings(p: Mapping[str, Any]) -> experiment.SpeedSettings:
    """The benchmark's settings from the option values (by parameter name)."""
    from fobbench.estimators import EstimatorConfig
    from fobbench.experiments import speed as experiment
    from fobbench.inner import InnerConfig
    from fobbench.peers import parse_peers

    batchings = [b.strip() for b in str(p["batching"]).split(",") if b.strip()]
    if p["compile"] and "compiled" not in batchings:
        batchings.append("compiled")
    seeds = parse_seeds(str(p["seeds"]))
    if len(seeds) != 1:
        raise FobbenchError("--seeds: speed times one model and meta-batch; give one seed")
    if p["device"] not in ("cpu", "cuda"):
        raise FobbenchError(f"--device must be cpu or cuda (got {p['device']})")
    inner = InnerConfig(steps=p["inner_steps"], lr=p["inner_lr"], lam=p["lam"])
    return experiment.SpeedSettings(
        methods=tuple(dict.fromkeys(parse_methods(p["methods"], allow_exact=False))),
        batchings=tuple(dict.fromkeys(batchings)),
        meta_batches=tuple(parse_range(str(p["meta_batch"]), "--meta-batch", kind=int)),
        peers=tuple(parse_peers(p["peers"])),
        estimator=EstimatorConfig(inner=inner, nu=p["nu"], cg_steps=p["cg_steps"],
                                  es_samples=p["es_samples"]),
        rounds=p["rounds"], min_run_time=p["min_run_time"], memory=not p["no_memory"],
        floors=not p["no_floors"], seed=seeds[0], device=p["device"],
    )


def _cell(value: float, spec: str, scale: float = 1.0) -> str:
    return "–" if value is None or not math.isfinite(value) else format(value * scale, spec)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per contender: median ms, IQR ms, ×floor, ×compiled floor, × fobbench's vmap,
    agreement, peak MiB, compile seconds."""
    import pandas as pd

    if frame.empty:
        return pd.DataFrame()
    keys = ["meta_batch", "method", "impl", "batching"]
    wide = frame.pivot_table(index=keys, columns="metric", values="value", aggfunc="last").reset_index()
    for column in ("seconds_median", "seconds_iqr", "floor_ratio", "compiled_floor_ratio", "agreement",
                   "peak_mib", "compile_sec"):
        if column not in wide:
            wide[column] = math.nan
    vmap = wide[(wide["impl"] == "fobbench") & (wide["batching"] == "vmap")].set_index(
        ["meta_batch", "method"])["seconds_median"]
    wide["vs_vmap"] = [
        row.seconds_median / vmap.get((row.meta_batch, row.method), math.nan) for row in wide.itertuples()
    ]
    order = {"fobbench": 0, "floor": 2}
    wide["_key"] = [(row.meta_batch, rank_of(row.method), order.get(row.impl, 1), row.impl, row.batching)
                    for row in wide.itertuples()]
    return wide.sort_values("_key").drop(columns="_key").reset_index(drop=True)


def show_table(frame: pd.DataFrame, title: str) -> None:
    """Print the summary table of a speed run."""
    from rich import box
    from rich.table import Table

    from fobbench.progress import table_console

    table = summary(frame)
    if table.empty:
        return
    view = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("B", "method", "impl", "batching", "median ms", "IQR ms", "×floor", "×c.floor", "×vmap",
                   "agreement", "peak MiB", "compile s"):
        view.add_column(column, justify="left" if column in ("method", "impl", "batching") else "right")
    for row in table.itertuples():
        view.add_row(str(row.meta_batch), row.method, row.impl, row.batching,
                     _cell(row.seconds_median, ".1f", 1e3), _cell(row.seconds_iqr, ".1f", 1e3),
                     _cell(row.floor_ratio, ".2f"), _cell(row.compiled_floor_ratio, ".2f"),
                     _cell(row.vs_vmap, ".2f"), _cell(row.agreement, ".1e"),
                     _cell(row.peak_mib, ".2f"), _cell(row.compile_sec, ".1f"))
    wide = table_console()
    wide.print(view)
    wide.print("×floor: median ÷ the method's honest floor (impl floor, batching plain: its registered "
               "passes as plain nn.Module fwd+bwd over all tasks' examples at once; vmap-ref: per-task "
               "vmap(grad) reference); ×c.floor (compiled rows): ÷ the same passes under torch.compile "
               "(batching plain-compiled; a compiled method can run below the eager floor, which pays "
               "operator dispatch); ×vmap: ÷ fobbench's vmap time for the method; agreement: relative "
               "error of the meta-gradient against fobbench's (float64 unless compiled); peak: live "
               "tensor bytes of one call.")


def plan(p: Mapping[str, Any]) -> runner.Plan:
    """The runner's plan of ``fobbench speed`` from its option values."""
    checks.check_speed(p)  # every value, before torch is imported
    from fobbench.experiments import runner
    from fobbench.experiments import speed as experiment
    from fobbench.figures.common import check_format
    from fobbench.measure.timing import default_threads
    from fobbench.progress import console
    from fobbench.results import default_path, read_results

    check_format(p["fmt"])
    chosen = settings(p)
    problem = _problem(p)
    benchmark = f"speed.{problem.name}"
    threads = p["threads"] if p["threads"] is not None else default_threads("speed")
    path, resuming = runner.destination(p["out_file"], p["resume"], lambda: default_path(benchmark))
    spec = experiment.SpeedRun(problem, chosen, benchmark)

    def show(files: runner.RunFiles) -> None:
        for note in spec.notes:
            console.print(f"note: {note}", soft_wrap=True, markup=False)
        frame = files.frame()
        show_table(frame, f"{benchmark}: one meta-gradient, {threads} thread(s), device {chosen.device}")
        console.print(f"results: {path}")
        if not p["no_plot"] and not frame.empty:
            from fobbench.figures.speed import draw

            for figure in draw(read_results(path), path.parent / f"{path.stem}-figures", p["fmt"]):
                console.print(f"figure: {figure}")

    return runner.Plan(spec, Path(path), resuming, p["quiet"], threads, benchmark, show)


def carry_out(p: Mapping[str, Any]) -> None:
    """Run ``fobbench speed`` (its options checked before torch is imported)."""
    chosen = plan(p)
    from fobbench.experiments import runner

    runner.carry_out(chosen)


app.command(
    "speed",
    epilog="Example: fobbench speed --methods maml,fomaml,fobmaml-sym --peers higher,torchopt "
           "--meta-batch 16",
)(options.command(
    lambda p: carry_out(p), OPTIONS,
    doc="""Time one meta-gradient per method × batching × meta-batch (torch.utils.benchmark: median, IQR).

    Every contender (fobbench's vmap/loop/compiled batchings and the --peers libraries) runs on the
    same model, θ and tasks; its meta-gradient is checked against fobbench's in float64 first
    (agreement column), its peak live tensor memory measured, and its time set against the method's
    honest floor. Runs with 1 torch thread unless --threads says otherwise.
    """,
))
