"""Numba twin of SimLingo's waypoint controller, for batched rollouts (the pseudo-simulator).

`policies.controller.WaypointController` is the deployment controller (one Python object per vehicle,
20 Hz). The rollouts of `envs.dreaming` need the same controller for thousands of candidate trajectories
at once, inside Numba kernels, so this module holds its geometry and PIDs as `@njit` functions:

- the gains and thresholds (the Python classes take their defaults from here, so both use one set);
- `lookahead_points` and `heading_error_on_path`: PDM-Lite's lateral lookahead on a path given as sparse
  points (the policy's 20 points 1 m apart with the ego origin prepended). The target is the point at arc
  length s + (k + 1) * 0.1 m, which is exactly the k-th point of the 10 pts/m path that the Python
  controller builds with `densify_path` (linear resampling), without building it;
- `desired_speed_at`: SimLingo's desired speed |P(t + 0.75) - P(t + 0.25)| / 0.5 s, with P the speed
  waypoints' positions interpolated in time; at t = 0 this is the deployment rule |wp[2] - wp[0]| / 0.5;
- `lateral_pid_step` / `longitudinal_pid_step`: the two PIDs with their state in small arrays
  (`LAT_STATE` / `LON_STATE` entries), with the window semantics of the Python classes: the lateral error
  window starts empty (integral and derivative 0 until two errors are seen), the speed window starts
  filled with zeros.
`tests/test_control.py` keeps the twin equal to the Python controller.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Lateral PID (PDM-Lite)
LAT_KP, LAT_KD, LAT_KI, LAT_WINDOW = 3.118, 1.378, 0.641, 6
LOOKAHEAD_SCALE, LOOKAHEAD_OFFSET = 0.9755, 1.915  # points per km/h, points
LOOKAHEAD_MIN, LOOKAHEAD_MAX = 24, 105  # points at 10 pts/m (2.4 m to 10.5 m)
POINTS_PER_METER = 10
# Longitudinal PID and brake rule (SimLingo)
LON_KP, LON_KI, LON_KD, LON_WINDOW = 1.75, 1.0, 2.0, 20
BRAKE_SPEED, BRAKE_RATIO = 0.4, 1.1  # brake if desired < 0.4 m/s or speed / desired > 1.1
CLIP_DELTA, MAX_THROTTLE = 1.0, 0.75
WAYPOINT_DT = 0.25  # s between speed waypoints

LAT_STATE = LAT_WINDOW + 3  # errors ring, then count, write position, running sum
LON_STATE = LON_WINDOW + 2  # errors ring (starts at zeros), then write position, running sum


@njit(cache=True)
def lookahead_points(speed: float) -> int:
    """Lookahead in points at 10 pts/m for a speed in m/s: clip(0.9755 v[km/h] + 1.915, 24, 105)."""
    la = LOOKAHEAD_SCALE * max(speed, 0.0) * 3.6 + LOOKAHEAD_OFFSET
    return int(min(max(la, LOOKAHEAD_MIN), LOOKAHEAD_MAX))


@njit(cache=True)
def fill_path_with_origin(path: np.ndarray, pts: np.ndarray, cum: np.ndarray) -> None:
    """Write the path (N, 2) with the origin prepended into pts (N + 1, 2) and its arc length into cum."""
    pts[0, 0] = pts[0, 1] = cum[0] = 0.0
    for i in range(path.shape[0]):
        pts[i + 1, 0] = path[i, 0]
        pts[i + 1, 1] = path[i, 1]
        dx, dy = pts[i + 1, 0] - pts[i, 0], pts[i + 1, 1] - pts[i, 1]
        cum[i + 1] = cum[i] + math.sqrt(dx * dx + dy * dy)  # (hypot guards overflow: slower, not needed)


@njit(cache=True)
def path_with_origin(path: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(points, cumulative arc length) of an ego-frame path (N, 2) with the origin prepended."""
    pts = np.empty((path.shape[0] + 1, 2))
    cum = np.empty(path.shape[0] + 1)
    fill_path_with_origin(path, pts, cum)
    return pts, cum


@njit(cache=True)
def point_at(pts: np.ndarray, cum: np.ndarray, s: float, start: int = 1) -> tuple[float, float, int]:
    """(x, y, i): the point at arc length s along the polyline (clipped to its ends) and the end index i
    of its segment; the search starts at segment end `start` (a hint, e.g. the last call's i)."""
    n = pts.shape[0]
    if s <= 0.0 or n == 1:
        return pts[0, 0], pts[0, 1], 1
    if s >= cum[n - 1]:
        return pts[n - 1, 0], pts[n - 1, 1], n - 1
    i = min(max(start, 1), n - 1)
    while i > 1 and cum[i - 1] >= s:
        i -= 1
    while cum[i] < s:
        i += 1
    seg = cum[i] - cum[i - 1]
    w = (s - cum[i - 1]) / seg if seg > 0.0 else 1.0
    return (pts[i - 1, 0] + w * (pts[i, 0] - pts[i - 1, 0]), pts[i - 1, 1] + w * (pts[i, 1] - pts[i - 1, 1]),
            i)


@njit(cache=True)
def project_progress(pts: np.ndarray, cum: np.ndarray, x: float, y: float, start: int) -> tuple[float, int]:
    """Arc length of the projection of (x, y) on the polyline, walking forward from segment `start`
    while the point lies past the segment's end (progress along a followed path only grows); returns
    (s, segment index)."""
    i = start
    last = pts.shape[0] - 2
    while True:
        ax, ay = pts[i, 0], pts[i, 1]
        dx, dy = pts[i + 1, 0] - ax, pts[i + 1, 1] - ay
        seg2 = dx * dx + dy * dy
        w = 1.0 if seg2 <= 0.0 else ((x - ax) * dx + (y - ay) * dy) / seg2
        if w < 1.0 or i >= last:
            w = min(max(w, 0.0), 1.0)
            return cum[i] + w * (cum[i + 1] - cum[i]), i
        i += 1


@njit(cache=True)
def lookahead_end(cum: np.ndarray) -> float:
    """The farthest lookahead arc length on a path: the dense path of the Python controller ends at its
    last 0.1 m step strictly inside the path; a path shorter than one step is its last point."""
    total = cum[cum.shape[0] - 1]
    if total <= 1.0 / POINTS_PER_METER:
        return total
    return math.ceil(total * POINTS_PER_METER - 1e-9) / POINTS_PER_METER - 1.0 / POINTS_PER_METER


@njit(cache=True)
def lookahead_target(
    pts: np.ndarray, cum: np.ndarray, s: float, speed: float, end: float, hint: int = 1
) -> tuple[float, float, int]:
    """PDM-Lite's lookahead point (k + 1) / 10 m past arc length s on the path, k = lookahead_points,
    at most `end` (`lookahead_end(cum)`); returns (x, y, segment end index), the index being the next
    call's search hint."""
    target = min(s + (lookahead_points(speed) + 1) / POINTS_PER_METER, end)
    return point_at(pts, cum, target, hint)


@njit(cache=True)
def heading_error_to(tx: float, ty: float, x: float, y: float, yaw: float) -> float:
    """Normalised heading error (rad / (pi / 2)) from pose (x, y, yaw) to the point (tx, ty); 0 when the
    point is the pose itself."""
    dx, dy = tx - x, ty - y
    if dx == 0.0 and dy == 0.0:
        return 0.0
    err = math.atan2(dy, dx) - yaw
    while err >= math.pi:
        err -= 2.0 * math.pi
    while err < -math.pi:
        err += 2.0 * math.pi
    return err / (0.5 * math.pi)


@njit(cache=True)
def heading_error_on_path(
    pts: np.ndarray, cum: np.ndarray, s: float, x: float, y: float, yaw: float, speed: float
) -> float:
    """PDM-Lite's normalised heading error from pose (x, y, yaw) to the lookahead point past arc length
    s on the path (`lookahead_target`)."""
    tx, ty, _ = lookahead_target(pts, cum, s, speed, lookahead_end(cum))
    return heading_error_to(tx, ty, x, y, yaw)


@njit(cache=True)
def _wp_position(wps: np.ndarray, t: float) -> tuple[float, float]:
    """Position at time t of the speed waypoints (N, 2) at 0.25 s .. N * 0.25 s, origin at t = 0;
    linear in time, extrapolated past the last waypoint with the last segment's velocity."""
    n = wps.shape[0]
    u = t / WAYPOINT_DT
    i = math.floor(u)
    if i >= n:
        i = n - 1
    if i < 0:
        i = 0
    w = u - i
    x0 = 0.0 if i == 0 else wps[i - 1, 0]
    y0 = 0.0 if i == 0 else wps[i - 1, 1]
    return x0 + w * (wps[i, 0] - x0), y0 + w * (wps[i, 1] - y0)


@njit(cache=True)
def desired_speed_at(wps: np.ndarray, t: float) -> float:
    """SimLingo's desired speed (m/s) at time t along speed waypoints wps (N >= 3, 0.25 s apart)."""
    if wps.shape[0] < 3:
        return 0.0
    ax, ay = _wp_position(wps, t + WAYPOINT_DT)
    bx, by = _wp_position(wps, t + 3.0 * WAYPOINT_DT)
    return math.sqrt((bx - ax) ** 2 + (by - ay) ** 2) / (2.0 * WAYPOINT_DT)


@njit(cache=True)
def lateral_pid_step(state: np.ndarray, err: float) -> float:
    """Steer in [-1, 1] from a heading error; `state` (LAT_STATE,) starts as zeros (empty window)."""
    pos = int(state[LAT_WINDOW + 1])
    prev = state[(pos - 1) % LAT_WINDOW]
    state[LAT_WINDOW + 2] += err - state[pos]  # running sum (empty slots are 0 until the window fills)
    state[pos] = err
    state[LAT_WINDOW + 1] = (pos + 1) % LAT_WINDOW
    count = min(int(state[LAT_WINDOW]) + 1, LAT_WINDOW)
    state[LAT_WINDOW] = count
    if count >= 2:
        integral = state[LAT_WINDOW + 2] / count
        derivative = err - prev
    else:
        integral = derivative = 0.0
    steer = LAT_KP * err + LAT_KD * derivative + LAT_KI * integral
    return min(max(steer, -1.0), 1.0)


@njit(cache=True)
def longitudinal_pid_step(state: np.ndarray, desired: float, speed: float) -> tuple[float, float]:
    """(throttle, brake) for a desired and current speed (m/s); `state` (LON_STATE,) starts as zeros."""
    delta = min(max(desired - speed, 0.0), CLIP_DELTA)
    pos = int(state[LON_WINDOW])
    prev = state[(pos - 1) % LON_WINDOW]
    state[LON_WINDOW + 1] += delta - state[pos]  # running sum of the window
    state[pos] = delta
    state[LON_WINDOW] = (pos + 1) % LON_WINDOW
    out = LON_KP * delta + LON_KI * state[LON_WINDOW + 1] / LON_WINDOW + LON_KD * (delta - prev)
    throttle = min(max(out, 0.0), MAX_THROTTLE)
    if desired < BRAKE_SPEED or speed / desired > BRAKE_RATIO:
        return 0.0, 1.0
    return throttle, 0.0
