"""Append-safe CSV writing and folder-wide reading of results.

Every point's rows are written in one ``write`` call, then flushed and fsynced, so an
interrupted sweep keeps every finished point. ``ResultWriter(..., resume=True)`` reopens
a file, drops a half-written last line if a kill left one, and reports which
``(config_hash, seed)`` pairs are already done so they can be skipped.
"""

from __future__ import annotations

import csv
import io
import os
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from fobbench.errors import FobbenchError
from fobbench.measure.environment import environment, git_state
from fobbench.results.schema import (
    SCHEMA,
    SUPPORTED_MAJOR,
    Measurement,
    columns,
    config_hash,
    schema_major,
)

DEFAULT_ROOT = Path("results")


def run_stamp() -> str:
    """``<UTC timestamp>-<short commit>`` (``nogit`` outside a repository): names default outputs."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{git_state()[0][:7] or 'nogit'}"


def default_path(benchmark: str, root: Path = DEFAULT_ROOT) -> Path:
    """``results/<benchmark>/<UTC timestamp>-<short commit>.csv``, never an existing file."""
    name = run_stamp()
    folder = root / benchmark.split(".")[0]
    path = folder / f"{name}.csv"
    suffix = 1
    while path.exists():
        path = folder / f"{name}-{suffix}.csv"
        suffix += 1
    return path


def _format(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(float(value))
    return str(value)


class ResultWriter:
    """Writes one results file for one benchmark run.

    Args:
        path: the CSV file. A new run refuses an existing file (runs never overwrite);
            ``resume=True`` requires it to exist and appends to it.
        benchmark: benchmark name, e.g. ``gradcheck.error_vs_k``.
        point_columns: parameters that define a point (part of the config hash).
        info_columns: descriptive per-point columns outside the hash (e.g. ``status``).
        device: ``cpu`` or ``cuda``, recorded with the provenance.
        resume: append to an existing file and skip its finished points.
    """

    def __init__(
        self,
        path: Path | str,
        benchmark: str,
        point_columns: Iterable[str],
        info_columns: Iterable[str] = (),
        device: str = "cpu",
        resume: bool = False,
    ) -> None:
        self.path = Path(path)
        self.benchmark = benchmark
        self.point_columns = tuple(point_columns)
        self.info_columns = tuple(info_columns)
        self.header = columns(self.point_columns, self.info_columns)
        self.provenance = environment(device)
        self._done: set[tuple[str, str]] = set()
        if resume:
            self.run_id = self._reopen()
        else:
            if self.path.exists():
                raise FobbenchError(
                    f"{self.path} already exists: pass --resume {self.path} to continue it, "
                    "or choose another --out"
                )
            self.run_id = uuid.uuid4().hex[:12]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("x", newline="") as handle:
                csv.writer(handle).writerow(self.header)
                handle.flush()
                os.fsync(handle.fileno())

    def _reopen(self) -> str:
        if not self.path.is_file():
            raise FobbenchError(f"--resume: {self.path} does not exist")
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # A kill in the middle of a write leaves a partial last line: drop it.
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as handle:
                handle.truncate(keep)
        frame = read_results(self.path)
        existing = list(pd.read_csv(self.path, nrows=0).columns)
        if existing != self.header:
            raise FobbenchError(
                f"--resume: {self.path} was written by a different command or settings "
                f"(its columns differ); start a new file instead"
            )
        if not frame.empty and set(frame["benchmark"]) != {self.benchmark}:
            raise FobbenchError(f"--resume: {self.path} holds another benchmark")
        self._done = {
            (str(h), str(s)) for h, s in zip(frame["config_hash"], frame["seed"].astype(str), strict=False)
        }
        return str(frame["run_id"].iloc[0]) if not frame.empty else uuid.uuid4().hex[:12]

    def point_hash(self, method: str, point: Mapping[str, object], settings: Mapping[str, object]) -> str:
        """The config hash of a point: benchmark, method, point (without seed), settings."""
        return config_hash(
            {
                "benchmark": self.benchmark,
                "method": method,
                "point": {k: v for k, v in point.items() if k != "seed"},
                "settings": dict(settings),
            }
        )

    def is_done(self, method: str, point: Mapping[str, object], settings: Mapping[str, object],
                seed: int | str) -> bool:
        """True when a resumed file already holds this point at this seed."""
        return (self.point_hash(method, point, settings), str(seed)) in self._done

    def write_point(
        self,
        method: str,
        point: Mapping[str, object],
        settings: Mapping[str, object],
        seed: int | str,
        measurements: Iterable[Measurement],
        info: Mapping[str, object] | None = None,
    ) -> str:
        """Append every measurement of one point atomically; returns its config hash.

        Args:
            method: estimator name.
            point: values for the writer's point columns (missing ones are left empty).
            settings: every other setting that defines the point (hashed, not written).
            seed: the point's seed.
            measurements: the values measured at this point.
            info: values for the writer's info columns.
        """
        unknown = set(point) - set(self.point_columns) - {"seed"}
        if unknown:
            raise ValueError(f"point has columns the writer does not declare: {sorted(unknown)}")
        digest = self.point_hash(method, point, settings)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        info = info or {}
        for m in measurements:
            row = {
                "schema": SCHEMA, "run_id": self.run_id, "benchmark": self.benchmark, "method": method,
                **{c: point.get(c) for c in self.point_columns},
                "metric": m.metric, "value": m.value, "unit": m.unit, "measured_by": m.measured_by,
                "seed": seed, "config_hash": digest,
                **{c: info.get(c) for c in self.info_columns},
                **self.provenance,
            }
            writer.writerow([_format(row[c]) for c in self.header])
        with self.path.open("a", newline="") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
        self._done.add((digest, str(seed)))
        return digest


def _check_file(path: Path) -> None:
    """Raise a FobbenchError naming the file and line for a foreign or malformed CSV."""
    with path.open(newline="") as handle:
        text = handle.read()
    if not text.strip():
        raise FobbenchError(f"{path}: empty file, not a fobbench results CSV")
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    reader = csv.reader(io.StringIO(complete))
    try:
        header = next(reader)
    except StopIteration:
        raise FobbenchError(f"{path}: line 1: no header, not a fobbench results CSV") from None
    if not header or header[0] != "schema" or "metric" not in header or "value" not in header:
        raise FobbenchError(f"{path}: line 1: not a fobbench results CSV (no schema/metric/value header)")
    value_index = header.index("value")
    for line_number, row in enumerate(reader, start=2):
        if len(row) != len(header):
            raise FobbenchError(
                f"{path}: line {line_number}: {len(row)} fields where the header has {len(header)}"
            )
        major = schema_major(row[0])
        if major is None:
            raise FobbenchError(f"{path}: line {line_number}: unknown schema '{row[0]}'")
        if major != SUPPORTED_MAJOR:
            raise FobbenchError(
                f"{path}: line {line_number}: schema '{row[0]}' is not supported "
                f"(this fobbench reads fobbench.results/{SUPPORTED_MAJOR})"
            )
        try:
            float(row[value_index])
        except ValueError:
            raise FobbenchError(
                f"{path}: line {line_number}: value '{row[value_index]}' is not a number"
            ) from None


def read_results(path: Path | str) -> pd.DataFrame:
    """Every results row in a CSV file, or in all CSV files below a folder, as one DataFrame.

    A half-written last line (an interrupted write) is ignored. Raises FobbenchError for a
    missing path, a folder without CSV files, or a foreign/malformed/unsupported file.
    """
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*.csv") if p.is_file())
        if not files:
            raise FobbenchError(f"{root}: no results CSV files below this folder")
    elif root.is_file():
        files = [root]
    else:
        raise FobbenchError(f"{root}: no such file or folder")
    frames = []
    for file in files:
        _check_file(file)
        text = file.read_text()
        if not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        frame = pd.read_csv(io.StringIO(text), keep_default_na=True)
        frame["source"] = str(file)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True, sort=False)
