"""The results schema: column order, version string and the per-point config hash.

A results file is a tidy long-format CSV, one measured value per row:

====================  =====================================================================
column                meaning
====================  =====================================================================
schema                ``fobbench.results/<major>``; readers refuse an unknown major version
run_id                one id per command invocation (kept when a run is resumed)
benchmark             ``gradcheck.error_vs_k``, ``train.mnist1d``, ``memory.transformer``, ...
method                estimator name from the registry (``maml``, ``fobmaml-sym``, ...)
<point columns>       the parameters that define the point (``k``, ``nu``, ``seq``, ...)
metric                what was measured (``rel_error``, ``peak_bytes``, ``eval_acc``, ...)
value                 the number
unit                  its unit (``1`` for ratios, ``bytes``, ``MiB``, ``s``, ...)
measured_by           how the number was obtained (``closed_form``, ``cpu_dispatch_tracker``,
                      ``cuda_max_memory_allocated``, ``estimate``, ``wall_clock``, ...)
seed                  random seed of the point
config_hash           hash of benchmark, method, point (without seed) and settings
<info columns>        descriptive columns outside the hash (``status``, ...)
<provenance columns>  fobbench_version, git_commit, git_dirty, python, torch, device,
                      device_name, threads, cuda, driver, host, time
====================  =====================================================================
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

SCHEMA = "fobbench.results/1"
SCHEMA_PREFIX = "fobbench.results/"
SUPPORTED_MAJOR = 1

REPORT_SCHEMA = "fobbench.compare/1"
"""Schema name in the first column of a ``fobbench compare --csv`` report (not a results file)."""
REPORT_PREFIX = "fobbench.compare/"
LEGACY_REPORT_HEAD = ("benchmark", "method", "point", "metric", "unit", "measured_by", "kind")
"""First columns of compare reports written before they carried a schema column."""

HEAD_COLUMNS = ("schema", "run_id", "benchmark", "method")
VALUE_COLUMNS = ("metric", "value", "unit", "measured_by", "seed", "config_hash")
PROVENANCE_COLUMNS = (
    "fobbench_version", "git_commit", "git_dirty", "python", "torch", "device",
    "device_name", "threads", "cuda", "driver", "host", "time",
)


@dataclass(frozen=True)
class Measurement:
    """One measured value of a point: becomes one CSV row."""

    metric: str
    value: float
    unit: str
    measured_by: str


def columns(point_columns: tuple[str, ...], info_columns: tuple[str, ...] = ()) -> list[str]:
    """The full header of a results file with these point and info columns."""
    return [*HEAD_COLUMNS, *point_columns, *VALUE_COLUMNS, *info_columns, *PROVENANCE_COLUMNS]


def _canonical(value: object) -> object:
    if isinstance(value, float):
        return float(f"{value:.12g}") if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def config_hash(config: Mapping[str, object]) -> str:
    """A 12-hex-digit hash of a config mapping (order-independent, floats to 12 digits)."""
    text = json.dumps(_canonical(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def schema_major(value: str) -> int | None:
    """The major version of a schema string, or None when it is not a fobbench schema."""
    if not isinstance(value, str) or not value.startswith(SCHEMA_PREFIX):
        return None
    try:
        return int(value[len(SCHEMA_PREFIX):].split(".")[0])
    except ValueError:
        return None
