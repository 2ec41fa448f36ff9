"""Append-safe CSV writing and folder-wide reading of results.

Every point's rows are written in one ``write`` call, then flushed and fsynced, so an
interrupted sweep keeps every finished point and only the *last* point can be torn. A point
is finished only when all its rows are whole: :func:`torn_tail` finds a torn last line and the
complete rows of the same point before it; readers drop them (and say so on stderr), and
``ResultWriter(..., resume=True)`` cuts them off the file so the point is measured again.
A writer holds an exclusive :class:`~fobbench.results.lock.WriterLock` on its file from
opening to :meth:`ResultWriter.close` (or process exit), so a second writer of the same file
fails with one line naming the first one's pid.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pandas as pd

from fobbench.errors import FobbenchError
from fobbench.measure.environment import environment
from fobbench.paths import check_writable_file, describe_os_error, run_stamp
from fobbench.results.lock import WriterLock
from fobbench.results.schema import (
    LEGACY_REPORT_HEAD,
    REPORT_PREFIX,
    SCHEMA,
    SUPPORTED_MAJOR,
    Measurement,
    columns,
    config_hash,
    schema_major,
)

DEFAULT_ROOT = Path("results")


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


def warn(message: str) -> None:
    """Default reporter of readers and writers: one ``fobbench: warning:`` line on stderr."""
    sys.stderr.write(f"fobbench: warning: {message}\n")


def note(message: str) -> None:
    """Default reporter of files skipped on purpose: one ``fobbench: note:`` line on stderr."""
    sys.stderr.write(f"fobbench: note: {message}\n")


def _whole_row(line: bytes, width: int, value_index: int) -> list[str] | None:
    """The fields of a newline-terminated row with every field present, else None."""
    if not line.endswith(b"\n"):
        return None
    try:
        fields = next(csv.reader([line.decode()]))
        float(fields[value_index])
    except (UnicodeDecodeError, StopIteration, IndexError, ValueError, csv.Error):
        return None
    return fields if len(fields) == width else None


def torn_tail(data: bytes) -> tuple[int, int]:
    """Where the whole points of a results file end: ``(bytes to keep, rows to drop)``.

    Points are appended in one write each, so only the end of a file can be torn: a last line
    without its newline (a newline-terminated malformed line is damage, which the reader
    reports with its line number). When it is, the point that line belongs to is
    incomplete, and so are the rows of that point just before it. The torn line's point is
    known when its ``config_hash`` and ``seed`` fields survived; otherwise it is taken to be
    the point of the last whole row (at worst a finished point is measured again; a partial
    one never counts as finished). Returns ``(len(data), 0)`` for an intact file, and for
    a file without a complete header line (the header check reports those).
    """
    header_end = data.find(b"\n")
    if header_end < 0 or header_end == len(data) - 1:
        return len(data), 0
    try:
        header = next(csv.reader([data[: header_end + 1].decode()]))
        value_index, hash_index, seed_index = (header.index(c) for c in ("value", "config_hash", "seed"))
    except (UnicodeDecodeError, StopIteration, ValueError):
        return len(data), 0
    body = data[header_end + 1:]
    lines = [line + b"\n" for line in body.split(b"\n")[:-1]]
    if not body.endswith(b"\n"):
        lines.append(body[body.rfind(b"\n") + 1:])
    if not lines or lines[-1].endswith(b"\n"):
        return len(data), 0
    torn = lines.pop()
    try:
        prefix = next(csv.reader([torn.decode(errors="replace").rstrip("\r\n")]))
    except (StopIteration, csv.Error):
        prefix = []
    key = None
    if len(prefix) > hash_index + 1:  # the field after config_hash began: the hash is whole
        key = (prefix[hash_index], prefix[seed_index])
    dropped = 1
    previous = _whole_row(lines[-1], len(header), value_index) if lines else None
    if key is None and previous is not None:
        key = (previous[hash_index], previous[seed_index])
    while lines:
        fields = _whole_row(lines[-1], len(header), value_index)
        if fields is None or (fields[hash_index], fields[seed_index]) != key:
            break
        lines.pop()
        dropped += 1
    return header_end + 1 + sum(len(line) for line in lines), dropped


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
        resume: append to an existing file and skip its finished points. A torn last point
            (an interrupted write) is cut off the file first, so it is measured again.
        resume_target: what the "already exists: pass --resume X" advice names (default
            ``path``; gradcheck passes its folder, which is what its ``--resume`` takes).
        report: receives one-line notes (a torn point removed); default: stderr.

    The writer holds an exclusive lock on ``path`` until :meth:`close` (or the end of the
    process); a second writer of the same file raises a FobbenchError naming the holder's pid.
    """

    def __init__(
        self,
        path: Path | str,
        benchmark: str,
        point_columns: Iterable[str],
        info_columns: Iterable[str] = (),
        device: str = "cpu",
        resume: bool = False,
        resume_target: Path | str | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.benchmark = benchmark
        self.point_columns = tuple(point_columns)
        self.info_columns = tuple(info_columns)
        self.header = columns(self.point_columns, self.info_columns)
        self.provenance = environment(device)
        self._done: set[tuple[str, str]] = set()
        self.resume_target = Path(resume_target) if resume_target is not None else self.path
        if resume and not self.path.is_file():
            raise FobbenchError(f"--resume: {self.path} does not exist")
        if not resume and self.path.exists():
            raise FobbenchError(
                f"{self.path} already exists: pass --resume {self.resume_target} to continue it, "
                "or choose another --out"
            )
        check_writable_file(self.path, "--resume" if resume else "--out")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = WriterLock(self.path)
        except OSError as error:
            raise FobbenchError(f"cannot write {self.path}: {describe_os_error(error)}") from None
        try:
            if resume:
                self.run_id = self._reopen(report)
            else:
                self.run_id = uuid.uuid4().hex[:12]
                try:
                    handle = self.path.open("x", newline="")
                except FileExistsError:  # created by another process since the check above
                    raise FobbenchError(
                        f"{self.path} already exists: pass --resume {self.resume_target} to continue "
                        "it, or choose another --out"
                    ) from None
                with handle:
                    csv.writer(handle).writerow(self.header)
                    handle.flush()
                    os.fsync(handle.fileno())
        except BaseException:
            self._lock.release()
            raise

    def close(self) -> None:
        """Release the file's writer lock (idempotent; process exit releases it too)."""
        self._lock.release()

    def __enter__(self) -> ResultWriter:  # noqa: PYI034  (Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reopen(self, report: Callable[[str], None] | None) -> str:
        data = self.path.read_bytes()
        keep, dropped = torn_tail(data)
        if keep < len(data):
            # A kill inside a write tore the last point: cut it off so it is measured again.
            with self.path.open("r+b") as handle:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())
            (report or warn)(
                f"{self.path}: the last point was torn by an interrupted write; removed its "
                f"{dropped} row(s), it will be measured again"
            )
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
        if not self._lock.held:
            raise RuntimeError(f"{self.path}: write_point after close()")
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


def _check_text(path: Path, data: bytes) -> str:
    """The text of a results file; FobbenchError naming file and line if foreign or malformed."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise FobbenchError(f"{path}: not text, not a fobbench results CSV") from None
    _check_file(path, text)
    return text


def _check_file(path: Path, text: str) -> None:
    """Raise a FobbenchError naming the file and line for a foreign or malformed CSV."""
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


def is_report(path: Path) -> bool:
    """True for a report fobbench writes itself (``compare --csv``), which is not a results file."""
    try:
        with path.open(newline="") as handle:
            rows = csv.reader(handle)
            header = next(rows, [])
            first = next(rows, [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    if tuple(header[: len(LEGACY_REPORT_HEAD)]) == LEGACY_REPORT_HEAD:
        return True
    return bool(header) and header[0] == "schema" and bool(first) and first[0].startswith(REPORT_PREFIX)


def results_files(root: Path, report: Callable[[str], None] | None = None,
                  exclude: Callable[[Path], bool] | None = None) -> list[Path]:
    """The results CSV files below a folder, sorted; compare reports among them are skipped
    (with a note through ``report``, default stderr), as are files ``exclude`` rejects.

    Raises FobbenchError when no results file is left.
    """
    files = sorted(p for p in root.rglob("*.csv") if p.is_file() and not (exclude and exclude(p)))
    reports = [p for p in files if is_report(p)]
    for path in reports:
        (report or note)(f"skipped {path}: a fobbench compare report, not results")
    files = [p for p in files if p not in reports]
    if not files:
        skipped = f" (skipped {len(reports)} compare report(s))" if reports else ""
        raise FobbenchError(f"{root}: no results CSV files below this folder{skipped}")
    return files


def read_results(path: Path | str, report: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Every results row in a CSV file, or in all CSV files below a folder, as one DataFrame.

    A torn last point (an interrupted write: see :func:`torn_tail`) is left out and reported
    through ``report`` (default: one warning line on stderr); compare reports below a folder
    are skipped (:func:`results_files`), and one given directly is refused. Raises FobbenchError for a
    missing path, a folder without CSV files, or a foreign/malformed/unsupported file.
    """
    root = Path(path)
    if root.is_dir():
        files = results_files(root, report)
    elif root.is_file():
        if is_report(root):
            raise FobbenchError(f"{root}: a fobbench compare report, not a results file")
        files = [root]
    else:
        raise FobbenchError(f"{root}: no such file or folder")
    frames = []
    for file in files:
        data = file.read_bytes()
        keep, dropped = torn_tail(data)
        if keep < len(data):
            (report or warn)(
                f"{file}: left out a point torn by an interrupted write ({dropped} row(s)); "
                "--resume measures it again"
            )
        text = _check_text(file, data[:keep])
        frame = pd.read_csv(io.StringIO(text), keep_default_na=True)
        frame["source"] = str(file)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True, sort=False)
