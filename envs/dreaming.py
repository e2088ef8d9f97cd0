"""Scenario Dreaming: the vector-space pseudo-simulator that scores candidate actions for GRPO.

TakeVLA's reinforcement fine-tuning needs a reward for every sampled action of every takeover frame.
Instead of re-running the simulator, the frame's scene is rebuilt from what the recorder stored
(`envs.segments.Frame`): the ego state and size, the agents' boxes now and their recorded future boxes
(2 s at 5 Hz), the route ahead, the lanes around the ego and the expert's future trajectory. Then:

- `DreamScene.from_frame(frame)` rebuilds one scene; `DreamBatch.stack(scenes)` pads B scenes into
  arrays (NaN where a scene has fewer agents / route points, or an agent is gone).
- `rollout(batch, paths, speed_waypoints)` drives G candidate actions per scene, in the policy's output
  format (ego-frame path (20, 2) 1 m apart and speed waypoints (10, 2) 0.25 s apart), through the
  deployment controller's Numba twin (`envs.control`) and the environment's kinematic bicycle and
  longitudinal model (`envs.dynamics`) for `horizon` steps of `dt` (10 x 0.2 s, TakeVLA's 2 s at 5 Hz),
  with `substeps` controller ticks per step (1 by default; 4 runs the controller at the deployment's
  20 Hz). The candidate's path stays fixed in the frame's ego frame while the ego moves along it: the
  controller's progress point is the ego's projection on the path, and the desired speed follows the
  speed waypoints in time (`envs.control.desired_speed_at`). Returns ego states (B, G, H, 4) x, y, yaw,
  speed in the world frame.
- `overlaps(batch, traj)`: (B, G, H) whether the ego box overlaps any agent box at the same step, with
  the separating-axis kernel the environment's collision check uses (`envs.geometry`). Agents replay
  their recorded futures. Agents that cannot reach a candidate are skipped cheaply: per scene, only
  agents whose box sweep (bounding box over the horizon, computed once by `DreamBatch.stack`) meets the
  sweep of all candidates are kept; per
  candidate, only those meeting its own sweep are tested, each with a circle pre-check before the
  separating-axis test.
- `ttc_violations(batch, traj, horizon_s)`: (B, G, H) whether the ego, projected ahead at its current
  speed and heading, would overlap an agent (at the agent's recorded box of that later step) within
  `horizon_s` (NAVSIM's time-to-collision check on recorded futures).

Reward terms (`envs.rewards`) turn these into per-step rewards. All kernels are compiled with
`cache=True`; `warm_up()` compiles (or loads) them once per process on a tiny batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from envs import control as ctl
from envs.dynamics import bicycle_step_scalars, longitudinal_accel, wrap_yaw
from envs.geometry import overlap_scalars
from envs.segments import FUTURE_DT, FUTURE_STEPS

HORIZON = FUTURE_STEPS  # steps (10)
STEP_DT = FUTURE_DT  # s (0.2: 5 Hz)
PATH_POINTS, SPEED_POINTS = 20, 10  # the policy's output format
DEFAULT_EXTENT = (2.45, 1.06)  # ego half length, half width when a frame does not say


class DreamError(ValueError):
    """A scene or a candidate batch that cannot be simulated (names what is wrong)."""


# ------------------------------------------------------------------------------------- scenes
@dataclass
class DreamScene:
    """One rebuilt scene (world frame). Agents' futures: (N, H, 5) boxes at t + dt .. t + H dt, NaN when
    the agent is gone; the expert's future: (H, 3) x, y, yaw (NaN past the episode's end)."""

    ego: np.ndarray  # (4,) x, y, yaw, speed
    ego_extent: np.ndarray  # (2,) half length, half width
    agent_box: np.ndarray  # (N, 5) now
    agent_kind: np.ndarray  # (N,) AgentKind
    agent_future: np.ndarray  # (N, H, 5)
    expert_future: np.ndarray  # (H, 3)
    route: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (R, 2) centreline ahead
    lanes: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (P, 3) x, y, half width
    lane_start: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int32))  # (L + 1,) CSR offsets
    source: str = ""  # where it came from, for error messages

    @staticmethod
    def from_frame(frame: Any, horizon: int = HORIZON, dt: float = STEP_DT) -> DreamScene:
        """Rebuild the scene of a recorded frame; futures are resampled to `horizon` steps of `dt` when
        those differ from the recording's (linear interpolation of the 5 Hz boxes; NaN past 2 s)."""
        src = f"frame {getattr(frame, 'route_id', '?')}@{getattr(frame, 'tick', '?')}"
        ego = np.asarray(frame.ego, np.float64).reshape(-1)
        if ego.shape != (4,) or not np.isfinite(ego).all():
            raise DreamError(f"{src}: ego state must be 4 finite numbers (x, y, yaw, speed), got {ego}")
        fut = np.asarray(frame.agent_future, np.float64).reshape(-1, FUTURE_STEPS, 5)
        exp = np.asarray(frame.expert_future, np.float64).reshape(FUTURE_STEPS, 3)
        if horizon != FUTURE_STEPS or abs(dt - FUTURE_DT) > 1e-9:
            fut, exp = _resample_futures(fut, exp, horizon, dt)
        extent = np.asarray(getattr(frame, "ego_extent", DEFAULT_EXTENT), np.float64).reshape(2)
        return DreamScene(
            ego=ego.copy(),
            ego_extent=extent.copy(),
            agent_box=np.asarray(frame.agent_box, np.float64).reshape(-1, 5).copy(),
            agent_kind=np.asarray(frame.agent_kind, np.int8).copy(),
            agent_future=fut.copy(),
            expert_future=exp.copy(),
            route=np.asarray(getattr(frame, "route", np.zeros((0, 2))), np.float64).reshape(-1, 2).copy(),
            lanes=np.asarray(getattr(frame, "lanes", np.zeros((0, 3))), np.float64).reshape(-1, 3).copy(),
            lane_start=np.asarray(getattr(frame, "lane_start", np.zeros(1)), np.int32).reshape(-1).copy(),
            source=src,
        )


def _resample_futures(
    fut: np.ndarray, exp: np.ndarray, horizon: int, dt: float
) -> tuple[np.ndarray, np.ndarray]:
    t_rec = FUTURE_DT * np.arange(1, FUTURE_STEPS + 1)
    t_new = dt * np.arange(1, horizon + 1)

    def interp(series: np.ndarray, angle_cols: tuple[int, ...]) -> np.ndarray:
        out = np.full((horizon, series.shape[1]), np.nan)
        ok = np.isfinite(series).all(axis=1)
        if ok.sum() < 1:
            return out
        t_ok, s_ok = t_rec[ok], series[ok]
        inside = (t_new >= t_ok[0] - 1e-9) & (t_new <= t_ok[-1] + 1e-9)
        for c in range(series.shape[1]):
            col = np.unwrap(s_ok[:, c]) if c in angle_cols else s_ok[:, c]
            out[inside, c] = np.interp(t_new[inside], t_ok, col)
        return out

    new_fut = np.stack([interp(a, (2,)) for a in fut]) if len(fut) else np.zeros((0, horizon, 5))
    return new_fut, interp(exp, (2,))


@dataclass
class DreamBatch:
    """B scenes padded into arrays for the kernels (see `stack`)."""

    ego: np.ndarray  # (B, 4)
    ego_extent: np.ndarray  # (B, 2)
    agent_future: np.ndarray  # (B, N, H, 5), NaN padded
    agent_kind: np.ndarray  # (B, N), -1 padded
    n_agents: np.ndarray  # (B,)
    expert_future: np.ndarray  # (B, H, 3)
    route: np.ndarray  # (B, R, 2), NaN padded
    route_len: np.ndarray  # (B,)
    lanes: np.ndarray  # (B, P, 3), NaN padded
    lane_start: np.ndarray  # (B, L + 1) CSR offsets per scene, padded with the last offset
    agent_bounds: np.ndarray  # (B, N, 4) each agent's sweep over the horizon (collision pruning)
    agent_radius: np.ndarray  # (B, N) each agent's largest circumradius
    horizon: int = HORIZON
    dt: float = STEP_DT
    sources: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.ego.shape[0])

    @staticmethod
    def stack(scenes: list[DreamScene], horizon: int = HORIZON, dt: float = STEP_DT) -> DreamBatch:
        if not scenes:
            raise DreamError("an empty batch: give at least one scene")
        for s in scenes:
            if s.agent_future.shape[1:] != (horizon, 5) or s.expert_future.shape != (horizon, 3):
                raise DreamError(
                    f"{s.source}: futures of {s.agent_future.shape[1:]} / {s.expert_future.shape} do not "
                    f"match the batch horizon {horizon} (rebuild it with DreamScene.from_frame(..., horizon))"
                )
        b = len(scenes)
        n = max(max(len(s.agent_future) for s in scenes), 1)
        r = max(max(len(s.route) for s in scenes), 1)
        p = max(max(len(s.lanes) for s in scenes), 1)
        nl = max(max(len(s.lane_start) for s in scenes), 1)
        fut = np.full((b, n, horizon, 5), np.nan)
        kind = np.full((b, n), -1, np.int8)
        route = np.full((b, r, 2), np.nan)
        lanes = np.full((b, p, 3), np.nan)
        lane_start = np.zeros((b, nl), np.int32)
        for i, s in enumerate(scenes):
            fut[i, : len(s.agent_future)] = s.agent_future
            kind[i, : len(s.agent_kind)] = s.agent_kind
            route[i, : len(s.route)] = s.route
            lanes[i, : len(s.lanes)] = s.lanes
            ls = s.lane_start if len(s.lane_start) else np.zeros(1, np.int32)
            lane_start[i, : len(ls)] = ls
            lane_start[i, len(ls):] = ls[-1]
        n_agents = np.array([len(s.agent_future) for s in scenes], np.int64)
        bounds, radius = _scene_sweeps(fut, n_agents)
        return DreamBatch(
            ego=np.stack([s.ego for s in scenes]),
            ego_extent=np.stack([s.ego_extent for s in scenes]),
            agent_future=fut,
            agent_kind=kind,
            n_agents=n_agents,
            expert_future=np.stack([s.expert_future for s in scenes]),
            route=route,
            route_len=np.array([len(s.route) for s in scenes], np.int64),
            lanes=lanes,
            lane_start=lane_start,
            agent_bounds=bounds,
            agent_radius=radius,
            horizon=horizon,
            dt=dt,
            sources=[s.source for s in scenes],
        )


# ------------------------------------------------------------------------------------ rollouts
@njit(cache=True)
def _rollout_kernel(
    ego: np.ndarray, paths: np.ndarray, wps: np.ndarray, horizon: int, dt: float, substeps: int
) -> np.ndarray:  # pragma: no cover - numba
    b_n, g_n = paths.shape[0], paths.shape[1]
    out = np.empty((b_n, g_n, horizon, 4))
    sub_dt = dt / substeps
    lat = np.zeros(ctl.LAT_STATE)
    lon = np.zeros(ctl.LON_STATE)
    pts = np.empty((paths.shape[2] + 1, 2))
    cum = np.empty(paths.shape[2] + 1)
    for b in range(b_n):
        ex, ey, eyaw = ego[b, 0], ego[b, 1], ego[b, 2]
        c, s = math.cos(eyaw), math.sin(eyaw)
        for g in range(g_n):
            ctl.fill_path_with_origin(paths[b, g], pts, cum)
            end = ctl.lookahead_end(cum)
            cand_wps = wps[b, g]
            lat[:] = 0.0
            lon[:] = 0.0
            x = y = yaw = 0.0  # in the frame's ego frame
            v = ego[b, 3]
            seg = 0  # progress segment and lookahead segment: search hints, both move forward
            hint = 1
            t = 0.0
            for h in range(horizon):
                for _ in range(substeps):
                    prog, seg = ctl.project_progress(pts, cum, x, y, seg)
                    tx, ty, hint = ctl.lookahead_target(pts, cum, prog, v, end, hint)
                    steer = ctl.lateral_pid_step(lat, ctl.heading_error_to(tx, ty, x, y, yaw))
                    throttle, brake = ctl.longitudinal_pid_step(lon, ctl.desired_speed_at(cand_wps, t), v)
                    acc = longitudinal_accel(v, throttle, brake)
                    x, y, yaw, v = bicycle_step_scalars(x, y, yaw, v, steer, acc, sub_dt)
                    t += sub_dt
                out[b, g, h, 0] = ex + c * x - s * y
                out[b, g, h, 1] = ey + s * x + c * y
                out[b, g, h, 2] = wrap_yaw(eyaw + yaw)
                out[b, g, h, 3] = v
    return out


def _check_candidates(batch: DreamBatch, paths: np.ndarray, speed_waypoints: np.ndarray) -> None:
    b = batch.size
    if paths.ndim != 4 or paths.shape[0] != b or paths.shape[2:] != (PATH_POINTS, 2):
        raise DreamError(f"paths must be (B={b}, G, {PATH_POINTS}, 2) ego-frame points, got {paths.shape}")
    if speed_waypoints.shape != (b, paths.shape[1], SPEED_POINTS, 2):
        raise DreamError(
            f"speed_waypoints must be (B={b}, G={paths.shape[1]}, {SPEED_POINTS}, 2), "
            f"got {speed_waypoints.shape}"
        )
    for name, arr in (("paths", paths), ("speed_waypoints", speed_waypoints)):
        bad = ~np.isfinite(arr)
        if bad.any():
            where = np.argwhere(bad.any(axis=(2, 3)))[0]
            raise DreamError(f"{name} of scene {where[0]} candidate {where[1]} contain NaN or inf")


def rollout(
    batch: DreamBatch, paths: np.ndarray, speed_waypoints: np.ndarray, substeps: int = 1
) -> np.ndarray:
    """Ego states (B, G, H, 4) (x, y, yaw, speed; world frame) of G candidates per scene driven through
    the controller twin and the bicycle model for the batch's horizon."""
    paths = np.ascontiguousarray(paths, np.float64)
    speed_waypoints = np.ascontiguousarray(speed_waypoints, np.float64)
    _check_candidates(batch, paths, speed_waypoints)
    if substeps < 1:
        raise DreamError(f"substeps must be >= 1, got {substeps}")
    return _rollout_kernel(batch.ego, paths, speed_waypoints, batch.horizon, batch.dt, int(substeps))


# ----------------------------------------------------------------------------------- collisions
@njit(cache=True)
def _sweep_box(traj: np.ndarray, radius: float, out: np.ndarray) -> None:  # pragma: no cover - numba
    """Axis-aligned bounds (xmin, ymin, xmax, ymax) of positions (H, >=2), grown by radius, into out;
    NaN rows are skipped (all NaN -> an empty box with xmin > xmax)."""
    x0 = y0 = np.inf
    x1 = y1 = -np.inf
    for h in range(traj.shape[0]):
        x, y = traj[h, 0], traj[h, 1]
        if x == x and y == y:
            x0, y0, x1, y1 = min(x0, x), min(y0, y), max(x1, x), max(y1, y)
    out[0], out[1], out[2], out[3] = x0 - radius, y0 - radius, x1 + radius, y1 + radius


@njit(cache=True)
def _meet(a: np.ndarray, b: np.ndarray) -> bool:  # pragma: no cover - numba
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


@njit(cache=True)
def _scene_sweeps(fut: np.ndarray, n_agents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """Per scene and agent: the bounds (B, N, 4) of its recorded boxes over the horizon grown by its
    largest circumradius, and that radius (B, N). Padding rows get empty bounds."""
    b_n, n_max = fut.shape[0], fut.shape[1]
    bounds = np.empty((b_n, n_max, 4))
    radius = np.zeros((b_n, n_max))
    for b in range(b_n):
        for a in range(n_max):
            r2 = 0.0
            for h in range(fut.shape[2]):
                if fut[b, a, h, 3] == fut[b, a, h, 3]:
                    r2 = max(r2, fut[b, a, h, 3] ** 2 + fut[b, a, h, 4] ** 2)
            radius[b, a] = math.sqrt(r2)
            _sweep_box(fut[b, a], radius[b, a], bounds[b, a])
    return bounds, radius


@njit(cache=True)
def _overlaps_kernel(
    traj: np.ndarray, extent: np.ndarray, fut: np.ndarray, n_agents: np.ndarray, sweeps: np.ndarray,
    radius: np.ndarray, lead: np.ndarray, lead_dt: float,
) -> np.ndarray:  # pragma: no cover - numba
    """(B, G, H): for any k, the ego box of step h moved v * lead[k] * lead_dt metres ahead along its
    heading overlaps an agent's box of step min(h + lead[k], H - 1). lead = [0] is the plain overlap."""
    b_n, g_n, h_n = traj.shape[0], traj.shape[1], traj.shape[2]
    out = np.zeros((b_n, g_n, h_n), np.bool_)
    keep = np.empty(fut.shape[1], np.int64)
    near = np.empty(fut.shape[1], np.int64)
    cand = np.empty((g_n, 4))
    area = np.empty(4)
    max_lead = 0.0
    for k in range(lead.shape[0]):
        max_lead = max(max_lead, lead[k] * lead_dt)
    for b in range(b_n):
        n = n_agents[b]
        if n == 0:
            continue
        hl, hw = extent[b, 0], extent[b, 1]
        r_ego = math.sqrt(hl * hl + hw * hw)
        area[0] = area[1] = np.inf
        area[2] = area[3] = -np.inf
        for g in range(g_n):
            reach = 0.0  # a constant-velocity projection moves the ego beyond its positions
            for h in range(h_n):
                reach = max(reach, traj[b, g, h, 3] * max_lead)
            _sweep_box(traj[b, g], r_ego + reach, cand[g])
            area[0] = min(area[0], cand[g, 0])
            area[1] = min(area[1], cand[g, 1])
            area[2] = max(area[2], cand[g, 2])
            area[3] = max(area[3], cand[g, 3])
        n_keep = 0
        for a in range(n):
            if sweeps[b, a, 0] <= sweeps[b, a, 2] and _meet(sweeps[b, a], area):
                keep[n_keep] = a
                n_keep += 1
        if n_keep == 0:
            continue
        for g in range(g_n):
            n_near = 0
            for i in range(n_keep):
                if _meet(sweeps[b, keep[i]], cand[g]):
                    near[n_near] = keep[i]
                    n_near += 1
            if n_near == 0:
                continue
            for h in range(h_n):
                x, y, yaw, v = traj[b, g, h, 0], traj[b, g, h, 1], traj[b, g, h, 2], traj[b, g, h, 3]
                cy, sy = math.cos(yaw), math.sin(yaw)
                hit = False
                for k in range(lead.shape[0]):
                    hh = min(h + lead[k], h_n - 1)
                    d = v * lead[k] * lead_dt
                    px, py = x + cy * d, y + sy * d
                    for i in range(n_near):
                        a = near[i]
                        bx, by = fut[b, a, hh, 0], fut[b, a, hh, 1]
                        if bx != bx:
                            continue
                        reach = r_ego + radius[b, a]
                        if (bx - px) ** 2 + (by - py) ** 2 > reach * reach:
                            continue  # circles apart: no overlap (the separating-axis test would agree)
                        if overlap_scalars(px, py, yaw, hl, hw, bx, by, fut[b, a, hh, 2],
                                            fut[b, a, hh, 3], fut[b, a, hh, 4]):
                            hit = True
                            break
                    if hit:
                        break
                out[b, g, h] = hit
    return out


def _check_traj(batch: DreamBatch, traj: np.ndarray) -> np.ndarray:
    traj = np.ascontiguousarray(traj, np.float64)
    if traj.ndim != 4 or traj.shape[0] != batch.size or traj.shape[2:] != (batch.horizon, 4):
        raise DreamError(f"trajectories must be (B={batch.size}, G, H={batch.horizon}, 4), got {traj.shape}")
    return traj


_NO_LEAD = np.zeros(1, np.int64)


def overlaps(batch: DreamBatch, traj: np.ndarray) -> np.ndarray:
    """(B, G, H) bool: the ego box of each rollout step overlaps an agent's recorded box of that step."""
    traj = _check_traj(batch, traj)
    return _overlaps_kernel(traj, batch.ego_extent, batch.agent_future, batch.n_agents, batch.agent_bounds,
                            batch.agent_radius, _NO_LEAD, 0.0)


def ttc_violations(batch: DreamBatch, traj: np.ndarray, horizon_s: float = 1.0) -> np.ndarray:
    """(B, G, H) bool: projecting the ego ahead at its speed and heading from step h by 1 .. K steps
    (K = horizon_s / dt) meets an agent's recorded box of that later step (or of the last recorded
    step past the horizon), or it overlaps one at h itself."""
    traj = _check_traj(batch, traj)
    lead = np.arange(0, max(round(horizon_s / batch.dt), 0) + 1, dtype=np.int64)
    return _overlaps_kernel(traj, batch.ego_extent, batch.agent_future, batch.n_agents, batch.agent_bounds,
                            batch.agent_radius, lead, batch.dt)


# ------------------------------------------------------------------------------------ warm-up
_WARM = False


def warm_up() -> None:
    """Compile (or load from Numba's cache) every kernel once per process, on a tiny batch, so the
    first training batch does not pay for it."""
    global _WARM
    if _WARM:
        return
    fut = np.full((1, HORIZON, 5), np.nan)
    fut[0, :, :] = [8.0, 0.0, 0.0, 2.0, 1.0]
    scene = DreamScene(
        ego=np.array([0.0, 0.0, 0.0, 5.0]), ego_extent=np.array(DEFAULT_EXTENT), agent_box=fut[:, 0],
        agent_kind=np.zeros(1, np.int8), agent_future=fut, expert_future=np.zeros((HORIZON, 3)),
        route=np.stack([np.arange(-5.0, 40.0), np.zeros(45)], -1),
        lanes=np.column_stack([np.arange(-5.0, 40.0), np.zeros(45), np.full(45, 1.75)]),
        lane_start=np.array([0, 45], np.int32), source="warm-up",
    )
    batch = DreamBatch.stack([scene])
    path = np.stack([np.arange(1.0, 21.0), np.zeros(20)], -1)[None, None]
    wps = np.stack([1.25 * np.arange(1, 11), np.zeros(10)], -1)[None, None]
    traj = rollout(batch, path, wps)
    overlaps(batch, traj)
    ttc_violations(batch, traj)
    from envs import rewards  # the reward kernels

    rewards.warm_up(batch, traj)
    _WARM = True
