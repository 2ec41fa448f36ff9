"""``fobbench run SUITE``: run a suite's points in order, in-process, with one progress display."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.main
from rich.markup import escape
from rich.table import Table

from fobbench import suites
from fobbench.cli import options
from fobbench.cli.app import app, load_commands
from fobbench.cluster import array_folder, resolve_shard
from fobbench.errors import FobbenchError, Interrupted
from fobbench.progress import console, out, progress, table_console

if TYPE_CHECKING:  # the runner (pandas, results store) is imported when a point runs
    from fobbench.experiments import runner


def default_out(suite_path: Path) -> Path:
    """``results/suites/<suite>-<UTC stamp>-<commit>/``: a fresh folder per invocation, except in a
    SLURM array job, where every job of the array shares ``results/suites/<suite>-slurm<job id>/``."""
    from fobbench.paths import run_stamp

    root = Path("results") / "suites"
    return array_folder(root, suite_path.stem, os.environ) or root / f"{suite_path.stem}-{run_stamp()}"


Planner = Callable[..., "runner.Plan"]
"""``planner(values, check_only=False) -> Plan`` of one command."""


def _planners() -> dict[tuple[str, ...], Planner]:
    """Command words -> the command's plan built from typed option values (aliases resolved)."""
    from fobbench.cli import gradcheck, memory, train

    def with_aliases(plan: Planner, aliases: Sequence[options.Alias]) -> Planner:
        return lambda values, check_only=False: plan(options.resolve_aliases(values, aliases), check_only)

    return {
        ("gradcheck",): with_aliases(gradcheck.plan, gradcheck.ALIASES),
        ("memory",): with_aliases(memory.plan, memory.ALIASES),
        ("train", "mnist1d"): with_aliases(
            lambda v, c: train.plan(v, "train.mnist1d", train.mnist1d_problem, c), train.ALIASES),
        ("train", "omniglot"): with_aliases(
            lambda v, c: train.plan(v, "train.omniglot", train.omniglot_problem, c), train.ALIASES),
    }


def _checks() -> dict[tuple[str, ...], Callable[[dict[str, Any]], object]]:
    """Command words -> the torch-free check of its values (:mod:`fobbench.cli.checks`), aliases resolved."""
    from fobbench.cli import checks, gradcheck, memory, train

    aliases = {("gradcheck",): gradcheck.ALIASES, ("memory",): memory.ALIASES,
               ("train", "mnist1d"): train.ALIASES, ("train", "omniglot"): train.ALIASES}

    def checked(words: tuple[str, ...]) -> Callable[[dict[str, Any]], object]:
        def check(values: dict[str, Any]) -> object:
            with contextlib.redirect_stderr(io.StringIO()):  # the planner notes deprecated spellings
                resolved = options.resolve_aliases(values, aliases[words])
            return checks.CHECKS[words](resolved)
        return check

    return {words: checked(words) for words in aliases}


def check_values(suite: suites.Suite, root: Any, points: Sequence[suites.Point], outputs: dict[int, Path],
                 resume: bool) -> None:
    """Check every value of every point with its command's own plan, before anything runs.

    The parser has already checked names and types (:func:`suites.validate`); this checks
    what the command checks before running: ranges, method names, settings, sizes — first
    every point with the torch-free checks of :mod:`fobbench.cli.checks`, then every point
    with its command's plan.

    Raises:
        suites.SuiteError: ``FILE:LINE: [[run]] #N 'name': key 'options.seq': message`` at the
            first bad value.
    """
    # first every value of every point without torch (a bad one answers at once), then what only
    # the commands' own plans can check
    _check_each(suite, root, points, outputs, resume, _checks())
    _check_each(suite, root, points, outputs, resume, _planners(), check_only=True)


def _check_each(suite: suites.Suite, root: Any, points: Sequence[suites.Point], outputs: dict[int, Path],
                resume: bool, by_command: dict[Any, Any], **kwargs: Any) -> None:
    """Call ``by_command[point.command](values, **kwargs)`` on every point that has one; a
    FobbenchError becomes the suite's ``FILE:LINE: [[run]] #N ...`` error."""
    for point in points:
        check = by_command.get(point.command)
        if check is None:
            continue
        output = outputs[point.index]
        values = suites.values(suite, root, point, output, resume=resume and output.exists())
        try:
            check(values, **kwargs)
        except FobbenchError as error:
            raise suites.value_error(suite, point, str(error)) from None


def execute_point(words: Sequence[str], values: dict[str, Any], verbose: bool) -> tuple[int, str]:
    """Run one point through the runner: (exit code, one-line error or '')."""
    from fobbench.experiments import runner

    planner = _planners().get(tuple(words))
    if planner is None:
        return 2, f"'fobbench {' '.join(words)}' cannot run in a suite"
    try:
        runner.carry_out(planner(values), show=verbose)
        return 0, ""
    except FobbenchError as error:
        return error.exit_code, str(error).strip().splitlines()[0] if str(error).strip() else "failed"
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001  (a crashing point is reported; the suite goes on)
        return 1, f"{type(error).__name__}: {error} (traceback in the point's .log)\n{traceback.format_exc()}"


@app.command(
    epilog=(
        "Example: fobbench run suites/ci.toml --out /tmp/ci_run\n\n"
        "Cluster array job (sbatch --array=0-7): fobbench run suites/paper.toml --out runs/paper "
        "--shard slurm"
    )
)
def run(
    suite_file: Annotated[Path, typer.Argument(metavar="SUITE", help="A suite file such as suites/ci.toml.")],
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Folder for the suite's results: <out>/<run name>/<point>.csv "
        "(default: results/suites/<suite>-<UTC time>-<commit>/).")] = None,
    shard: Annotated[str | None, typer.Option(
        "--shard", help="Run only slice I of N (I/N, 1-based): the points with index % N == I-1; "
        "slurm: I and N from $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT (shards share one --out).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", "--list",
        help="Print the expanded points and their command lines; run nothing.")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue a suite in an existing --out folder: points with results are resumed "
        "(finished rows skipped) instead of refused.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show each point's own output instead of saving it to <point>.log.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display and no per-point lines.")]
    = False,
) -> None:
    """Run every point of a suite file in order, writing each point's CSV under --out.

    A suite is a TOML file whose run tables each name a command, its options and optionally
    a sweep over one option (one invocation per value); see suites/ci.toml. The whole suite is checked against
    the commands' options before anything runs; errors name the file, line and key.
    """
    suite = suites.load(suite_file)
    points = suites.expand(suite)
    selected, shard_name = points, shard
    if shard is not None:
        index, count = resolve_shard(shard, os.environ)
        selected, shard_name = suites.shard(points, index, count), f"{index}/{count}"
    root_dir = out_dir if out_dir is not None else default_out(suite_file)
    root = load_commands()  # every command a suite may name
    args_of = suites.validate(suite, root, selected, root_dir)
    outputs = {p.index: suites.output(suite, root, p, root_dir) for p in selected}
    check_values(suite, root, selected, outputs, resume)
    shard_text = f", shard {shard_name}: {len(selected)}" if shard is not None else ""
    if dry_run:
        out.print(f"suite {suite_file}: {len(points)} points{shard_text}; out {root_dir}", soft_wrap=True)
        for point in selected:
            out.print(suites.describe(point, args_of[point.index]), soft_wrap=True, markup=False,
                      highlight=False)
        raise typer.Exit(0)

    existing = [path for path in outputs.values() if path.exists()]
    if existing and not resume:
        raise FobbenchError(
            f"{existing[0]} already exists: pass --resume to continue the suite in {root_dir}, "
            "or choose another --out"
        )
    started = time.perf_counter()
    try:
        records = _run_points(suite, root, selected, outputs, resume, verbose, quiet, suite_file.stem)
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(suite_out=root_dir) from None  # finished points resume as they are
    table_console().print(_summary(records, f"fobbench run {suite_file}{shard_text}"))
    failed = sum(1 for _, status, _, _ in records if status != "ok")
    out.print(
        f"{len(records)} points, {len(records) - failed} ok, {failed} failed in "
        f"{time.perf_counter() - started:.1f} s; results in {root_dir}", soft_wrap=True,
    )
    raise typer.Exit(1 if failed else 0)


PointRecord = tuple[suites.Point, str, float, Path]
"""(point, status, seconds, output) of one point run by a suite."""


def _run_points(suite: suites.Suite, root: Any, selected: Sequence[suites.Point], outputs: dict[int, Path],
                resume: bool, verbose: bool, quiet: bool, name: str) -> list[PointRecord]:
    """Run the selected points in order under one progress display; one status line each."""
    records: list[PointRecord] = []
    with progress(quiet) as bar:
        task = bar.add_task(f"suite {name}", total=len(selected))
        for number, point in enumerate(selected, start=1):
            bar.update(task, description=f"{point.run} {point.label}")
            records.append(_run_point(suite, root, point, outputs[point.index], resume, verbose))
            if not quiet:
                _, status, seconds, _ = records[-1]
                console.print(
                    f"[{number}/{len(selected)}] {point.run} {point.label}: {status} in {seconds:.1f} s",
                    soft_wrap=True, markup=False, highlight=False,
                )
            bar.advance(task)
    return records


def _run_point(suite: suites.Suite, root: Any, point: suites.Point, output: Path, resume: bool,
               verbose: bool) -> PointRecord:
    """Run one point into ``output`` (resumed if it exists and ``resume``); its messages go to
    ``<label>.log`` beside it, headed by the equivalent command line."""
    output.parent.mkdir(parents=True, exist_ok=True)
    resumed = resume and output.exists()
    args = suites.argv(suite, root, point, output, resume=resumed)
    values = suites.values(suite, root, point, output, resume=resumed)
    words, _ = suites.command_words(suite, root, point)
    begin = time.perf_counter()
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code, message = execute_point(words, values, verbose)
    seconds = time.perf_counter() - begin
    (output.parent / f"{point.label}.log").write_text(
        f"$ fobbench {shlex.join(args)}\n{stderr.getvalue()}{message}\nexit {code} after {seconds:.1f} s\n"
    )
    status = "ok" if code == 0 else f"failed ({code}): {message.splitlines()[0] if message else ''}"
    return point, status, seconds, output


def _summary(records: Sequence[PointRecord], title: str) -> Table:
    """One row per point: index, run, label, status (failures in red), seconds, results path."""
    table = Table(title=title, title_justify="left")
    for name in ("#", "run", "point", "status", "seconds", "results"):
        table.add_column(name, overflow="fold", justify="right" if name in ("#", "seconds") else "left")
    for point, status, seconds, output in records:
        style = "" if status == "ok" else "bold red"
        shown = f"[{style}]{escape(status)}[/]" if style else escape(status)
        table.add_row(str(point.index), point.run, point.label, shown, f"{seconds:.1f}", escape(str(output)))
    return table
