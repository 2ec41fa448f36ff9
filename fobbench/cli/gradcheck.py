"""``fobbench gradcheck``."""

from __future__ import annotations

from fobbench.cli.app import app


@app.command()
def gradcheck() -> None:
    """(being built)"""
    raise SystemExit("not built yet")
