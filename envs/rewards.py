"""Reward terms over batches of pseudo-simulated rollouts, and the rewards composed from them.

A reward term is a named function `term(rollouts, **params) -> (B, G, H) array`: one value per scene,
candidate and step, computed for the whole batch at once (vectorised NumPy or a Numba kernel).
`Rollouts` carries the batch of scenes (`envs.dreaming.DreamBatch`), the rolled-out ego states
(B, G, H, 4) and caches shared between terms (the box overlaps are computed once).

Built-in terms (sign: as computed; the composition's weights give the direction):
- `distance`: L2 distance (m) between the ego and the expert's recorded trajectory at each step; 0 where
  the expert's future is unknown (past the end of the episode).
- `collision`: `value` (30) where the ego box overlaps an agent's recorded box, else 0 (TakeVLA's col).
- `ttc`: 1 where the ego, projected ahead at its speed and heading for up to `horizon_s` (1 s), meets an
  agent's recorded box (NAVSIM's time-to-collision check), else 0.
- `progress`: metres gained along the route during the step (the frame's route ahead; the expert's
  trajectory where a frame has no route).
- `comfort`: 1 where a Bench2Drive comfort limit is exceeded at the step (longitudinal acceleration
  outside (-4.05, 2.40) m/s^2, |lateral acceleration| > 4.89, |jerk| > 8.37 m/s^3, |longitudinal jerk| >
  4.13, |yaw acceleration| > 1.93 rad/s^2, |yaw rate| > 0.95 rad/s), by finite differences over the steps
  (Bench2Drive smooths 20 Hz logs first; at 5 Hz the differences are already coarse), else 0.
- `drivable`: 1 where a corner of the ego box lies outside every lane of the frame (distance to the lane
  centreline beyond its half width), else 0. Needs frames recorded with lanes.

Composition (`RewardConfig`): per-step reward r_t = sum_i w_i term_i(t), return R = sum_t gamma^t r_t.
The default is TakeVLA's: r = -distance - collision, gamma = 0.9. Terms are named by registered name
or by import path: `RewardConfig(terms={"distance": -1, "my_pkg.rewards:lane_keeping": -0.5})`, and
registered with `@register_reward("name")`. An unknown name, a term that returns the wrong shape, or NaN
rewards raise `RewardError` naming the term.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from envs.dreaming import DreamBatch, DreamError, overlaps, ttc_violations
from envs.plugins import resolve

RewardTerm = Callable[..., np.ndarray]
REWARD_TERMS: dict[str, RewardTerm] = {}

COMFORT_LIMITS = {
    "lon_accel_min": -4.05, "lon_accel_max": 2.40, "lat_accel": 4.89, "jerk": 8.37, "lon_jerk": 4.13,
    "yaw_accel": 1.93, "yaw_rate": 0.95,
}


class RewardError(ValueError):
    """A reward that cannot be composed or computed (names the term and the problem)."""


def register_reward(name: str) -> Callable[[RewardTerm], RewardTerm]:
    """Decorator: make `term(rollouts, **params) -> (B, G, H)` available by `name` in reward configs."""

    def deco(fn: RewardTerm) -> RewardTerm:
        REWARD_TERMS[name] = fn
        return fn

    return deco


def get_term(name: str) -> RewardTerm:
    """A term by registered name or by import path `module:function`."""
    fn = resolve(name, REWARD_TERMS, "reward term", RewardError)
    if not callable(fn):
        raise RewardError(f"reward term {name!r} is not callable")
    return fn


@dataclass
class Rollouts:
    """What reward terms see: the scenes, the rolled-out ego states (B, G, H, 4) and shared caches."""

    batch: DreamBatch
    traj: np.ndarray
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        b, g, h, _ = self.traj.shape
        return b, g, h

    def overlaps(self) -> np.ndarray:
        if "overlaps" not in self.cache:
            self.cache["overlaps"] = overlaps(self.batch, self.traj)
        return self.cache["overlaps"]


# ------------------------------------------------------------------------------------- terms
@njit(cache=True)
def _distance_kernel(traj: np.ndarray, expert: np.ndarray) -> np.ndarray:  # pragma: no cover - numba
    b_n, g_n, h_n = traj.shape[0], traj.shape[1], traj.shape[2]
    out = np.zeros((b_n, g_n, h_n))
    for b in range(b_n):
        for h in range(h_n):
            ex, ey = expert[b, h, 0], expert[b, h, 1]
            if ex != ex or ey != ey:
                continue  # the expert's future is unknown here: no signal
            for g in range(g_n):
                dx, dy = traj[b, g, h, 0] - ex, traj[b, g, h, 1] - ey
                out[b, g, h] = math.sqrt(dx * dx + dy * dy)
    return out


@register_reward("distance")
def distance(r: Rollouts) -> np.ndarray:
    return _distance_kernel(r.traj, np.ascontiguousarray(r.batch.expert_future))


@register_reward("collision")
def collision(r: Rollouts, value: float = 30.0) -> np.ndarray:
    return np.where(r.overlaps(), float(value), 0.0)


@register_reward("ttc")
def ttc(r: Rollouts, horizon_s: float = 1.0) -> np.ndarray:
    return ttc_violations(r.batch, r.traj, horizon_s).astype(np.float64)


@njit(cache=True)
def _project(line: np.ndarray, n: int, x: float, y: float) -> float:  # pragma: no cover - numba
    """Arc length of the nearest point of polyline line[:n] to (x, y)."""
    best, best_s, s0 = 1e18, 0.0, 0.0
    for i in range(n - 1):
        ax, ay = line[i, 0], line[i, 1]
        dx, dy = line[i + 1, 0] - ax, line[i + 1, 1] - ay
        seg = math.sqrt(dx * dx + dy * dy)
        w = 0.0 if seg <= 0.0 else min(max(((x - ax) * dx + (y - ay) * dy) / (seg * seg), 0.0), 1.0)
        px, py = ax + w * dx - x, ay + w * dy - y
        d = px * px + py * py
        if d < best:
            best, best_s = d, s0 + w * seg
        s0 += seg
    return best_s


@njit(cache=True)
def _progress_kernel(traj: np.ndarray, ego: np.ndarray, lines: np.ndarray, lens: np.ndarray) -> np.ndarray:
    b_n, g_n, h_n = traj.shape[0], traj.shape[1], traj.shape[2]  # pragma: no cover - numba
    out = np.zeros((b_n, g_n, h_n))
    for b in range(b_n):
        n = lens[b]
        if n < 2:
            continue
        s_start = _project(lines[b], n, ego[b, 0], ego[b, 1])
        for g in range(g_n):
            prev = s_start
            for h in range(h_n):
                s = _project(lines[b], n, traj[b, g, h, 0], traj[b, g, h, 1])
                out[b, g, h] = s - prev
                prev = s
    return out


@register_reward("progress")
def progress(r: Rollouts) -> np.ndarray:
    batch = r.batch
    lines = batch.route.copy()
    lens = batch.route_len.copy()
    for b in np.flatnonzero(lens < 2):  # no route recorded: the expert's trajectory is the reference
        ref = np.concatenate([batch.ego[b, None, :2], batch.expert_future[b, :, :2]])
        ref = ref[np.isfinite(ref).all(axis=1)]
        if lines.shape[1] < len(ref):
            lines = np.concatenate([lines, np.full((len(lines), len(ref) - lines.shape[1], 2), np.nan)], 1)
        lines[b, : len(ref)] = ref
        lens[b] = len(ref)
    return _progress_kernel(r.traj, batch.ego, np.ascontiguousarray(lines), lens)


@register_reward("comfort")
def comfort(r: Rollouts, **limits: float) -> np.ndarray:
    lim = {**COMFORT_LIMITS, **limits}
    dt = r.batch.dt
    ego = r.batch.ego
    b, g, _ = r.shape
    v = np.concatenate([np.broadcast_to(ego[:, None, None, 3], (b, g, 1)), r.traj[..., 3]], axis=2)
    yaw = np.concatenate([np.broadcast_to(ego[:, None, None, 2], (b, g, 1)), r.traj[..., 2]], axis=2)
    yaw_rate = np.angle(np.exp(1j * np.diff(yaw, axis=2))) / dt  # (B, G, H)
    a_lon = np.diff(v, axis=2) / dt
    a_lat = v[..., 1:] * yaw_rate

    def rate(x: np.ndarray) -> np.ndarray:  # the first step's change is unknown: taken as 0
        return np.concatenate([np.zeros((b, g, 1)), np.diff(x, axis=2) / dt], axis=2)

    j_lon, j_lat, yaw_acc = rate(a_lon), rate(a_lat), rate(yaw_rate)
    bad = (
        (a_lon < lim["lon_accel_min"]) | (a_lon > lim["lon_accel_max"]) | (np.abs(a_lat) > lim["lat_accel"])
        | (np.hypot(j_lon, j_lat) > lim["jerk"]) | (np.abs(j_lon) > lim["lon_jerk"])
        | (np.abs(yaw_acc) > lim["yaw_accel"]) | (np.abs(yaw_rate) > lim["yaw_rate"])
    )
    return bad.astype(np.float64)


@njit(cache=True)
def _inside_lanes(x: float, y: float, lanes: np.ndarray, starts: np.ndarray) -> bool:  # pragma: no cover
    for k in range(starts.shape[0] - 1):
        for i in range(starts[k], starts[k + 1] - 1):
            ax, ay, aw = lanes[i, 0], lanes[i, 1], lanes[i, 2]
            dx, dy = lanes[i + 1, 0] - ax, lanes[i + 1, 1] - ay
            seg2 = dx * dx + dy * dy
            w = 0.0 if seg2 <= 0.0 else min(max(((x - ax) * dx + (y - ay) * dy) / seg2, 0.0), 1.0)
            px, py = ax + w * dx - x, ay + w * dy - y
            half = aw + w * (lanes[i + 1, 2] - aw)
            if px * px + py * py <= half * half:
                return True
    return False


@njit(cache=True)
def _offroad_kernel(
    traj: np.ndarray, extent: np.ndarray, lanes: np.ndarray, starts: np.ndarray
) -> np.ndarray:  # pragma: no cover - numba
    b_n, g_n, h_n = traj.shape[0], traj.shape[1], traj.shape[2]
    out = np.zeros((b_n, g_n, h_n))
    for b in range(b_n):
        hl, hw = extent[b, 0], extent[b, 1]
        for g in range(g_n):
            for h in range(h_n):
                x, y, yaw = traj[b, g, h, 0], traj[b, g, h, 1], traj[b, g, h, 2]
                c, s = math.cos(yaw), math.sin(yaw)
                for sl, sw in ((1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0)):
                    cx = x + c * sl * hl - s * sw * hw
                    cy = y + s * sl * hl + c * sw * hw
                    if not _inside_lanes(cx, cy, lanes[b], starts[b]):
                        out[b, g, h] = 1.0
                        break
    return out


@register_reward("drivable")
def drivable(r: Rollouts) -> np.ndarray:
    batch = r.batch
    missing = [batch.sources[b] or str(b) for b in range(batch.size) if batch.lane_start[b, -1] < 2]
    if missing:
        raise RewardError(
            f"reward term 'drivable' needs the lanes around the ego; {len(missing)} scene(s) have none "
            f"(e.g. {missing[0]}; frames of dataset schema 1 carry no lanes)"
        )
    return _offroad_kernel(r.traj, batch.ego_extent, batch.lanes, batch.lane_start)


# -------------------------------------------------------------------------------- composition
@dataclass
class RewardConfig:
    terms: dict[str, float] = field(default_factory=lambda: {"distance": -1.0, "collision": -1.0})
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # term name -> keyword arguments
    gamma: float = 0.9

    @staticmethod
    def from_dict(d: dict | None) -> RewardConfig:
        d = dict(d or {})
        unknown = set(d) - {"terms", "params", "gamma"}
        if unknown:
            raise RewardError(f"unknown reward config keys {sorted(unknown)} (expected terms, params, gamma)")
        return RewardConfig(**d)


@dataclass
class RewardResult:
    per_step: np.ndarray  # (B, G, H) composed reward r_t
    returns: np.ndarray  # (B, G) discounted sum R
    terms: dict[str, np.ndarray]  # name -> (B, G, H) raw term values


class Reward:
    """A composed reward: weighted terms, discounted over the steps (see the module docstring)."""

    def __init__(self, config: RewardConfig | dict | None = None) -> None:
        if config is None or isinstance(config, dict):
            config = RewardConfig.from_dict(config)
        if not config.terms:
            raise RewardError("a reward needs at least one term")
        if not 0.0 <= config.gamma <= 1.0:
            raise RewardError(f"gamma must be in [0, 1], got {config.gamma}")
        stray = set(config.params) - set(config.terms)
        if stray:
            raise RewardError(f"params given for terms not in the reward: {sorted(stray)}")
        self.config = config
        self.terms = {name: get_term(name) for name in config.terms}
        for name, w in config.terms.items():
            if not math.isfinite(float(w)):
                raise RewardError(f"reward term {name!r} has a non-finite weight {w!r}")

    def __call__(self, rollouts: Rollouts) -> RewardResult:
        shape = rollouts.shape
        values: dict[str, np.ndarray] = {}
        total = np.zeros(shape)
        for name, fn in self.terms.items():
            try:
                v = fn(rollouts, **self.config.params.get(name, {}))
            except (DreamError, RewardError):
                raise
            except TypeError as exc:
                raise RewardError(f"reward term {name!r} failed: {exc}") from exc
            v = np.asarray(v, dtype=np.float64)
            if v.shape != shape:
                raise RewardError(
                    f"reward term {name!r} returned shape {v.shape}, expected (B, G, H) = {shape}"
                )
            bad = ~np.isfinite(v)
            if bad.any():
                b, g, h = np.argwhere(bad)[0]
                raise RewardError(
                    f"reward term {name!r} returned {int(bad.sum())} NaN/inf values "
                    f"(first at scene {b} {rollouts.batch.sources[b] if rollouts.batch.sources else ''}, "
                    f"candidate {g}, step {h})"
                )
            values[name] = v
            total += float(self.config.terms[name]) * v
        disc = self.config.gamma ** np.arange(shape[2])
        return RewardResult(total, total @ disc, values)


def warm_up(batch: DreamBatch, traj: np.ndarray) -> None:
    """Compile this module's kernels on a tiny batch (called by `envs.dreaming.warm_up`)."""
    r = Rollouts(batch, traj)
    distance(r)
    progress(r)
    drivable(r)
