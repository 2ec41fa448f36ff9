"""``python -m fobbench`` runs the command-line interface."""

from fobbench.cli import main

main()
