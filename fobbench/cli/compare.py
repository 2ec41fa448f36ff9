"""``fobbench compare BASE NEW``: the regression gate.

Only argument parsing and printing live here; the decisions are made by the pure
:func:`fobbench.results.compare.run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fobbench.cli import checks
from fobbench.cli.app import app

if TYPE_CHECKING:  # pandas and scipy are imported once the options are known good
    from rich.table import Table


def _styles() -> dict[str, str]:
    """Rich style of each verdict."""
    from fobbench.results import compare as comparison

    return {
        comparison.WORSE: "bold red",
        comparison.CHANGED: "bold yellow",
        comparison.BETTER: "green",
        comparison.NOT_COMPARABLE: "magenta",
        comparison.MISSING: "bold red",
        comparison.INSUFFICIENT: "dim",
        comparison.NEW: "cyan",
    }


def _kinds() -> dict[str, tuple[str, ...]]:
    """``--kind`` -> the metric kinds compared (keys: :data:`fobbench.choices.COMPARE_KINDS`)."""
    from fobbench.results import compare as comparison

    return {
        "all": (comparison.DETERMINISTIC, comparison.NOISY),
        "deterministic": (comparison.DETERMINISTIC,),
        "noisy": (comparison.NOISY,),
    }


def _table(report, only_changed: bool) -> Table:
    from rich.table import Table

    from fobbench.results import compare as comparison

    _STYLES = _styles()
    table = Table(title="fobbench compare", title_justify="left")
    for name, justify in (("benchmark", "left"), ("method", "left"), ("point", "left"),
                          ("metric", "left"), ("base", "right"), ("new", "right"),
                          ("ratio", "right"), ("verdict", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for row in report.itertuples(index=False):
        if only_changed and row.verdict == comparison.SAME:
            continue
        style = _STYLES.get(row.verdict, "")
        verdict = f"[{style}]{row.verdict}[/]" if style else row.verdict
        table.add_row(
            row.benchmark, row.method, row.point, row.metric,
            comparison.format_value(row.base, row.unit), comparison.format_value(row.new, row.unit),
            comparison.format_ratio(row.ratio), verdict,
        )
    return table


@app.command(
    epilog=(
        "Example: fobbench compare .ci/baseline /tmp/ci_run --markdown summary.md\n\n"
        "Exit status: 0 = nothing got worse and every BASE point is in NEW; 1 = something got "
        "worse or changed, or BASE points are missing from NEW (unless --allow-missing); "
        "2 = bad input, or nothing at all comparable."
    )
)
def compare(
    base: Annotated[Path, typer.Argument(help="Reference results: a CSV file or a folder of them.")],
    new: Annotated[Path, typer.Argument(help="Results to judge: a CSV file or a folder of them.")],
    factor: Annotated[float, typer.Option(
        "--factor", help="A noisy metric (time, accuracy across seeds) counts as changed only when "
        "significant AND its ratio is beyond this factor.")] = 1.10,
    rtol: Annotated[float, typer.Option(
        "--rtol", help="Relative tolerance of deterministic metrics (tracked bytes, errors at a fixed "
        "seed): any larger change counts.")] = 1e-6,
    atol: Annotated[float, typer.Option(
        "--atol", help="Absolute tolerance of deterministic metrics (their unit): differences at "
        "floating-point roundoff level are not changes.")] = 1e-12,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level of the Mann-Whitney U test.")]
    = 0.05,
    kind: Annotated[str, typer.Option(
        "--kind", help="Compare only deterministic or only noisy metrics: all|deterministic|noisy.")] = "all",
    markdown: Annotated[Path | None, typer.Option(
        "--markdown", help="Also write the report as Markdown to FILE (CI job summaries).")] = None,
    csv: Annotated[Path | None, typer.Option(
        "--csv", help="Also write the report as CSV to FILE (a compare report, not a results file).")] = None,
    only_changed: Annotated[bool, typer.Option(
        "--only-changed", help="Leave 'same' rows out of the printed table (files keep them).")] = False,
    allow_missing: Annotated[bool, typer.Option(
        "--allow-missing", help="Points of BASE that NEW lacks do not fail the gate (NEW is a subset "
        "on purpose).")] = False,
) -> None:
    """Compare results NEW against BASE point by point; exit 1 when anything got worse.

    Points are matched by benchmark, method, point parameters, metric, measured_by, device
    and config hash. Points whose settings differ (another config hash) are reported as
    'not comparable'. Deterministic metrics must agree to --rtol; noisy ones must change
    significantly (Mann-Whitney U or separate 95% intervals) AND beyond --factor, and need at
    least two samples per side (else 'insufficient samples': shown, not failing). BASE points
    missing from NEW fail unless --allow-missing; nothing comparable at all is exit 2.
    Compare reports (--csv) lying among the results are recognised and skipped.
    """
    checks.check_compare(dict(locals()))  # every value and path, before pandas is imported
    from rich.markup import escape

    from fobbench.progress import console, out, table_console
    from fobbench.results import compare as comparison
    from fobbench.results import read_results

    base_frame = read_results(base)
    new_frame = read_results(new)
    report = comparison.run(base_frame, new_frame, factor=factor, rtol=rtol, atol=atol, alpha=alpha,
                            kinds=_kinds()[kind])
    comparison.check_comparable(report, base_frame, new_frame)
    if not (only_changed and (report["verdict"] == comparison.SAME).all()):
        table_console().print(_table(report, only_changed))
    line = comparison.summary(report)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(comparison.to_markdown(report, title=f"fobbench compare {base} {new}"))
    if csv is not None:
        csv.parent.mkdir(parents=True, exist_ok=True)
        comparison.write_csv(report, csv)
    failed = comparison.failed(report, allow_missing)
    failing = comparison.FAILING if allow_missing else comparison.FAILING | {comparison.MISSING}
    worst = report[report["verdict"].isin(failing)]
    if failed:
        names = ", ".join(
            f"{r.benchmark} {r.method} {r.point} {r.metric}".replace("  ", " ")
            for r in worst.head(3).itertuples(index=False)
        )
        more = f" and {len(worst) - 3} more" if len(worst) > 3 else ""
        hint = "; pass --allow-missing if NEW leaves them out on purpose" \
            if (worst["verdict"] == comparison.MISSING).any() else ""
        out.print(f"[bold red]REGRESSION[/]: {line}; failing: {escape(names)}{more}{hint}", soft_wrap=True)
    else:
        out.print(f"OK: {line}", soft_wrap=True)
    if markdown is not None or csv is not None:
        console.print(" ".join(f"wrote {p}" for p in (markdown, csv) if p is not None), soft_wrap=True)
    raise typer.Exit(1 if failed else 0)
