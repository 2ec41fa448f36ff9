"""The one run protocol: experiments yield records, this runner writes them.

An experiment (gradcheck, memory, train) is a typed spec that declares its results files
(:class:`Output`) and, given a :class:`Sink`, yields :class:`Record` s (one point's
measurements) and :class:`Tick` s (progress without a row). The runner owns everything
around that for every benchmark alike:

- the destination: ``--out`` or ``--resume`` (never both), else a fresh default path;
- resume/skip: :meth:`Sink.done` tells the experiment which points a resumed file already
  holds, and a record of such a point is never written twice;
- writing through the results store's public API (:class:`~fobbench.results.ResultWriter`);
- one progress bar.

``fobbench run`` builds the same specs from a suite's TOML and calls :func:`execute` directly.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pandas as pd

from fobbench.errors import FobbenchError, Interrupted
from fobbench.progress import progress
from fobbench.results import Measurement, ResultWriter, read_results


@dataclass(frozen=True)
class Output:
    """One results CSV of an experiment.

    Attributes:
        name: key of the file; the CSV is ``<folder>/<name>.csv`` when the experiment writes a
            folder, else the destination itself.
        benchmark: benchmark name of its rows (``gradcheck.error_vs_k``, ``memory.transformer``).
        point_columns: parameters that define a point (hashed).
        info_columns: per-point descriptions outside the hash.
        device: ``cpu``, ``cuda`` or ``meta``, recorded with the provenance.
    """

    name: str
    benchmark: str
    point_columns: tuple[str, ...]
    info_columns: tuple[str, ...] = ()
    device: str = "cpu"


@dataclass(frozen=True)
class Record:
    """One point: its identity and, unless it was skipped, its measurements.

    Attributes:
        method: estimator name.
        point: values of the output's point columns.
        settings: every other setting that changes the values (hashed, not written).
        seed: the point's seed.
        measurements: what was measured; empty for a point the experiment skipped.
        info: values of the output's info columns.
        output: which :class:`Output` it belongs to (its name; "" for the only one).
        advance: progress units this record stands for (default 1).
    """

    method: str
    point: Mapping[str, object]
    settings: Mapping[str, object] = field(default_factory=dict)
    seed: int = 0
    measurements: list[Measurement] = field(default_factory=list)
    info: Mapping[str, object] = field(default_factory=dict)
    output: str = ""
    advance: int = 1


@dataclass(frozen=True)
class Tick:
    """Progress without a row (e.g. a training iteration): ``count`` units, optional label."""

    count: int = 1
    label: str | None = None


class Sink:
    """What the runner hands an experiment: resume state, point hashes and file locations.

    A sink without writers (``paths`` only) is what a torch.distributed rank other than 0
    gets: it knows where the files are but cannot read or write them (:meth:`done` and
    :meth:`point_hash` raise); the experiment asks rank 0 instead.
    """

    def __init__(self, writers: Mapping[str, ResultWriter], resuming: bool = False,
                 paths: Mapping[str, Path] | None = None) -> None:
        self._writers = dict(writers)
        self._paths = dict(paths or {})
        self.resuming = resuming
        """True when the run continues earlier files (experiments with checkpoints load them)."""
        self.hashes: set[str] = set()

    def _writer(self, output: str) -> ResultWriter:
        if not self._writers:
            raise FobbenchError("internal: a rank that does not write asked the results file")
        if output not in self._writers:
            if output == "" and len(self._writers) == 1:
                return next(iter(self._writers.values()))
            raise KeyError(f"no output named {output!r}")
        return self._writers[output]

    def done(self, record: Record) -> bool:
        """True when a resumed file already holds this point at this seed."""
        return self._writer(record.output).is_done(record.method, record.point, record.settings, record.seed)

    def point_hash(self, record: Record) -> str:
        """The config hash of the record's point (benchmark, method, point, settings)."""
        return self._writer(record.output).point_hash(record.method, record.point, record.settings)

    def path(self, output: str = "") -> Path:
        """The CSV file of ``output``."""
        if not self._writers:
            return self._paths[output]
        return self._writer(output).path

    def write(self, record: Record) -> None:
        """Write a record's measurements unless the file already holds its point."""
        self.hashes.add(self.point_hash(record))
        if record.measurements and not self.done(record):
            writer = self._writer(record.output)
            writer.write_point(record.method, record.point, record.settings, record.seed, record.measurements,
                               record.info)


class Experiment(Protocol):
    """A benchmark spec the runner can execute."""

    def outputs(self) -> list[Output]:
        """The results files it writes."""

    def total(self) -> int:
        """Progress units of a full run (records' ``advance`` plus ticks)."""

    def records(self, sink: Sink) -> Iterator[Record | Tick]:
        """Run, yielding each point's record (skipping points ``sink.done`` reports)."""


def _files(outputs: list[Output], path: Path) -> dict[str, Path]:
    """The CSV of each output: ``path`` itself for a single unnamed output, else ``path/<name>.csv``."""
    folder = len(outputs) > 1 or outputs[0].name != ""
    return {o.name: path / f"{o.name}.csv" if folder else path for o in outputs}


def destination(out: Path | None, resume: Path | None, default: Callable[[], Path]) -> tuple[Path, bool]:
    """The "--out or --resume" rule of every command: (path, resuming).

    Raises:
        FobbenchError: both were given.
    """
    if out is not None and resume is not None:
        raise FobbenchError("give either --out or --resume, not both")
    if resume is not None:
        return Path(resume), True
    return (Path(out) if out is not None else default()), False


@dataclass(frozen=True)
class RunFiles:
    """What a run wrote: the CSV of each output and the config hashes of the points visited."""

    paths: dict[str, Path]
    hashes: frozenset[str]

    def frame(self) -> pd.DataFrame:
        """This run's rows (a resumed file may also hold rows of other settings: left out)."""
        frames = [read_results(path) for path in self.paths.values() if path.exists()]
        if not frames:
            return pd.DataFrame()
        frame = pd.concat(frames, ignore_index=True, sort=False)
        return frame[frame["config_hash"].astype(str).isin(self.hashes)].reset_index(drop=True)


def _writers(outputs: list[Output], path: Path, resume: bool) -> dict[str, ResultWriter]:
    """One writer per output: ``path`` itself for a single unnamed output, else ``path/<name>.csv``.

    Each writer holds its file's lock from here on: the caller closes them (:func:`execute`
    does, in ``finally``). If opening one fails, those already opened are closed here.
    """
    folder = len(outputs) > 1 or outputs[0].name != ""
    if folder:
        if resume and path.is_file():
            raise FobbenchError(f"--resume takes the run's folder, not one of its CSV files: "
                                f"--resume {path.parent}")
        if resume and not path.is_dir():
            raise FobbenchError(f"--resume: {path} is not a results folder")
        if path.exists() and not path.is_dir():
            raise FobbenchError(f"--out: {path} exists and is not a folder (this command writes one CSV per "
                                "sub-experiment into a folder)")
    writers: dict[str, ResultWriter] = {}
    try:
        for output in outputs:
            file = path / f"{output.name}.csv" if folder else path
            writers[output.name] = ResultWriter(file, output.benchmark, output.point_columns,
                                                output.info_columns, device=output.device,
                                                resume=resume and (not folder or file.exists()),
                                                resume_target=path)
    except BaseException:
        for writer in writers.values():
            writer.close()
        raise
    return writers


def execute(experiment: Experiment, path: Path, resume: bool = False, quiet: bool = True,
            label: str = "", write: bool = True) -> RunFiles:
    """Run ``experiment`` into ``path`` (a file, or a folder for several outputs).

    Every results file is locked while the run writes it and released when it ends, however
    it ends (the writers are closed in ``finally``), so consecutive runs in one process
    (``fobbench run``) never trip over their own locks.

    Args:
        experiment: the spec.
        path: destination (see :func:`destination`).
        resume: continue the file(s) at ``path``, skipping finished points.
        quiet: no progress bar.
        label: progress bar description (default: the first output's benchmark).
        write: False on a torch.distributed rank other than 0: the experiment runs (it takes
            part in the collectives) but nothing is opened, written or shown.

    Returns:
        The files written and the hashes of the points visited.
    """
    outputs = experiment.outputs()
    if not write:
        sink = Sink({}, resuming=resume, paths=_files(outputs, Path(path)))
        for _ in experiment.records(sink):
            pass
        return RunFiles(_files(outputs, Path(path)), frozenset())
    writers = _writers(outputs, Path(path), resume)
    sink = Sink(writers, resuming=resume)
    try:
        with progress(quiet) as bar, _swallowed_interrupts() as swallowed:
            task = bar.add_task(label or outputs[0].benchmark, total=experiment.total())
            for item in experiment.records(sink):
                if isinstance(item, Tick):
                    described = {"description": item.label} if item.label else {}
                    bar.update(task, advance=item.count, **described)
                else:
                    sink.write(item)
                    bar.update(task, advance=item.advance)
                if swallowed:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        # Every finished point is on disk: say how to continue (the CLI prints it, exit 130).
        raise Interrupted(resume=Path(path)) from None
    finally:
        for writer in writers.values():
            writer.close()
    return RunFiles({o.name: sink.path(o.name) for o in outputs}, frozenset(sink.hashes))


@contextlib.contextmanager
def _swallowed_interrupts() -> Iterator[list[object]]:
    """Catch the Ctrl-C that Python cannot raise.

    A SIGINT that lands while a weak-reference callback or ``__del__`` runs (the CPU memory
    tracker releases storages from weakref callbacks all the time) raises KeyboardInterrupt
    inside that callback, where Python only prints "Exception ignored … Traceback" and carries
    on. While this context is active, such an interrupt is recorded in the yielded list, silently,
    and :func:`execute` stops at the next record or tick as for any Ctrl-C. Other unraisable
    exceptions go to the previous hook.
    """
    swallowed: list[object] = []
    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            swallowed.append(unraisable.object)
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield swallowed
    finally:
        sys.unraisablehook = previous


@dataclass(frozen=True)
class Plan:
    """A command's parsed request, ready for the runner (``parse → spec → runner → show``).

    Attributes:
        spec: the experiment.
        path: destination file or folder (see :func:`destination`).
        resume: continue ``path``.
        quiet: no progress bar, no status lines.
        threads: torch CPU threads while it runs (None: leave torch's setting).
        label: progress bar description.
        show: prints tables and draws figures from what was written (the CLI's part); None
            when nothing is shown (``fobbench run``).
        write: False on torch.distributed ranks other than 0 (see :func:`execute`).
    """

    spec: Experiment
    path: Path
    resume: bool = False
    quiet: bool = False
    threads: int | None = None
    label: str = ""
    show: Callable[[RunFiles], None] | None = None
    write: bool = True


def carry_out(plan: Plan, show: bool = True) -> RunFiles:
    """Execute a plan (with its thread count, restored afterwards), then show its results."""
    import torch  # the runner itself needs no torch; only the thread setting does

    previous = torch.get_num_threads()
    if plan.threads is not None:
        if plan.threads < 1:
            raise FobbenchError(f"--threads must be >= 1 (got {plan.threads})")
        torch.set_num_threads(plan.threads)
    try:
        files = execute(plan.spec, plan.path, resume=plan.resume, quiet=plan.quiet, label=plan.label,
                        write=plan.write)
    finally:
        if plan.threads is not None:
            torch.set_num_threads(previous)
    if show and plan.write and plan.show is not None:
        plan.show(files)
    return files
