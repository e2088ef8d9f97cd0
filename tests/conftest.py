"""Shared pytest set-up."""

from __future__ import annotations

import os

import pytest
from helpers import NO_CAMERA, SMALL_TRAFFIC

from envs.driving_env import DrivingEnv


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


@pytest.fixture
def make_env():
    """make_env(**config) -> DrivingEnv; every environment made is closed at teardown."""
    made: list[DrivingEnv] = []

    def make(**cfg) -> DrivingEnv:
        cfg = {"map": "urban_grid", "traffic": SMALL_TRAFFIC, "camera": NO_CAMERA, **cfg}
        env = DrivingEnv(cfg)
        made.append(env)
        return env

    yield make
    for env in reversed(made):
        env.close()
