"""Shared pytest set-up."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _takeover_cache(tmp_path_factory):
    """Point TAKEOVER_CACHE at a session-wide temporary folder unless the caller already set it, so
    tests never write into ~/.cache/takeover and the netconvert results are shared across the session."""
    if os.environ.get("TAKEOVER_CACHE"):
        yield
        return
    os.environ["TAKEOVER_CACHE"] = str(tmp_path_factory.mktemp("takeover_cache"))
    try:
        yield
    finally:
        os.environ.pop("TAKEOVER_CACHE", None)
