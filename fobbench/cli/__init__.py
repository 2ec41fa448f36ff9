"""Command-line interface: ``fobbench <command>``.

Each command lives in its own module and registers itself on :data:`app`; ``main`` turns
user errors (bad options, bad ranges, bad files) into one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from fobbench.cli import compare, gradcheck, info, memory, plot, run, speed, train  # noqa: F401  (registers)
from fobbench.cli.app import app
from fobbench.errors import FobbenchError

__all__ = ["app", "main"]


def _fail(message: str, code: int = 2) -> None:
    sys.stderr.write(f"fobbench: error: {message.strip().splitlines()[0] if message.strip() else 'failed'}\n")
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``fobbench`` console script."""
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        result = command.main(args=args or ["--help"], prog_name="fobbench", standalone_mode=False)
    except FobbenchError as error:
        _fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("fobbench: interrupted\n")
        sys.exit(130)
    except Exception as error:
        # Click's usage errors (unknown option, bad value, missing argument): duck-typed so
        # this works with typer's vendored click and with the standalone package alike.
        if hasattr(error, "format_message") and hasattr(error, "exit_code"):
            _fail(error.format_message(), getattr(error, "exit_code", 2) or 2)
        raise
    if result == 130:  # click turns Ctrl-C into this return value outside standalone mode
        sys.stderr.write("fobbench: interrupted\n")
    sys.exit(result if isinstance(result, int) else 0)
