"""``fobbench info``: the environment that results record."""

from __future__ import annotations

from fobbench.cli.app import app


@app.command(epilog="Example: fobbench info")
def info() -> None:
    """Print the environment every result row records (versions, git, CPU, GPU via NVML)."""
    from rich.table import Table

    from fobbench.measure.environment import describe
    from fobbench.progress import out

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in describe():
        table.add_row(label, value)
    out.print(table)
