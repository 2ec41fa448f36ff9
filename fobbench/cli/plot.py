"""``fobbench plot PATH``: every figure, regenerated from results CSVs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fobbench.choices import FIGURE_FORMATS as FORMATS
from fobbench.cli import checks
from fobbench.cli.app import app


@app.command(
    epilog=(
        "Example: fobbench plot results/ --format svg   (figures: results-figures/)\n\n"
        "Exit status: 0 figures written, 1 a figure module failed, 2 bad input."
    )
)
def plot(
    path: Annotated[Path, typer.Argument(help="A results CSV, or a folder: every CSV below it is read.")],
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Folder the figures are written to (default: PATH-figures/ beside PATH).")] = None,
    fmt: Annotated[str, typer.Option("--format", help=f"Figure format: {'|'.join(FORMATS)}.")] = "png",
) -> None:
    """Draw the figures each benchmark calls for from every results CSV under PATH.

    Rows are grouped by benchmark prefix and drawn by fobbench.figures.<prefix>:
    gradcheck (error vs K, error vs nu, lambda effects, outer loss), train (evaluation
    accuracy vs iteration with 95% band, final-accuracy table), memory (peak MiB vs size,
    log scale, OOM marked). Repeats of a point are averaged with a 95% interval; values
    measured differently (measured_by, device) are never merged into one line.
    """
    out_dir = checks.check_plot(dict(locals()))  # PATH, --format, --out: before matplotlib is imported
    from rich.table import Table

    from fobbench.plot import collect, draw_all
    from fobbench.progress import console, out, print_figures, table_console

    frame = collect(path, exclude=out_dir)
    report = draw_all(frame, out_dir, fmt)
    table = Table(title=f"fobbench plot {path}", title_justify="left")
    table.add_column("benchmark")
    table.add_column("rows", justify="right")
    table.add_column("figures", overflow="fold")
    for prefix, rows in report.rows.items():
        if prefix in report.written:
            files = ", ".join(p.name for p in report.written[prefix]) or "(none)"
        elif prefix in report.missing:
            files = "[dim]no figure module[/]"
        else:
            files = f"[bold red]failed[/]: {report.failed[prefix]}"
        table.add_row(prefix, str(rows), files)
    table_console().print(table)
    total = sum(len(v) for v in report.written.values())
    out.print(f"wrote {total} file(s) to {out_dir.absolute()}", soft_wrap=True)
    print_figures([p for paths in report.written.values() for p in paths])
    for prefix, reason in report.missing.items():
        console.print(f"fobbench: note: benchmark '{prefix}' has no figures ({reason})", soft_wrap=True)
    for prefix, reason in report.failed.items():
        console.print(f"fobbench: figures of '{prefix}' failed: {reason}", soft_wrap=True, markup=False)
    raise typer.Exit(1 if report.failed else 0)
