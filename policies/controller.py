"""Low-level controllers shared by the expert, the simple agents and the learned policies.

- `LateralPID`: PDM-Lite's lateral controller (carla_garage, leaderboard_2 branch). It steers towards a
  lookahead point on a dense path (10 points per metre) and turns the heading error into a steer value.
- `LongitudinalPID`: SimLingo's speed controller with its brake rule.
- `WaypointController`: SimLingo's deployment controller, turning a predicted path (20 points 1 m apart)
  and speed waypoints (10 positions 0.25 s apart), both in the ego frame, into a `Control`.

Gains, thresholds and the path geometry of `WaypointController` come from `envs.control`, the Numba twin
the pseudo-simulator's batched rollouts use (`tests/test_control.py` keeps the two equal).

Sign conventions (see `envs.scene`): world frame x east, y north, yaw counter-clockwise; the ego frame
has x forward and y to the left. Steer is positive to the LEFT (counter-clockwise). CARLA's steer is
positive to the right, but CARLA's yaw is also clockwise (y points south), so PDM-Lite's formula
"steer = PID(heading error)" carries over unchanged: a target to the left gives a positive heading
error here and therefore a positive (left) steer.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from envs import control as twin
from policies.base import Control

POINTS_PER_METER = twin.POINTS_PER_METER


class WindowPID:
    """PID whose integral is the mean error over a sliding window (TransFuser++ / SimLingo style).

    The window starts filled with zeros, as in TransFuser++'s `PIDController`, so the integral term
    ramps up over the first `window` steps instead of jumping.
    """

    def __init__(self, kp: float, ki: float, kd: float, window: int = 20) -> None:
        self.kp, self.ki, self.kd = kp, ki, kd
        self.window = int(window)
        self._errors: deque[float] = deque([0.0] * self.window, maxlen=self.window)

    def reset(self) -> None:
        self._errors = deque([0.0] * self.window, maxlen=self.window)

    def step(self, error: float) -> float:
        self._errors.append(float(error))
        integral = sum(self._errors) / len(self._errors)
        derivative = self._errors[-1] - self._errors[-2] if len(self._errors) >= 2 else 0.0
        return self.kp * error + self.ki * integral + self.kd * derivative


class LateralPID:
    """PDM-Lite's lateral PID on a dense path.

    The path is an (N, 2) array at `points_per_meter` points per metre whose first point is where the
    vehicle is (its progress point on a route, or the ego origin for an ego-frame path). The lookahead
    index is `clip(0.9755 * v[km/h] + 1.915, 24, 105)` points (2.4 m to 10.5 m at 10 pts/m), capped at
    the last point. The error is the heading error to that point divided by 90 degrees; steer =
    kp * e + ki * mean(e over the last 6 steps) + kd * (e_t - e_{t-1}), clipped to [-1, 1]. Unlike the
    speed PID the error window starts empty (as in PDM-Lite): integral and derivative are 0 until two
    errors have been seen.
    """

    def __init__(
        self,
        kp: float = twin.LAT_KP,
        kd: float = twin.LAT_KD,
        ki: float = twin.LAT_KI,
        window: int = twin.LAT_WINDOW,
        speed_scale: float = twin.LOOKAHEAD_SCALE,
        speed_offset: float = twin.LOOKAHEAD_OFFSET,
        min_lookahead: int = twin.LOOKAHEAD_MIN,
        max_lookahead: int = twin.LOOKAHEAD_MAX,
        points_per_meter: int = POINTS_PER_METER,
    ) -> None:
        self.kp, self.kd, self.ki = kp, kd, ki
        self.speed_scale, self.speed_offset = speed_scale, speed_offset
        # The lookahead bounds are given in points at 10 pts/m; rescale for other densities.
        scale = points_per_meter / POINTS_PER_METER
        self.min_lookahead = min_lookahead * scale
        self.max_lookahead = max_lookahead * scale
        self.window = int(window)
        self._errors: deque[float] = deque(maxlen=self.window)
        self.last_error = 0.0
        self.last_lookahead = 0

    def reset(self) -> None:
        self._errors.clear()
        self.last_error = 0.0

    def lookahead_points(self, speed: float) -> int:
        """Lookahead in path points for a speed in m/s."""
        la = self.speed_scale * max(speed, 0.0) * 3.6 + self.speed_offset
        return int(min(max(la, self.min_lookahead), self.max_lookahead))

    def heading_error(
        self, path: np.ndarray, speed: float, position: np.ndarray | None = None, yaw: float = 0.0
    ) -> float:
        """Normalised heading error (heading error / 90 deg) to the lookahead point, without state."""
        n = len(path)
        if n == 0:
            return 0.0
        k = min(self.lookahead_points(speed), n - 1)
        self.last_lookahead = k
        px, py = (0.0, 0.0) if position is None else (float(position[0]), float(position[1]))
        return twin.heading_error_to(float(path[k, 0]), float(path[k, 1]), px, py, float(yaw))

    def step(
        self, path: np.ndarray, speed: float, position: np.ndarray | None = None, yaw: float = 0.0
    ) -> float:
        """Steer in [-1, 1] (positive = left).

        `path` is either in the ego frame (leave `position` None and `yaw` 0) or in the world frame
        with the vehicle's world `position` (x, y) and `yaw`; in both cases it starts at the vehicle.
        """
        return self.step_error(self.heading_error(path, speed, position, yaw))

    def step_error(self, err: float) -> float:
        """Steer in [-1, 1] for a heading error computed elsewhere (the PID part of `step`)."""
        self._errors.append(err)
        self.last_error = err
        if len(self._errors) >= 2:
            derivative = self._errors[-1] - self._errors[-2]
            integral = sum(self._errors) / len(self._errors)
        else:
            derivative = integral = 0.0
        steer = self.kp * err + self.kd * derivative + self.ki * integral
        return float(min(max(steer, -1.0), 1.0))


class LongitudinalPID:
    """SimLingo's speed controller.

    brake = desired < `brake_speed` (0.4 m/s) or speed / desired > `brake_ratio` (1.1); brake is binary
    (1.0 or 0.0) as in SimLingo. Otherwise throttle = PID(clip(desired - speed, 0, `clip_delta` = 1))
    with kp 1.75, ki 1.0, kd 2.0, clipped to [0, `max_throttle` = 0.75]. The PID runs every step (also
    while braking), as in SimLingo. Window: 20 steps (1 s at 20 Hz), the `speed_n` of TransFuser++ /
    SimLingo's `PIDController`; the integral is the mean error over that window.
    """

    def __init__(
        self,
        kp: float = twin.LON_KP,
        ki: float = twin.LON_KI,
        kd: float = twin.LON_KD,
        window: int = twin.LON_WINDOW,
        brake_speed: float = twin.BRAKE_SPEED,
        brake_ratio: float = twin.BRAKE_RATIO,
        clip_delta: float = twin.CLIP_DELTA,
        max_throttle: float = twin.MAX_THROTTLE,
    ) -> None:
        self.pid = WindowPID(kp, ki, kd, window)
        self.brake_speed, self.brake_ratio = brake_speed, brake_ratio
        self.clip_delta, self.max_throttle = clip_delta, max_throttle

    def reset(self) -> None:
        self.pid.reset()

    def should_brake(self, desired_speed: float, speed: float) -> bool:
        return desired_speed < self.brake_speed or speed / desired_speed > self.brake_ratio

    def step(self, desired_speed: float, speed: float) -> tuple[float, float]:
        """(throttle, brake) for a desired speed and the current speed, both m/s."""
        brake = self.should_brake(desired_speed, speed)
        delta = min(max(desired_speed - speed, 0.0), self.clip_delta)
        throttle = min(max(self.pid.step(delta), 0.0), self.max_throttle)
        if brake:
            return 0.0, 1.0
        return float(throttle), 0.0


def densify_path(
    path: np.ndarray, spacing: float = 1.0 / POINTS_PER_METER, prepend_origin: bool = True
) -> np.ndarray:
    """Resample a sparse ego-frame path to `spacing` metres along its arc length.

    As SimLingo, the ego origin is prepended (so the dense path starts at the vehicle) and the first
    returned point lies `spacing` ahead of it. Interpolation is linear (SimLingo uses PCHIP; on 1 m
    spacing the difference is a few centimetres). Returns at least one point.
    """
    p = np.asarray(path, dtype=np.float64).reshape(-1, 2)
    if prepend_origin:
        p = np.concatenate([np.zeros((1, 2)), p])
    if len(p) < 2:
        return p[-1:].copy()
    seg = np.hypot(p[1:, 0] - p[:-1, 0], p[1:, 1] - p[:-1, 1])
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if cum[-1] <= spacing:
        return p[-1:].copy()
    cum += np.arange(len(cum)) * 1e-6  # strictly increasing even with repeated points
    s = np.arange(spacing, cum[-1], spacing)
    return np.stack([np.interp(s, cum, p[:, 0]), np.interp(s, cum, p[:, 1])], axis=-1)


def desired_speed_from_waypoints(speed_waypoints: np.ndarray, dt: float = 0.25) -> float:
    """SimLingo's desired speed: mean speed between the waypoints at 0.25 s and 0.75 s (m/s)."""
    wp = np.asarray(speed_waypoints, dtype=np.float64).reshape(-1, 2)
    if len(wp) < 3:
        return 0.0
    return float(np.hypot(*(wp[2] - wp[0])) / (2.0 * dt))


class WaypointController:
    """SimLingo's deployment controller: (path, speed waypoints, speed) -> `Control`.

    - path: (20, 2) ego-frame points 1 m apart, the ego origin prepended; the lookahead point is where
      the 10 pts/m resampling (`densify_path`) would put it (`envs.control.heading_error_on_path`), and
      `LateralPID` turns the heading error into steer. The lookahead rule is the twin's (PDM-Lite's).
    - speed_waypoints: (10, 2) ego-frame positions 0.25 s apart (the first at +0.25 s);
      desired speed = |wp[2] - wp[0]| / 0.5 s, then `LongitudinalPID`.
    - creep (off by default): after `stuck_time` s (40 s) below 0.1 m/s, throttle >= `creep_throttle`
      (0.4) and no brake for `creep_frames` (15) frames; the stuck counter resets once the speed is
      back above 0.1 m/s, so creeping repeats while the vehicle stays stuck.
    """

    def __init__(
        self,
        creep: bool = False,
        dt: float = 0.05,
        stuck_time: float = 40.0,
        creep_frames: int = 15,
        creep_throttle: float = 0.4,
        waypoint_dt: float = 0.25,
        lateral: LateralPID | None = None,
        longitudinal: LongitudinalPID | None = None,
    ) -> None:
        self.lateral = lateral or LateralPID()
        self.longitudinal = longitudinal or LongitudinalPID()
        self.creep = creep
        self.stuck_frames = round(stuck_time / dt)
        self.creep_frames = int(creep_frames)
        self.creep_throttle = creep_throttle
        self.waypoint_dt = waypoint_dt
        self.stuck_counter = 0
        self.force_move = 0
        self.last_desired_speed = 0.0

    def reset(self) -> None:
        self.lateral.reset()
        self.longitudinal.reset()
        self.stuck_counter = 0
        self.force_move = 0
        self.last_desired_speed = 0.0

    def step(self, path: np.ndarray, speed_waypoints: np.ndarray, speed: float) -> Control:
        speed = float(speed)
        desired = desired_speed_from_waypoints(speed_waypoints, self.waypoint_dt)
        self.last_desired_speed = desired
        throttle, brake = self.longitudinal.step(desired, speed)
        pts, cum = twin.path_with_origin(np.asarray(path, np.float64).reshape(-1, 2))
        steer = self.lateral.step_error(twin.heading_error_on_path(pts, cum, 0.0, 0.0, 0.0, 0.0, speed))
        if self.creep:
            if speed < 0.1:
                self.stuck_counter += 1
            else:
                self.stuck_counter = 0
            if self.stuck_counter > self.stuck_frames:
                self.force_move = self.creep_frames
            if self.force_move > 0:
                throttle = max(throttle, self.creep_throttle)
                brake = 0.0
                self.force_move -= 1
        return Control(throttle=float(throttle), brake=float(brake), steer=round(steer, 3))
