"""The Typer application that every command module registers on.

Its root group is a :class:`LazyGroup`: ``fobbench --help`` lists every command from
:data:`COMMANDS` without importing one, and a command's module (with torch, pandas,
matplotlib behind it) is imported only when that command runs.
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
import typer.main
from typer.core import TyperGroup

import fobbench

COMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("fobbench.cli.compare",
                "Compare results NEW against BASE point by point; exit 1 when anything got worse."),
    "gradcheck": ("fobbench.cli.gradcheck",
                  "Normalized error of every meta-gradient estimator against the closed-form B-MAML "
                  "gradient."),
    "info": ("fobbench.cli.info", "Print the environment every result row records (versions, git, CPU, GPU "
             "via NVML)."),
    "memory": ("fobbench.cli.memory",
               "Peak memory of one full meta-gradient update per method as the model grows "
               "(paper Fig. 3, 6)."),
    "plot": ("fobbench.cli.plot",
             "Draw the figures each benchmark calls for from every results CSV under PATH."),
    "run": ("fobbench.cli.run",
            "Run every point of a suite file in order, writing each point's CSV under --out."),
    "speed": ("fobbench.cli.speed",
              "Time one meta-gradient per method x batching x meta-batch against the honest floor and "
              "the peer libraries."),
    "train": ("fobbench.cli.train",
              "Meta-train a few-shot classifier with each estimator; accuracy curves, final table, speed."),
}
"""Command name -> (module that registers it on :data:`app`, one-line help for ``fobbench --help``)."""


def load_commands(*names: str) -> typer.core.TyperGroup:
    """Import the modules of ``names`` (default: every command); the click group of what is loaded."""
    for name in names or tuple(COMMANDS):
        importlib.import_module(COMMANDS[name][0])
    return typer.main.get_command(app)  # type: ignore[return-value]


class LazyGroup(TyperGroup):
    """The root group: lists every command from :data:`COMMANDS`, imports one only to run it."""

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if cmd_name not in self.commands:
            if getattr(ctx, "_fobbench_listing", False):  # the help listing: name and summary only
                return typer.core.TyperCommand(cmd_name, help=COMMANDS[cmd_name][1], callback=None)
            self.commands[cmd_name] = load_commands(cmd_name).commands[cmd_name]
        return self.commands[cmd_name]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        ctx._fobbench_listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            ctx._fobbench_listing = False




app = typer.Typer(
    name="fobbench",
    help=(
        "Benchmarks for first-order meta-learning: meta-gradient quality, few-shot accuracy "
        "and peak memory of FO-B-MAML, MAML, FO-MAML, Reptile, iMAML and ES-MAML."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fobbench {fobbench.__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """fobbench: how good, how fast and how memory-hungry is each meta-gradient estimator."""
