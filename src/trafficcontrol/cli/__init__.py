"""The ``tc`` command line (Typer + Rich)."""
