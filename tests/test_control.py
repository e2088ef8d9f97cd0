"""The Numba controller twin (envs/control.py) against the deployment controller (policies/controller.py)."""

from __future__ import annotations

import numpy as np
import pytest

from envs import control as twin
from policies.controller import (
    LateralPID,
    LongitudinalPID,
    WaypointController,
    densify_path,
    desired_speed_from_waypoints,
)


def _random_path(rng: np.random.Generator) -> np.ndarray:
    """20 points about 1 m apart along a random curve (sometimes short: a stopping vehicle)."""
    step = rng.choice([1.0, 0.3, 0.02]) * rng.uniform(0.5, 1.0)
    heading = np.cumsum(rng.normal(0.0, 0.08, 20)) + rng.normal(0.0, 0.2)
    return np.cumsum(step * np.stack([np.cos(heading), np.sin(heading)], -1), axis=0)


def test_heading_error_matches_the_densified_path():
    rng = np.random.default_rng(0)
    lat = LateralPID()
    for _ in range(500):
        path = _random_path(rng)
        speed = float(rng.uniform(0.0, 30.0))
        pts, cum = twin.path_with_origin(path)
        got = twin.heading_error_on_path(pts, cum, 0.0, 0.0, 0.0, 0.0, speed)
        # densify_path jitters its arc lengths by 1e-6 m per point to keep them strictly increasing
        assert got == pytest.approx(lat.heading_error(densify_path(path), speed), abs=1e-4)
        assert twin.lookahead_points(speed) == lat.lookahead_points(speed)


def test_pid_twins_follow_the_python_pids_step_by_step():
    rng = np.random.default_rng(1)
    lat_py, lon_py = LateralPID(), LongitudinalPID()
    lat_nb, lon_nb = np.zeros(twin.LAT_STATE), np.zeros(twin.LON_STATE)
    for _ in range(200):
        err = float(rng.normal(0.0, 0.3))
        assert twin.lateral_pid_step(lat_nb, err) == pytest.approx(lat_py.step_error(err), abs=1e-12)
        desired, speed = float(rng.uniform(0.0, 12.0)), float(rng.uniform(0.0, 12.0))
        assert twin.longitudinal_pid_step(lon_nb, desired, speed) == pytest.approx(
            lon_py.step(desired, speed), abs=1e-12
        )


def test_desired_speed_matches_deployment_at_t0_and_moves_along_the_waypoints():
    rng = np.random.default_rng(2)
    for _ in range(100):
        wps = np.cumsum(rng.uniform(0.0, 3.0, (10, 2)), axis=0)
        assert twin.desired_speed_at(wps, 0.0) == pytest.approx(desired_speed_from_waypoints(wps), abs=1e-12)
    # Constant acceleration 2 m/s^2 from 4 m/s: the desired speed at t is the speed at t + 0.5 s.
    t = 0.25 * np.arange(1, 11)
    wps = np.stack([4.0 * t + t**2, np.zeros(10)], -1)
    for tq in (0.0, 0.5, 1.0, 1.5):
        assert twin.desired_speed_at(wps, tq) == pytest.approx(4.0 + 2.0 * (tq + 0.5), abs=1e-9)
    # Past the last waypoint the last segment's velocity carries on.
    assert twin.desired_speed_at(wps, 2.4) == pytest.approx((wps[-1, 0] - wps[-2, 0]) / 0.25)


def test_waypoint_controller_is_the_twin_composed():
    rng = np.random.default_rng(3)
    ctrl = WaypointController()
    lat_nb, lon_nb = np.zeros(twin.LAT_STATE), np.zeros(twin.LON_STATE)
    for _ in range(100):
        path = _random_path(rng)
        wps = np.cumsum(rng.uniform(0.0, 2.0, (10, 2)), axis=0)
        speed = float(rng.uniform(0.0, 10.0))
        out = ctrl.step(path, wps, speed)
        pts, cum = twin.path_with_origin(path)
        steer = twin.lateral_pid_step(lat_nb, twin.heading_error_on_path(pts, cum, 0.0, 0.0, 0.0, 0.0, speed))
        throttle, brake = twin.longitudinal_pid_step(lon_nb, twin.desired_speed_at(wps, 0.0), speed)
        assert (out.throttle, out.brake) == pytest.approx((throttle, brake), abs=1e-12)
        assert out.steer == pytest.approx(round(steer, 3), abs=1e-12)
