"""``fobbench memory``: peak memory of one meta-gradient update as the model grows."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from fobbench.cli.app import app
from fobbench.errors import FobbenchError
from fobbench.estimators import BATCHING, parse_methods
from fobbench.experiments import memory as experiment
from fobbench.figures.common import FORMATS
from fobbench.paths import figure_dir
from fobbench.progress import console, out, print_figures, progress
from fobbench.ranges import parse_range
from fobbench.results import ResultWriter, default_path, read_results

ALL_METHODS = "maml,imaml,fomaml,reptile,fobmaml-forward,fobmaml-sym,esmaml"


class Arch(str, Enum):
    convnet = "convnet"
    transformer = "transformer"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class Sdpa(str, Enum):
    default = "default"
    math = "math"


Batching = Enum("Batching", {name: name for name in BATCHING}, type=str)
Fmt = Enum("Fmt", {name: name for name in FORMATS}, type=str)


def _sizes(arch: str, channels: str | None, d_model: str | None, seq: str | None) -> dict[str, list[int]]:
    """Swept and fixed sizes from the options, with the paper's sweeps as defaults."""
    if arch == "convnet":
        if d_model is not None or seq is not None:
            raise FobbenchError("--d-model and --seq apply to --arch transformer, not convnet")
        return {"channels": parse_range("16..256" if channels is None else channels, "--channels")}
    if channels is not None:
        raise FobbenchError("--channels applies to --arch convnet, not transformer")
    d_values = parse_range("128" if d_model is None else d_model, "--d-model")
    # Fig. 6 (App. B) sweeps seq at d_model 128; Fig. 3 sweeps d_model at seq 128.
    seq_default = "128" if len(d_values) > 1 else "32..512"
    return {"d_model": d_values, "seq": parse_range(seq_default if seq is None else seq, "--seq")}


def _table(rows: list[experiment.Row], sweep: str, title: str) -> Table:
    """Peak MiB above the baseline: one row per method, one column per sweep value."""
    records = [
        {"method": r.method, sweep: r.point[sweep],
         "cell": "oom" if r.memory.status == experiment.STATUS_OOM else f"{r.memory.peak_bytes / 2**20:,.1f}"}
        for r in rows
    ]
    table = Table(title=title)
    table.add_column(f"method \\ {sweep}", style="bold")
    if not records:
        return table
    frame = pd.DataFrame(records)
    values = list(dict.fromkeys(frame[sweep]))
    for value in values:
        table.add_column(str(value), justify="right")
    for method in dict.fromkeys(frame["method"]):
        cells = frame[frame["method"] == method].drop_duplicates(sweep, keep="last").set_index(sweep)["cell"]
        table.add_row(method, *[str(cells.get(v, "")) for v in values])
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
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated methods.")] = ALL_METHODS,
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
    k: Annotated[int, typer.Option("--k", help="Inner steps K.")] = 5,
    inner_lr: Annotated[float, typer.Option("--inner-lr", help="Inner step size.")] = 0.1,
    lam: Annotated[float, typer.Option("--lam", help="Proximal strength λ.")] = 2.0,
    nu: Annotated[float, typer.Option("--nu", help="FO-B-MAML perturbation ν.")] = 0.1,
    cg_steps: Annotated[int, typer.Option("--cg-steps", help="iMAML conjugate-gradient steps.")] = 5,
    es_samples: Annotated[int, typer.Option(
        "--es-samples", help="ES-MAML antithetic directions (memory: only the noise grows).")] = 2,
    es_sigma: Annotated[float, typer.Option("--es-sigma", help="ES-MAML smoothing radius.")] = 0.01,
    outer_lr: Annotated[float, typer.Option("--outer-lr", help="Step of the outer SGD update.")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of model, tasks and ES directions.")] = 0,
    out_file: Annotated[Path | None, typer.Option(
        "--out", help="Results CSV (default results/memory/<time>-<commit>.csv).")] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="Continue this results CSV, skipping finished points.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Do not draw figures beside the CSV.")] = False,
    fmt: Annotated[Fmt, typer.Option("--format", help="Figure format.")] = Fmt["png"],
) -> None:
    """Peak memory of one full meta-gradient update per method as the model grows (paper Fig. 3, 6).

    Each point builds the model and tasks from the seed and measures one update (meta-gradient
    over the tasks plus an outer SGD step). Without --limit nothing stops a large point: use
    --estimate to predict sizes that would not fit.
    """
    if estimate and device == Device.cuda:
        raise FobbenchError(
            "--estimate runs on the meta device and predicts CPU accounting; drop --device cuda"
        )
    if out_file is not None and resume is not None:
        raise FobbenchError("give either --out or --resume, not both")
    if limit is not None and not (limit > 0 and math.isfinite(limit)):
        raise FobbenchError(f"--limit must be a positive number of MiB (got {limit})")
    backend = "estimate" if estimate else device.value
    settings = experiment.MemorySettings(
        arch=arch.value, backend=backend, tasks=tasks, batch=batch, ways=ways, depth=depth, heads=heads,
        ffn=ffn, image=image, in_channels=in_channels, steps=k, inner_lr=inner_lr, lam=lam, nu=nu,
        cg_steps=cg_steps, es_samples=es_samples, es_sigma=es_sigma, outer_lr=outer_lr,
        batching=batching.value, sdpa=sdpa.value, limit_mib=limit, seed=seed,
    )
    names = parse_methods(methods, "--methods", allow_exact=False)
    sweep, points = experiment.sweep_points(arch.value, _sizes(arch.value, channels, d_model, seq))
    settings.check(points)
    if backend == "cuda":
        from fobbench.measure.cuda import require_cuda

        require_cuda()
    path = resume if resume is not None else (out_file or default_path(settings.benchmark))
    writer = ResultWriter(path, settings.benchmark, settings.point_columns(), experiment.INFO_COLUMNS,
                          device="meta" if backend == "estimate" else backend, resume=resume is not None)
    hashed = settings.hashed()
    rows: list[experiment.Row] = []
    with writer, progress(quiet) as bar:
        task = bar.add_task(settings.benchmark, total=len(points) * len(names))
        stream = experiment.run(settings, points, names, sweep,
                                skip=lambda method, point: writer.is_done(method, point, hashed, seed))
        for row in stream:
            if row is not None:
                writer.write_point(row.method, row.point, hashed, seed, row.measurements(), row.info)
                rows.append(row)
                bar.update(task, description=f"{settings.benchmark} {sweep}={row.point[sweep]} {row.method}")
            bar.advance(task)
    kind = {"cpu": "CPU live tensors", "cuda": "CUDA max_memory_allocated",
            "estimate": "ESTIMATE (meta device)"}
    out.print(_table(rows, sweep, f"peak MiB above baseline, {kind[backend]}, {settings.benchmark}"))
    console.print(f"results: {path}")
    if not no_plot and rows:
        from fobbench.figures.memory import draw

        print_figures(draw(read_results(path), figure_dir(path), fmt.value))
