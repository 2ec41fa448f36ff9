"""``fobbench run``."""

from __future__ import annotations

from fobbench.cli.app import app


@app.command()
def run() -> None:
    """(being built)"""
    raise SystemExit("not built yet")
