"""The one error type users see.

A :class:`FobbenchError` is bad input or an unmet precondition: the CLI prints its
message as one line on stderr and exits with code 2, never a traceback.
"""


class FobbenchError(Exception):
    """A user-facing error: one line, exit code 2."""

    exit_code = 2


class DivergedError(FobbenchError):
    """A run that started well but produced non-finite numbers (NaN/inf): one line, exit 1.

    Distinct from bad input (exit 2): the options were valid, the numerics failed."""

    exit_code = 1
