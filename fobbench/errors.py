"""The one error type users see.

A :class:`FobbenchError` is bad input or an unmet precondition: the CLI prints its
message as one line on stderr and exits with code 2, never a traceback.
"""


class FobbenchError(Exception):
    """A user-facing error: one line, exit code 2."""

    exit_code = 2


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) during a run that left results behind, with how to continue it.

    A ``BaseException`` like :class:`KeyboardInterrupt`, so no ``except Exception`` handler
    swallows it; the CLI prints ``fobbench: interrupted; continue with: fobbench ...`` and
    exits 130.

    Attributes:
        resume: what ``--resume`` takes to continue (a results file, or gradcheck's folder);
            None when nothing was written yet.
        suite_out: for ``fobbench run``: the suite's ``--out`` folder (``--resume`` is then a
            flag next to it).
    """

    exit_code = 130

    def __init__(self, resume: object = None, suite_out: object = None) -> None:
        super().__init__("interrupted")
        self.resume = resume
        self.suite_out = suite_out

    def continue_args(self, args: list[str]) -> list[str] | None:
        """``args`` with their ``--out``/``--resume`` replaced by the ones that continue the run."""
        if self.resume is None and self.suite_out is None:
            return None
        kept: list[str] = []
        skip = False
        for arg in args:
            if skip:
                skip = False
                continue
            if arg in ("--out", "--resume") and not (arg == "--resume" and self.suite_out is not None):
                skip = True
                continue
            if arg.startswith(("--out=", "--resume=")) or arg == "--resume":
                continue
            kept.append(arg)
        if self.suite_out is not None:
            return [*kept, "--out", str(self.suite_out), "--resume"]
        return [*kept, "--resume", str(self.resume)]


class DivergedError(FobbenchError):
    """A run that started well but produced non-finite numbers (NaN/inf): one line, exit 1.

    Distinct from bad input (exit 2): the options were valid, the numerics failed."""

    exit_code = 1
