"""Suites on a cluster: which shard an array job runs, and where shards put their files.

``fobbench run SUITE --shard I/N`` keeps the points whose suite index ``% N == I - 1``
(:func:`fobbench.suites.shard`). On SLURM, ``--shard slurm`` reads the shard from the array
job's environment instead, so one ``sbatch --array=0-7`` line needs no shell arithmetic::

    SLURM_ARRAY_TASK_ID     this job's array index (e.g. 0..7, or 1..8 with --array=1-8)
    SLURM_ARRAY_TASK_MIN    the smallest index of the array (default 0)
    SLURM_ARRAY_TASK_STEP   the index step of --array=0-14:2 (default 1)
    SLURM_ARRAY_TASK_COUNT  how many jobs the array has: N
    SLURM_ARRAY_TASK_MAX    the largest index (checked when present)

Every point of a suite already writes its own ``<out>/<run>/<label>.csv`` (and ``.log``), so
shards running into one ``--out`` folder never share a file; :func:`shard_file` names anything
a shard writes once per invocation (a summary, a manifest), and :func:`array_folder` gives all
jobs of one array the same default ``--out`` folder (the per-invocation default, a UTC time
stamp, would scatter them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from fobbench.errors import FobbenchError
from fobbench.suites import parse_shard

SLURM = "slurm"
"""The ``--shard`` value that reads the shard from SLURM's array variables."""


def _slurm_int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    text = env.get(key)
    if text is None or text.strip() == "":
        if default is not None:
            return default
        raise FobbenchError(
            f"--shard slurm: ${key} is not set (run inside an sbatch --array job, or give --shard I/N)"
        )
    if not re.fullmatch(r"\s*\d+\s*", text):
        raise FobbenchError(f"--shard slurm: ${key}='{text}' is not a non-negative integer")
    return int(text)


def resolve_shard(text: str, env: Mapping[str, str]) -> tuple[int, int]:
    """``--shard`` -> (I, N), 1-based as :func:`fobbench.suites.parse_shard` returns it.

    Args:
        text: ``I/N`` (e.g. ``2/8``) or ``slurm``.
        env: the environment to read SLURM's variables from (``os.environ`` in the CLI).

    ``slurm``: I = (SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP + 1 and
    N = SLURM_ARRAY_TASK_COUNT, so ``--array=0-7`` and ``--array=1-8`` both give shards 1..8 of
    8. A missing or malformed variable, or an array whose indices are not an evenly spaced
    range (``--array=1,4,9``), is a one-line FobbenchError naming the variable.
    """
    if (text or "").strip().lower() != SLURM:
        return parse_shard(text)
    task = _slurm_int(env, "SLURM_ARRAY_TASK_ID")
    count = _slurm_int(env, "SLURM_ARRAY_TASK_COUNT")
    low = _slurm_int(env, "SLURM_ARRAY_TASK_MIN", default=0)
    step = _slurm_int(env, "SLURM_ARRAY_TASK_STEP", default=1)
    if count < 1 or step < 1:
        raise FobbenchError(
            f"--shard slurm: needs SLURM_ARRAY_TASK_COUNT >= 1 and SLURM_ARRAY_TASK_STEP >= 1 "
            f"(got {count}, {step})"
        )
    if "SLURM_ARRAY_TASK_MAX" in env:
        high = _slurm_int(env, "SLURM_ARRAY_TASK_MAX")
        if high < low or (high - low) % step or (high - low) // step + 1 != count:
            raise FobbenchError(
                f"--shard slurm: array indices {low}..{high} step {step} are not {count} evenly spaced jobs "
                "(use --array=0-<N-1>, or give --shard I/N)"
            )
    offset = task - low
    if offset < 0 or offset % step or offset // step >= count:
        raise FobbenchError(
            f"--shard slurm: SLURM_ARRAY_TASK_ID={task} is not one of {count} indices from {low} "
            f"step {step} (use --array=0-<N-1>, or give --shard I/N)"
        )
    return offset // step + 1, count


def shard_label(index: int, count: int) -> str:
    """``shard-I-of-N`` (1-based I), the tag of one shard's own files; ``all`` for 1/1."""
    if count < 1 or not 1 <= index <= count:
        raise FobbenchError(f"--shard: needs 1 <= I <= N (got {index}/{count})")
    return "all" if count == 1 else f"shard-{index}-of-{count}"


def shard_file(folder: Path, stem: str, index: int, count: int, suffix: str = ".csv") -> Path:
    """``<folder>/<stem>.shard-I-of-N<suffix>``: a file only this shard writes (``<stem><suffix>``
    for an unsharded run), e.g. ``run.shard-3-of-8.log`` beside the suite's results."""
    label = shard_label(index, count)
    return Path(folder) / (f"{stem}{suffix}" if label == "all" else f"{stem}.{label}{suffix}")


def array_folder(root: Path, suite_stem: str, env: Mapping[str, str]) -> Path | None:
    """``<root>/<suite>-slurm<SLURM_ARRAY_JOB_ID>``: one default ``--out`` for all jobs of an array.

    None outside an array job (the caller keeps its own default).
    """
    job = (env.get("SLURM_ARRAY_JOB_ID") or "").strip()
    if not job:
        return None
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", job):
        raise FobbenchError(f"$SLURM_ARRAY_JOB_ID='{job}' is not a job id")
    return Path(root) / f"{suite_stem}-slurm{job}"
