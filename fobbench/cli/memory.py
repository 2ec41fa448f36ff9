"""``fobbench memory``."""

from __future__ import annotations

from fobbench.cli.app import app


@app.command()
def memory() -> None:
    """(being built)"""
    raise SystemExit("not built yet")
