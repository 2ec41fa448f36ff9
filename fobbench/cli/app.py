"""The Typer application that every command module registers on."""

from __future__ import annotations

import typer

import fobbench

app = typer.Typer(
    name="fobbench",
    help=(
        "Benchmarks for first-order meta-learning: meta-gradient quality, few-shot accuracy "
        "and peak memory of FO-B-MAML, MAML, FO-MAML, Reptile, iMAML and ES-MAML."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
