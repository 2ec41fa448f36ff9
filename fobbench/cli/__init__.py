"""Command-line interface: ``fobbench <command>``.

Each command lives in its own module and registers itself on :data:`app`; ``main`` turns
user errors (bad options, bad ranges, bad files) into one line on stderr and exit code 2.

Command modules are imported only when their command runs (:class:`LazyGroup`), and they
import torch, pandas and matplotlib only inside their functions, after
:mod:`fobbench.cli.checks` has checked every option value: ``fobbench --help``,
``--version``, ``fobbench CMD --help`` and bad input answer in a fraction of a second.
"""

from __future__ import annotations

import shlex
import sys

import typer
import typer.main

from fobbench.cli.app import COMMANDS, LazyGroup, app, load_commands
from fobbench.errors import FobbenchError, Interrupted

__all__ = ["COMMANDS", "LazyGroup", "app", "load_commands", "main"]



def _fail(message: str, code: int = 2) -> None:
    sys.stderr.write(f"fobbench: error: {message.strip().splitlines()[0] if message.strip() else 'failed'}\n")
    sys.exit(code)


def _interrupted(continue_args: list[str] | None) -> None:
    """``fobbench: interrupted`` (and the command that continues the run, when one exists); exit 130."""
    hint = f"; continue with: fobbench {shlex.join(continue_args)}" if continue_args else ""
    sys.stderr.write(f"fobbench: interrupted{hint}\n")
    sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``fobbench`` console script."""
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        result = command.main(args=args or ["--help"], prog_name="fobbench", standalone_mode=False)
    except FobbenchError as error:
        _fail(str(error), error.exit_code)
    except Interrupted as interrupted:
        _interrupted(interrupted.continue_args(args))
    except KeyboardInterrupt:
        _interrupted(None)
    except Exception as error:
        # Click's usage errors (unknown option, bad value, missing argument): duck-typed so
        # this works with typer's vendored click and with the standalone package alike.
        if hasattr(error, "format_message") and hasattr(error, "exit_code"):
            _fail(error.format_message(), getattr(error, "exit_code", 2) or 2)
        raise
    if result == 130:  # click turns Ctrl-C into this return value outside standalone mode
        _interrupted(None)
    sys.exit(result if isinstance(result, int) else 0)
