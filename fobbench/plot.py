"""Every figure, regenerated from results CSVs.

:func:`collect` reads the results below a path (skipping the figures folder itself), and
:func:`draw_all` hands the rows of each benchmark prefix (``gradcheck``, ``train``,
``memory``, ...) to ``fobbench.figures.<prefix>.draw(frame, out_dir, fmt)``. A prefix without
a figure module is reported, not an error, so new benchmarks never break ``fobbench plot``.
Plotting never writes a CSV, so its output can live below the folder it reads.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fobbench.errors import FobbenchError
from fobbench.figures.common import check_format
from fobbench.results import read_results
from fobbench.results.store import results_files

_MODULE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass
class PlotReport:
    """What :func:`draw_all` did.

    Attributes:
        written: prefix -> figure files written.
        rows: prefix -> number of result rows drawn from.
        missing: prefix -> why it has no figures (no figure module).
        failed: prefix -> the error its figure module raised.
    """

    written: dict[str, list[Path]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def collect(path: Path, exclude: Path | None = None) -> list[pd.DataFrame]:
    """The results below ``path`` (a CSV or a folder), one frame per file, ignoring ``exclude``.

    Files are kept apart so that each benchmark's frame is built only from its own files
    (concatenating unrelated benchmarks would turn their integer columns into floats).

    Compare reports (``compare --csv``) below the folder are skipped with a note.
    Raises FobbenchError (one line, exit 2) for a missing path, a folder without results
    CSVs, a foreign or unsupported CSV, or files that hold no rows at all.
    """
    path = Path(path)
    if path.is_dir():
        files = results_files(path, exclude=lambda p: exclude is not None and _inside(p, exclude))
        frames = [read_results(f) for f in files]
    else:
        frames = [read_results(path)]
    frames = [f for f in frames if not f.empty]
    if not frames:
        raise FobbenchError(f"{path}: the results files hold no rows yet")
    return frames


def by_prefix(frames: pd.DataFrame | Sequence[pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Rows grouped by benchmark prefix, each group concatenated from its own files only."""
    if isinstance(frames, pd.DataFrame):
        frames = [frames]
    parts: dict[str, list[pd.DataFrame]] = {}
    for frame in frames:
        prefixes = frame["benchmark"].astype(str).map(prefix_of)
        for prefix in prefixes.unique():
            part = frame[prefixes == prefix]
            if len(prefixes.unique()) > 1:
                part = part.dropna(axis=1, how="all")
            parts.setdefault(prefix, []).append(part)
    return {
        prefix: pd.concat(chunks, ignore_index=True, sort=False)
        for prefix, chunks in sorted(parts.items())
    }


def prefix_of(benchmark: str) -> str:
    """The figure module a benchmark belongs to: ``gradcheck.error_vs_k`` -> ``gradcheck``."""
    return str(benchmark).split(".")[0]


def figure_module(prefix: str):
    """``fobbench.figures.<prefix>``, or None when there is no such module."""
    if not _MODULE_NAME.match(prefix) or prefix == "common":
        return None
    name = f"fobbench.figures.{prefix}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name == name:
            return None
        raise


def draw_all(frames: pd.DataFrame | Sequence[pd.DataFrame], out_dir: Path, fmt: str = "png") -> PlotReport:
    """Draw the figures of every benchmark prefix in ``frames`` into ``out_dir``.

    Args:
        frames: results rows (any mix of benchmarks and runs): the per-file frames of
            :func:`collect`, or one frame.
        out_dir: where figures go (created when needed).
        fmt: ``png`` (default), ``svg`` or ``pdf``.
    """
    check_format(fmt)
    report = PlotReport()
    for prefix, rows in by_prefix(frames).items():
        report.rows[prefix] = len(rows)
        try:
            module = figure_module(prefix)
            if module is None or not hasattr(module, "draw"):
                report.missing[prefix] = f"no figure module fobbench.figures.{prefix} with draw()"
                continue
            paths = module.draw(rows, Path(out_dir), fmt)
        except FobbenchError:
            raise
        except Exception as error:  # noqa: BLE001  (a bug in one figure module must not hide the others)
            report.failed[prefix] = f"{type(error).__name__}: {error}"
            continue
        report.written[prefix] = [Path(p) for p in paths]
    return report
