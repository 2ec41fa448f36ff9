"""Checks that an output location can be written, before any expensive work starts.

A run that measures for minutes and then fails to create its CSV (a read-only mount, a path
under ``/proc``, a file where a folder should be) wastes the work and, without these checks,
ends in a traceback. :func:`check_writable_dir` and :func:`check_writable_file` probe the
location the way the run will use it — by creating (and removing) a temporary file in the
nearest existing folder — and raise a one-line :class:`~fobbench.errors.FobbenchError`
(exit code 2) naming the path and the cause. They create nothing that stays.
"""

from __future__ import annotations

import errno
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from fobbench.errors import FobbenchError

_CAUSES = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOENT: "the file system does not allow creating files there",
}


def describe_os_error(error: OSError) -> str:
    """A short cause for an OSError (``read-only file system``, ``permission denied``, ...)."""
    return _CAUSES.get(error.errno or 0, error.strerror or str(error)).rstrip(".")


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (a file or a folder)."""
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_writable_dir(folder: Path | str, option: str = "--out") -> Path:
    """Check that ``folder`` is, or can be created as, a folder this process can write in.

    Args:
        folder: the output folder (it need not exist; its missing parents are created later
            by the writer, not here).
        option: the option that named the folder, for the message (default ``--out``).

    Returns:
        ``folder`` as an absolute Path (nothing is created).

    Raises:
        FobbenchError: one line naming the folder and the cause: a file where a folder should
            be (the folder itself or one of its parents), a read-only file system, no
            permission, or a virtual file system such as ``/proc``.
    """
    target = Path(folder).expanduser().absolute()
    existing = _nearest_existing(target)
    if not existing.is_dir():
        where = "is a file" if existing == target else f"cannot be created: {existing} is a file"
        raise FobbenchError(f"{option}: {target} {where}, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".fobbench-probe-", dir=existing)
    except OSError as error:
        inside = "" if existing == target else f" (in {existing})"
        raise FobbenchError(
            f"{option}: cannot write to {target}{inside}: {describe_os_error(error)}") from None
    os.close(handle)
    os.unlink(probe)
    return target


def check_writable_file(path: Path | str, option: str = "--out") -> Path:
    """Check that the file ``path`` can be created (or appended to) by this process.

    Args:
        path: an output file such as a results CSV (it need not exist).
        option: the option that named it, for the message (default ``--out``).

    Returns:
        ``path`` as an absolute Path (nothing is created).

    Raises:
        FobbenchError: one line naming the path and the cause: a folder where the file
            should be, or any cause of :func:`check_writable_dir` for its folder.
    """
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise FobbenchError(f"{option}: {target} is a folder, not a file")
    existing = _nearest_existing(target.parent)
    if not existing.is_dir():
        raise FobbenchError(f"{option}: {target} cannot be created: {existing} is a file, not a folder")
    check_writable_dir(target.parent, option)
    if target.exists() and not os.access(target, os.W_OK):
        raise FobbenchError(f"{option}: cannot write to {target}: permission denied")
    return target


def figure_dir(results: Path | str) -> Path:
    """Where the figures drawn from ``results`` go — one rule for every command.

    Beside the results, named after them: ``X.csv`` -> ``X-figures/``, a results folder
    ``R/`` (gradcheck's run folder, or what ``fobbench plot R`` reads) -> ``R-figures/``.
    Figures never land inside a results folder, so reading that folder again never meets
    them, and user figures never mix with other runs'.

    Args:
        results: a results CSV file or folder (need not exist).

    Returns:
        The absolute figure folder (not created here).
    """
    path = Path(results).expanduser().absolute()
    name = path.stem if path.suffix == ".csv" else path.name
    return path.parent / f"{name}-figures"


def run_stamp() -> str:
    """``<UTC timestamp>-<short commit>`` (``nogit`` outside a repository): names default outputs."""
    from fobbench.measure.environment import git_state

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{git_state()[0][:7] or 'nogit'}"
