"""``fobbench compare``."""

from __future__ import annotations

from fobbench.cli.app import app


@app.command()
def compare() -> None:
    """(being built)"""
    raise SystemExit("not built yet")
