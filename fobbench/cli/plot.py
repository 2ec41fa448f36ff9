"""``fobbench plot``."""

from __future__ import annotations

from fobbench.cli.app import app


@app.command()
def plot() -> None:
    """(being built)"""
    raise SystemExit("not built yet")
