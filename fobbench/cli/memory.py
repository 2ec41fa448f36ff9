"""``fobbench memory``: peak memory of one meta-gradient update as the model grows."""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fobbench import plugin_names as plugins
from fobbench.choices import FIGURE_FORMATS as FORMATS
from fobbench.cli import checks, options
from fobbench.cli.app import app
from fobbench.errors import FobbenchError
from fobbench.methods import BATCHING, hyperparameter_help, names, parse_methods, rank_of

if TYPE_CHECKING:  # torch, pandas and rich tables are imported once the options are known good
    import pandas as pd
    from rich.table import Table

    from fobbench.experiments import runner

ALIASES = (options.alias("--k", int), options.alias("--outer-lr", float), options.alias("--seed"))
"""Old spellings accepted (hidden, with a deprecation note)."""


class Arch(str, Enum):
    convnet = "convnet"
    transformer = "transformer"
    plugin = "plugin"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class Sdpa(str, Enum):
    default = "default"
    math = "math"


Batching = Enum("Batching", {name: name for name in BATCHING}, type=str)
Fmt = Enum("Fmt", {name: name for name in FORMATS}, type=str)


def _table(frame: pd.DataFrame, sweep: str, title: str) -> Table:
    """Peak MiB above the baseline: one row per method (display order), one column per sweep value."""
    from rich.table import Table

    from fobbench.experiments import memory as experiment

    table = Table(title=title)
    table.add_column(f"method \\ {sweep}", style="bold")
    rows = frame[frame["metric"] == "peak_mib"] if not frame.empty else frame
    if rows.empty:
        return table
    values = list(dict.fromkeys(rows[sweep]))
    for value in values:
        table.add_column(str(value), justify="right")
    for method in sorted(dict.fromkeys(rows["method"]), key=rank_of):
        mine = rows[rows["method"] == method].drop_duplicates(sweep, keep="last").set_index(sweep)
        cells = ["" if v not in mine.index else
                 "oom" if mine.loc[v, "status"] == experiment.STATUS_OOM else f"{mine.loc[v, 'value']:,.1f}"
                 for v in values]
        table.add_row(method, *cells)
    return table


@app.command(
    epilog=(
        "Example: fobbench memory --arch transformer --seq 32..512   ·   "
        "fobbench memory --arch convnet --channels 16..256 --limit 512   ·   "
        "fobbench memory --arch transformer --d-model 64..512 --estimate"
    )
)
def memory(
    arch: Annotated[Arch, typer.Option(
        "--arch", help="Activation-heavy ConvNet (D.3) or Transformer block (D.5).")] = Arch.transformer,
    channels: Annotated[str | None, typer.Option(
        "--channels", help="ConvNet channels to sweep (default 16..256).")] = None,
    d_model: Annotated[str | None, typer.Option(
        "--d-model", help="Transformer width (default 128; sweep e.g. 64..512).")] = None,
    seq: Annotated[str | None, typer.Option(
        "--seq", help="Sequence length (default 32..512; 128 when --d-model is swept).")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Your model instead of --arch: a registered memory model "
        f"({', '.join(plugins.names(plugins.MODELS))}) or package.module:factory; factory(size) "
        "returns MemoryCase(model, tasks).")] = None,
    sizes: Annotated[str | None, typer.Option(
        "--sizes", help="With --model: the sizes passed to the factory (range syntax, e.g. 8..64).")] = None,
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated methods, or all "
                                         f"({', '.join(names(trainable=True))}).")] = "all",
    device: Annotated[Device, typer.Option(
        "--device", help="cpu: live-tensor accounting; cuda: max_memory_allocated.")] = Device.cpu,
    estimate: Annotated[bool, typer.Option(
        "--estimate", help="Predict by running on the meta device (measured_by=estimate).")] = False,
    limit: Annotated[float | None, typer.Option(
        "--limit", help="MiB above the baseline an update may use; beyond it: oom.")] = None,
    sdpa: Annotated[Sdpa, typer.Option(
        "--sdpa", help="Attention kernel; MAML/iMAML always use math (recorded).")] = Sdpa.default,
    batching: Annotated[Batching, typer.Option(
        "--batching", help="loop: tasks one at a time (paper); vmap: all tasks batched.")] = Batching["loop"],
    tasks: Annotated[int, typer.Option(
        "--tasks", help="Tasks in the meta-batch (with loop batching the peak is per task).")] = 1,
    batch: Annotated[int, typer.Option(
        "--batch", help="Examples in each task's support set and in its query set.")] = 4,
    ways: Annotated[int, typer.Option("--ways", help="Classes per task.")] = 5,
    depth: Annotated[int | None, typer.Option(
        "--depth", help="Conv blocks (ConvNet, default 4) or Transformer blocks (default 1).")] = None,
    heads: Annotated[int, typer.Option("--heads", help="Attention heads (Transformer).")] = 8,
    ffn: Annotated[int, typer.Option("--ffn", help="Feed-forward hidden units (Transformer).")] = 512,
    image: Annotated[int, typer.Option("--image", help="ConvNet input side in pixels.")] = 16,
    in_channels: Annotated[int, typer.Option("--in-channels", help="ConvNet input channels.")] = 1,
    inner_steps: Annotated[int, typer.Option("--inner-steps", help="Inner steps K.")] = 5,
    inner_lr: Annotated[float, typer.Option("--inner-lr", help="Inner step size.")] = 0.1,
    lam: Annotated[float, typer.Option("--lam", help="Proximal strength λ.")] = 2.0,
    nu: Annotated[float, typer.Option("--nu", help=hyperparameter_help("nu"))] = 0.1,
    cg_steps: Annotated[int, typer.Option("--cg-steps", help=hyperparameter_help("cg_steps"))] = 5,
    es_samples: Annotated[int, typer.Option(
        "--es-samples", help="ES-MAML antithetic directions (memory: only the noise grows).")] = 2,
    es_sigma: Annotated[float, typer.Option("--es-sigma", help=hyperparameter_help("es_sigma"))] = 0.01,
    meta_lr: Annotated[float, typer.Option("--meta-lr", help="Step of the outer SGD update.")] = 1e-3,
    seeds: Annotated[str, typer.Option(
        "--seeds", help="Seed(s) of model, tasks and ES directions; a list repeats the sweep.")] = "0",
    out_file: Annotated[Path | None, typer.Option(
        "--out", help="Results CSV (default results/memory/<time>-<commit>.csv).")] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="Continue this results CSV, skipping finished points.")] = None,
    threads: Annotated[int, typer.Option(
        "--threads", help="torch CPU threads. Bytes do not depend on it; 1 (the default) keeps a busy "
        "machine fast (more threads contend with other processes).")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Do not draw figures beside the CSV.")] = False,
    fmt: Annotated[Fmt, typer.Option("--format", help="Figure format.")] = Fmt["png"],
    deprecated_k: Annotated[int | None, typer.Option("--k", hidden=True)] = None,
    deprecated_outer_lr: Annotated[float | None, typer.Option("--outer-lr", hidden=True)] = None,
    deprecated_seed: Annotated[str | None, typer.Option("--seed", hidden=True)] = None,
) -> None:
    """Peak memory of one full meta-gradient update per method as the model grows (paper Fig. 3, 6).

    Each point builds the model and tasks from the seed and measures one update (meta-gradient
    over the tasks plus an outer SGD step). Without --limit nothing stops a large point: use
    --estimate to predict sizes that would not fit.
    """
    chosen = plan(options.resolve_aliases(dict(locals()), ALIASES))  # checks every value first
    from fobbench.experiments import runner

    runner.carry_out(chosen)


def _choice(value: object) -> str:
    """An option value that may arrive as a Typer Enum (CLI) or as its string (``fobbench run``)."""
    return str(getattr(value, "value", value))


def _checked(p: Mapping[str, Any]) -> tuple[str, str, str | None, float | None]:
    """(arch, device, plugin model, --limit) after the checks that need no sweep: threads, the
    plugin path (a bad one fails here, before anything is written), --estimate vs cuda, --limit."""
    arch, device = _choice(p["arch"]), _choice(p["device"])
    if p["threads"] < 1:
        raise FobbenchError(f"--threads must be >= 1 (got {p['threads']})")
    model = p.get("model")
    if model is not None:
        from fobbench import plugins as loader

        loader.memory_model(model)
        arch = "plugin"
    elif arch == "plugin":
        raise FobbenchError("--arch plugin needs --model")
    if p["estimate"] and device == "cuda":
        raise FobbenchError(
            "--estimate runs on the meta device and predicts CPU accounting; drop --device cuda"
        )
    limit = p["limit"]
    if limit is not None and not (limit > 0 and math.isfinite(limit)):
        raise FobbenchError(f"--limit must be a positive number of MiB (got {limit})")
    return arch, device, model, limit


def plan(p: Mapping[str, Any], check_only: bool = False) -> runner.Plan:
    """The runner's plan of ``fobbench memory`` from its option values (by parameter name).

    Every value is checked here, before anything runs. ``check_only`` (``fobbench run``
    checking a whole suite) skips what is a fact of the machine, not of the values: whether
    a CUDA device is present is checked when the point starts.
    """
    checks.check_memory(p)  # every value, before torch is imported
    from fobbench.experiments import memory as experiment
    from fobbench.experiments import runner
    from fobbench.paths import check_writable_file, figure_dir
    from fobbench.progress import console, out, print_figures
    from fobbench.ranges import parse_seeds
    from fobbench.results import default_path, read_results

    arch, device, model, limit = _checked(p)
    backend = "estimate" if p["estimate"] else device
    settings = experiment.MemorySettings(
        arch=arch, backend=backend, tasks=p["tasks"], batch=p["batch"], ways=p["ways"], depth=p["depth"],
        heads=p["heads"], ffn=p["ffn"], image=p["image"], in_channels=p["in_channels"],
        steps=p["inner_steps"],
        inner_lr=p["inner_lr"], lam=p["lam"], nu=p["nu"], cg_steps=p["cg_steps"], es_samples=p["es_samples"],
        es_sigma=p["es_sigma"], meta_lr=p["meta_lr"], batching=_choice(p["batching"]),
        sdpa=_choice(p["sdpa"]),
        limit_mib=limit, model=model,
    )
    seeds = parse_seeds(str(p["seeds"]), "--seeds")
    chosen = parse_methods(p["methods"], "--methods", allow_exact=False)
    sizes = checks.memory_sizes(arch, p["channels"], p["d_model"], p["seq"], p.get("sizes"))
    sweep, points = experiment.sweep_points(arch, sizes)
    settings.check(points)
    if model is not None:
        from fobbench import plugins as loader

        loader.memory_model(model)(points[0]["size"])  # probe: a broken factory fails before any write
    if backend == "cuda" and not check_only:
        from fobbench.measure.cuda import require_cuda

        require_cuda()
    path, resuming = runner.destination(p["out_file"], p["resume"], lambda: default_path(settings.benchmark))
    check_writable_file(path, "--resume" if resuming else "--out")
    kind = {"cpu": "CPU live tensors", "cuda": "CUDA max_memory_allocated",
            "estimate": "ESTIMATE (meta device)"}

    def show(files: runner.RunFiles) -> None:
        frame = files.frame()
        out.print(_table(frame, sweep, f"peak MiB above baseline, {kind[backend]}, {settings.benchmark}"))
        console.print(f"results: {path}")
        if not p["no_plot"] and not frame.empty:
            from fobbench.figures.memory import draw

            print_figures(draw(read_results(path), figure_dir(path), _choice(p["fmt"])))

    spec = experiment.MemorySweep(settings, tuple(points), tuple(chosen), sweep, seeds)
    return runner.Plan(spec, Path(path), resuming, p["quiet"], p["threads"], settings.benchmark, show)
