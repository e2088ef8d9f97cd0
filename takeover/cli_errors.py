"""How every command reports bad input (one red line on stderr, exit status 2) and how long-running commands
end on SIGTERM, the signal cluster schedulers send on preemption or at the end of a job's time."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM


def fail(msg: str) -> NoReturn:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@contextmanager
def on_sigterm(action: Callable[[], None]) -> Iterator[None]:
    """Call `action` on the first SIGTERM instead of dying; a second SIGTERM kills as usual. Outside the
    main thread this does nothing (Python only installs handlers there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        action()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_now() -> NoReturn:
    """SIGTERM action of the collections: SystemExit(143) from wherever the main thread is, so the `finally`
    blocks of the work (a dataset writer's close, which flushes its buffered segments) run."""
    typer.secho("terminated (SIGTERM): writing what is buffered, then exiting", err=True)
    raise SystemExit(SIGTERM_EXIT_STATUS)
