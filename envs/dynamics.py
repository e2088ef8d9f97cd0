"""Ego vehicle dynamics at 20 Hz: PDM-Lite's kinematic bicycle plus a simple longitudinal model.

Sign conventions (world frame of `envs.scene`: x east, y north, yaw CCW):
- `steer` is normalised to [-1, 1]; positive steers LEFT, i.e. increases yaw (counter-clockwise).
  CARLA's `VehicleControl.steer` is positive to the right (its yaw is clockwise because its y axis
  points south), so a CARLA backend sends `carla_steer(steer) == -steer`.
- `throttle` and `brake` are in [0, 1]; values outside are clipped. There is no reverse gear: the speed
  never goes below 0.

Lateral model (PDM-Lite / SimLingo, REFERENCE.md): wheel angle = 0.3685 rad * steer,
    beta = atan(lr / (lf + lr) * tan(wheel angle)),  lr = 1.4178 m, lf = -0.0908 m (fitted values),
    x += v cos(yaw + beta) dt,  y += v sin(yaw + beta) dt,  yaw += v / lr * sin(beta) dt,
explicit Euler with the speed at the start of the tick (as PDM-Lite's forecast does), then
    v <- max(0, v + a dt).

Longitudinal model (this project's choice; PDM-Lite fits only the brake):
- brake > 0:   a = -max(4.952 * brake, resistance(v))  -> full brake is exactly PDM-Lite's -4.952 m/s^2;
  brake wins over throttle when both are given.
- otherwise:   a = throttle * 3.5 * max(0, 1 - v / 33) - resistance(v)
  i.e. ~3.2 m/s^2 net from rest at full throttle, tapering to a top speed of about 27.5 m/s (99 km/h).
- resistance(v) = 0.3 + 0.0004 v^2 m/s^2 while moving (rolling + drag): coasting decelerates at
  0.3 m/s^2 at low speed, ~0.46 at 20 m/s, ~0.66 at 30 m/s; 0 at standstill.
Steering is applied instantly (no steering-rate limit), as in PDM-Lite's forecasting model.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from envs.scene import EgoState

DT = 0.05  # s, 20 Hz
STEER_GAIN = 0.3685  # rad of wheel angle per unit of normalised steer
LR = 1.4178  # m, rear axle to centre of gravity (PDM-Lite fit)
LF = -0.0908  # m, front axle to centre of gravity (PDM-Lite fit; negative by the fit)
BRAKE_DECEL = 4.952  # m/s^2 at brake = 1
THROTTLE_ACCEL = 3.5  # m/s^2 drive acceleration at throttle = 1 from rest
TOP_SPEED = 33.0  # m/s, drive acceleration tapers linearly to 0 here
ROLL_DECEL = 0.3  # m/s^2, rolling resistance while moving
DRAG_COEF = 0.0004  # 1/m, aerodynamic drag: DRAG_COEF * v^2 m/s^2

STATE_COLUMNS = ("x", "y", "yaw", "speed")


def carla_steer(steer: float) -> float:
    """This project's steer (positive = left) -> CARLA's VehicleControl.steer (positive = right)."""
    return -float(steer)


@njit(cache=True)
def _clip(v: float, lo: float, hi: float) -> float:
    return min(max(v, lo), hi)


@njit(cache=True)
def wrap_yaw(a: float) -> float:
    """Angle to [-pi, pi] (a few turns at most: one bicycle step changes yaw by far less than a turn)."""
    while a > math.pi:
        a -= 2.0 * math.pi
    while a < -math.pi:
        a += 2.0 * math.pi
    return a


@njit(cache=True)
def slip_angle(steer: float) -> float:
    """Body slip angle beta (rad) for a normalised steer in [-1, 1] (positive = left)."""
    wheel = STEER_GAIN * _clip(steer, -1.0, 1.0)
    return math.atan(LR / (LF + LR) * math.tan(wheel))


@njit(cache=True)
def resistance(speed: float) -> float:
    """Deceleration magnitude (m/s^2) from rolling resistance and drag; 0 at standstill."""
    if speed <= 0.0:
        return 0.0
    return ROLL_DECEL + DRAG_COEF * speed * speed


@njit(cache=True)
def longitudinal_accel(speed: float, throttle: float, brake: float) -> float:
    """Longitudinal acceleration (m/s^2) for throttle/brake in [0, 1] at `speed` (m/s)."""
    throttle = _clip(throttle, 0.0, 1.0)
    brake = _clip(brake, 0.0, 1.0)
    res = resistance(speed)
    if brake > 0.0:
        return -max(BRAKE_DECEL * brake, res)
    drive = throttle * THROTTLE_ACCEL * max(0.0, 1.0 - speed / TOP_SPEED)
    return drive - res


@njit(cache=True)
def bicycle_step_scalars(
    x: float, y: float, yaw: float, v: float, steer: float, accel: float, dt: float
) -> tuple[float, float, float, float]:
    """`bicycle_step` on scalars (no array allocated: the pseudo-simulator's inner loop).

    cos / sin of the slip angle come from tan(beta) = lr / (lf + lr) tan(wheel) without an atan, and
    cos / sin(yaw + beta) by the angle-sum rule: the same model as `slip_angle`, fewer trig calls.
    """
    tb = LR / (LF + LR) * math.tan(STEER_GAIN * _clip(steer, -1.0, 1.0))
    cb = 1.0 / math.sqrt(1.0 + tb * tb)
    sb = tb * cb
    cy, sy = math.cos(yaw), math.sin(yaw)
    return (
        x + v * (cy * cb - sy * sb) * dt,
        y + v * (sy * cb + cy * sb) * dt,
        wrap_yaw(yaw + v / LR * sb * dt),
        max(0.0, v + accel * dt),
    )


@njit(cache=True)
def bicycle_step(state: np.ndarray, steer: float, accel: float, dt: float = DT) -> np.ndarray:
    """One kinematic-bicycle step of state [x, y, yaw, speed] with steer in [-1, 1] and accel m/s^2.

    Returns a new (4,) array; yaw wrapped to [-pi, pi], speed clamped at 0.
    """
    out = np.empty(4)
    out[0], out[1], out[2], out[3] = bicycle_step_scalars(state[0], state[1], state[2], state[3], steer,
                                                          accel, dt)
    return out


@njit(cache=True)
def rollout_bicycle(
    states: np.ndarray, steer: np.ndarray, accel: np.ndarray, n_steps: int, dt: float = DT
) -> np.ndarray:
    """Roll B states (B, 4) forward `n_steps`, holding each row's steer and acceleration.

    Returns (B, n_steps, 4): the states after steps 1 .. n_steps (the current state is not repeated).
    """
    b = states.shape[0]
    out = np.empty((b, n_steps, 4))
    for i in range(b):
        s = states[i].copy()
        for k in range(n_steps):
            s = bicycle_step(s, steer[i], accel[i], dt)
            out[i, k] = s
    return out


@njit(cache=True)
def rollout_controls(
    states: np.ndarray, throttle: np.ndarray, brake: np.ndarray, steer: np.ndarray, n_steps: int,
    dt: float = DT,
) -> np.ndarray:
    """PDM-Lite-style forecast: roll B states (B, 4) forward holding throttle/brake/steer per row.

    The acceleration is re-evaluated from the longitudinal model every step. Returns (B, n_steps, 4).
    """
    b = states.shape[0]
    out = np.empty((b, n_steps, 4))
    for i in range(b):
        s = states[i].copy()
        for k in range(n_steps):
            a = longitudinal_accel(s[3], throttle[i], brake[i])
            s = bicycle_step(s, steer[i], a, dt)
            out[i, k] = s
    return out


def state_of(ego: EgoState) -> np.ndarray:
    """EgoState -> [x, y, yaw, speed] float64 array."""
    return np.array([ego.x, ego.y, ego.yaw, ego.speed], dtype=np.float64)


class EgoDynamics:
    """Advances the ego one tick from throttle/brake/steer (see the module docstring for the model)."""

    def __init__(self, dt: float = DT):
        if not dt > 0:
            raise ValueError(f"dt must be positive, got {dt}")
        self.dt = float(dt)

    def step(self, ego: EgoState, throttle: float, brake: float, steer: float) -> EgoState:
        """Return the next EgoState (the input is not modified).

        Updates x, y, yaw, speed, accel (realised (v' - v) / dt, so 0 once stopped), yaw_rate
        ((yaw' - yaw) / dt) and steer (the clipped steer applied).
        """
        for name, value in (("throttle", throttle), ("brake", brake), ("steer", steer)):
            if not math.isfinite(value):
                raise ValueError(f"EgoDynamics.step: {name} must be finite, got {value!r}")
        steer = min(max(float(steer), -1.0), 1.0)
        a = longitudinal_accel(float(ego.speed), float(throttle), float(brake))
        new = bicycle_step(state_of(ego), steer, a, self.dt)
        out = ego.copy()
        out.x, out.y, out.yaw, out.speed = float(new[0]), float(new[1]), float(new[2]), float(new[3])
        out.accel = (out.speed - ego.speed) / self.dt
        out.yaw_rate = math.atan2(math.sin(out.yaw - ego.yaw), math.cos(out.yaw - ego.yaw)) / self.dt
        out.steer = steer
        return out
