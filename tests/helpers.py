"""Helpers shared by the environment and scenario tests (imported as `helpers`; pytest puts tests/ on
sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from envs.driving_env import DrivingEnv
from envs.route_graph import Piece, build_route, route_graph
from envs.scene import Route

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
B2D = SHARED_DATA / "routes" / "bench2drive220_town01-05.xml"
TOWN04 = SHARED_DATA / "carla" / "maps" / "Town04.xodr"

SMALL_TRAFFIC = {"vehicles": 5, "pedestrians": 2}
NO_CAMERA = {"enabled": False}


def shared_data(test):
    """Marks a test that reads ../shared/data (Town04 + the Bench2Drive routes); skipped when absent."""
    present = B2D.is_file() and TOWN04.is_file()
    return pytest.mark.shared_data(pytest.mark.skipif(not present, reason="../shared/data not present")(test))


def drive(env: DrivingEnv, agent, max_steps: int, on_step=None) -> tuple[bool, bool, dict, list[dict]]:
    """Drive `agent` on the episode already reset; returns (terminated, truncated, last info, infractions)."""
    agent.reset(env.route)
    infractions: list[dict] = []
    info: dict = {}
    for _ in range(max_steps):
        out = agent.act(env.observation(), env.scene if agent.privileged else None)
        _, reward, terminated, truncated, info = env.step(out.control.as_array())
        infractions += info["infractions"]
        if on_step is not None and on_step(env, reward, info):
            break
        if terminated or truncated:
            return terminated, truncated, info, infractions
    return False, False, info, infractions


def route_projection(route: Route, xy: np.ndarray) -> tuple[float, float]:
    """(distance from xy to the nearest dense route point, route distance s of that point)."""
    d = np.hypot(route.points[:, 0] - xy[0], route.points[:, 1] - xy[1])
    k = int(np.argmin(d))
    return float(d[k]), float(route.cum_length[k])


def ego_s(env: DrivingEnv) -> float:
    return float(env.route.cum_length[env.scene.route_index])


def straight_route(lanes, length: float) -> Route:
    """A route along the longest (nearly) straight drivable lane of the network."""
    graph = route_graph(lanes)
    best, best_len = -1, 0.0
    for i in np.flatnonzero(lanes.drivable & ~lanes.is_internal):
        d = np.diff(lanes.polyline(int(i)), axis=0)
        if np.ptp(np.unwrap(np.arctan2(d[:, 1], d[:, 0]))) < 0.03 and graph.length[i] > best_len:
            best, best_len = int(i), float(graph.length[i])
    assert best_len >= length, f"no straight lane of {length} m"
    return build_route(graph, [Piece(best, 0.0, length)], "straight")
