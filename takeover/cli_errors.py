"""How every command reports bad input: one red line on stderr, exit status 2."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(msg: str) -> NoReturn:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)
