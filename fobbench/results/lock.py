"""An exclusive, per-file writer lock that names its holder.

Two processes appending to one results CSV (a run and a concurrent ``--resume`` of it) would
both skip the same finished points and both measure the rest, duplicating rows. A
:class:`WriterLock` on the file prevents that: the first writer holds it until it closes (or
exits, or is killed: the kernel releases it), and a second writer gets one line naming the
holder's pid.

Why ``fcntl.flock`` on a sidecar file and not the ``filelock`` package: the holder's pid must be
readable by the loser, so it is written *into* the lock file after locking, and ``filelock``
truncates the lock file whenever it opens it (erasing the pid). ``flock`` locks are released by
the kernel when the holding process ends, so a crash never leaves a stale lock; the sidecar file
``.<name>.lock`` beside the CSV is removed on a clean release. POSIX only (Linux, macOS).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType

from fobbench.errors import FobbenchError


def lock_path(path: Path) -> Path:
    """The sidecar lock file of ``path``: ``<folder>/.<name>.lock`` (hidden, never a CSV)."""
    return path.with_name(f".{path.name}.lock")


class LockedError(FobbenchError):
    """Another process is writing the same results file (exit code 2)."""


class WriterLock:
    """Hold an exclusive lock on ``path`` for writing; non-blocking.

    Args:
        path: the results file to protect (it need not exist yet; its folder must).

    Raises:
        LockedError: another live process holds the lock; the message names its pid.
    """

    def __init__(self, path: Path | str) -> None:
        import fcntl

        self._fd: int | None = None
        self.path = Path(path)
        self.lock_file = lock_path(self.path)
        while True:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"process {holder}" if holder else "another process"
                raise LockedError(
                    f"{self.path} is being written by {who}: wait for it to finish "
                    f"(or stop it), then rerun"
                ) from None
            # The previous holder may have unlinked the file between our open and our lock:
            # then we hold a lock on an orphan inode; start over on the current file.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_file))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    @property
    def held(self) -> bool:
        """True until :meth:`release`."""
        return self._fd is not None

    def release(self) -> None:
        """Remove the sidecar file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock_file)
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None

    def __enter__(self) -> WriterLock:  # noqa: PYI034  (Self needs Python 3.11)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self.release()


def _read_pid(fd: int) -> int | None:
    """The pid the holder wrote into the lock file, or None while it has not yet written it."""
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
