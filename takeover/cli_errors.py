"""How every command reports bad input (one red line on stderr, exit status 2) and how long-running commands
end on SIGTERM (the signal cluster schedulers send on preemption or timeout)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM


def fail(msg: str) -> NoReturn:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit(143) in the main thread instead of killing the process, so the `finally`
    blocks of the work inside (a dataset writer's close, which flushes its buffered segments) run. A second
    SIGTERM while those run kills as usual. Outside the main thread this does nothing (Python only installs
    handlers there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        typer.secho("terminated (SIGTERM): writing what is buffered, then exiting", err=True)
        raise SystemExit(SIGTERM_EXIT_STATUS)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
