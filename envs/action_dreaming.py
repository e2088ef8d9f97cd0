"""Action Dreaming (SimLingo): alternative futures of a recorded expert frame, labelled allowed / safe.

For one recorded frame (`envs.segments.Frame`), `dream_actions` builds alternative actions in the
policy's output format (an ego-frame path of 20 points 1 m apart and 10 speed waypoints 0.25 s apart),
one per kind: "faster", "slower", "stop", "keep", "lane_change_left", "lane_change_right" and "crash".
Imitation pre-training mixes them with driving samples: the prompt carries the kind's instruction and
the answer follows it (allowed and safe) or refuses it with the reason.

Geometry and speed are built separately, as in SimLingo:
- The path is geometric. Speed kinds keep the expert's path (`frame.path`; the route ahead when a frame
  has none; either continued by the route, then straight, as far as the speed profiles reach). A lane
  change shifts that line sideways onto the neighbour lane's centreline with a cosine blend over 10-15 m
  (scaled by speed / 10 m/s above 10 m/s). "crash" bends it the same way towards the nearest agent ahead
  (within 30 m and 60 degrees of the heading) that the ego reaches within the 2 s, so that it passes
  through the agent's recorded position at the step the ego gets there (reached: the ego's front gets
  to the agent's back along the line, and the agent is at most half as far sideways as along it).
- The speed is a 1-D longitudinal profile from the current speed: faster = +2 m/s^2 up to
  max(target speed, speed) + 3..5 m/s; slower = -2 m/s^2 down to 40-60 % of the speed; stop = braking
  at 3 m/s^2 .. the bicycle model's full brake (`envs.dynamics.BRAKE_DECEL`), at least v / 2 s so that it
  stops within 2 s where the brakes allow; keep = constant; lane changes and crash = +2 m/s^2 up to
  max(speed, 4 m/s). The positions along the line at the distances travelled give the speed waypoints
  (t = 0.25 .. 2.5 s) and the ego boxes of the checks (t = 0.2 .. 2.0 s at 5 Hz, yaw from the line's
  tangent).

Labels (`DreamedAction`):
- safe: the ego box never overlaps an agent's recorded future box over the 2 s at 5 Hz
  (`envs.dreaming.overlaps`). Agents replay the recording, they do not react. So by default followers
  are left out: agents now behind the ego's centre, in its corridor (lateral offset below both half
  widths + 0.5 m) and heading within 45 degrees of it would brake for it, but their recording rear-ends
  a stopping ego (`ignore_followers=False` counts them too).
- allowed: (a) every corner of the ego box, shortened to half its length, stays inside a drivable lane
  at the 5 Hz steps (the `drivable` reward term; not checked when the frame carries no lanes). The full
  width catches leaving the road sideways; the full length would flag the expert's own path at tight
  turns and lane ends, where the lane polygons leave gaps. (b) The speed at 2.5 s is at most the
  speed-limit proxy max(1.25 x frame.target_speed, the expert's own speed at 2.5 s) + 0.25 m/s (the
  expert's speed from its last two speed waypoints, else from its recorded future; no limit when none of
  these is known): "faster" at cruise and anything but "stop" / "slower" before a red light break it.
  (c) A lane change goes into a lane of the ego's direction.
- A neighbour lane is found in `frame.lanes`: >= 2 centreline samples about one lane width to that side
  of the line (0.6-1.4 x the ego lane's + their own half width) around the end of the blend, within
  30 degrees of the line's heading, their lateral offsets spanning at most 1 m. A lane change with only
  an oncoming lane on that side is built and labelled not allowed; with no lane there, or where the line
  turns more than 20 degrees over the manoeuvre (junctions, bends), it is skipped.
- reason: "collision" when not safe, else "off_road" when (a) fails, else "not_allowed" when (b) or (c)
  fails, else None. collision_kind names the first agent hit (AgentKind name in lower case, the nearest
  of several hit at the same step); target_kind the agent a "crash" aims at (for the prompt's {obj}).

The strings of `KINDS` and `REASONS` are the keys of `policies.prompts.INSTRUCTIONS` / `REFUSE_REASONS`
(envs does not import policies; a test checks that they agree).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from envs.dreaming import PATH_POINTS, SPEED_POINTS, DreamBatch, DreamScene, overlaps
from envs.dynamics import BRAKE_DECEL
from envs.geometry import overlap_mask, polyline_frenet, to_ego_frame
from envs.rewards import Rollouts, drivable
from envs.scene import AgentKind
from envs.segments import FUTURE_DT, FUTURE_STEPS

KINDS = ("faster", "slower", "stop", "keep", "lane_change_left", "lane_change_right", "crash")
REASONS = ("collision", "off_road", "not_allowed")
SPEED_KINDS = frozenset({"faster", "slower", "stop", "keep"})

WAYPOINT_DT = 0.25  # s between speed waypoints
ACCEL = 2.0  # m/s^2: faster, and getting up to speed for lane changes and crash
SLOW_DECEL = 2.0  # m/s^2: slower
STOP_DECEL_MIN = 3.0  # m/s^2: the gentlest stop (BRAKE_DECEL the hardest)
FASTER_MARGIN = (3.0, 5.0)  # m/s above max(target speed, speed)
SLOWER_RATIO = (0.4, 0.6)  # of the current speed
MANOEUVRE_SPEED = 4.0  # m/s: lane changes and crash drive at least this fast
LANE_CHANGE_LENGTH = (10.0, 15.0)  # m up to 10 m/s; scaled by speed / 10 m/s above
LANE_CHANGE_MAX_TURN = math.radians(20.0)  # the line may turn this much over a lane change
LANE_ALIGN_COS = math.cos(math.radians(30.0))  # heading agreement of a lane with the line
LANE_WIDTH_BAND = (0.6, 1.4)  # x (own half width + neighbour half width)
LANE_OFFSET_SPREAD = 1.0  # m: the neighbour samples' lateral offsets span at most this
DEFAULT_HALF_WIDTH = 1.75  # m, when the ego's own lane is not found
CRASH_RADIUS = 30.0  # m: agents farther away are no crash targets
CRASH_HALF_ANGLE = math.radians(60.0)  # crash targets lie within this angle of the heading
CRASH_MAX_SLOPE = 0.5  # the aim point's lateral offset is at most this share of its distance along the line
SPEED_LIMIT_FACTOR = 1.25  # x frame.target_speed
SPEED_TOLERANCE = 0.25  # m/s
DRIVABLE_LENGTH_FACTOR = 0.5  # the drivable check tests the ego box shortened to this share of its length
FOLLOWER_MARGIN = 0.5  # m of lateral slack in the follower corridor
FOLLOWER_ALIGN_COS = math.cos(math.radians(45.0))

_T_WP = WAYPOINT_DT * np.arange(1, SPEED_POINTS + 1)  # 0.25 .. 2.5 s
_T_BOX = FUTURE_DT * np.arange(1, FUTURE_STEPS + 1)  # 0.2 .. 2.0 s
_T_ALL = np.concatenate([_T_WP, _T_BOX])
_PATH_S = np.arange(1.0, PATH_POINTS + 1.0)  # arc lengths of the path points


@dataclass
class DreamedAction:
    """One alternative future in the policy's action format, with its labels (see the module docstring)."""

    kind: str
    path: np.ndarray  # (20, 2) float32, ego frame, 1 m apart
    speed_waypoints: np.ndarray  # (10, 2) float32, ego frame, every 0.25 s from +0.25 s
    allowed: bool
    safe: bool
    collision_kind: str | None = None  # AgentKind name (lower case) of the first agent hit
    reason: str | None = None  # None | "collision" | "off_road" | "not_allowed"
    target_kind: str | None = None  # "crash": AgentKind name (lower case) of the agent aimed at
    final_speed: float = 0.0  # m/s at 2.5 s


# ------------------------------------------------------------------------------------ helpers
def _kind_name(kinds: np.ndarray, a: int) -> str:
    try:
        return AgentKind(int(kinds[a])).name.lower()
    except (ValueError, IndexError):
        return "object"


def _cum(line: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(line, axis=0).T))])


def _resample(line: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Points (*s.shape, 2) at arc lengths `s` along polyline `line` (K >= 2, 2), clamped to its ends."""
    cum = _cum(line)
    return np.stack([np.interp(s, cum, line[:, 0]), np.interp(s, cum, line[:, 1])], axis=-1)


def _base_line(frame, ego: np.ndarray, length: float) -> tuple[np.ndarray, bool]:
    """The reference line in the ego frame, sampled every 1 m of arc from the ego at (0, 0), `length` m
    long at least: the expert's path continued by the route, or the route ahead, then straight on. Also
    whether the speed kinds can keep the frame's own path (20 points)."""
    origin = np.zeros((1, 2))
    route = np.asarray(getattr(frame, "route", np.zeros((0, 2))), np.float64).reshape(-1, 2)
    route = route[np.isfinite(route).all(axis=1)]
    route = to_ego_frame(route, ego[0], ego[1], ego[2]) if len(route) >= 2 else np.zeros((0, 2))
    path = frame.path
    if path is not None:
        path = np.asarray(path, np.float64).reshape(-1, 2)
        if len(path) == 0 or not np.isfinite(path).all():
            path = None
    if path is not None:
        line = np.concatenate([origin, path])
        if len(route):  # continue along the route past the path's end
            j = int(np.argmin(np.hypot(*(route - path[-1]).T)))
            gap = path[-1] - route[j]
            if math.hypot(gap[0], gap[1]) < 5.0:
                line = np.concatenate([line, route[j + 1:] + gap])
    elif len(route):
        cum = _cum(route)
        _, s0, _ = polyline_frenet(route, cum, 0.0, 0.0, 0, len(route))
        line = np.concatenate([origin, route[cum > s0 + 0.5]])
    else:
        src = f"frame {getattr(frame, 'route_id', '?')}@{getattr(frame, 'tick', '?')}"
        raise ValueError(f"{src}: action dreaming needs the expert's path or the route ahead; it has neither")
    seg = np.hypot(*np.diff(line, axis=0).T)
    line = line[np.concatenate([[True], seg > 1e-6])]  # no repeated points
    total = float(seg.sum())
    if total < length:  # straight on along the last direction (the heading for a lone point)
        d = line[-1] - line[-2] if len(line) > 1 else np.array([1.0, 0.0])
        d = d / math.hypot(d[0], d[1])
        line = np.concatenate([line, line[-1:] + d * (length - total + 1.0)])
    own = path is not None and path.shape == (PATH_POINTS, 2)
    return _resample(line, np.arange(0.0, math.ceil(length) + 1.0)), own


def _axes(line: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit tangents and left normals (M, 2) of a polyline (M >= 2)."""
    tan = np.empty_like(line)
    tan[1:-1] = line[2:] - line[:-2]
    tan[0], tan[-1] = line[1] - line[0], line[-1] - line[-2]
    tan /= np.maximum(np.hypot(tan[:, 0], tan[:, 1]), 1e-9)[:, None]
    return tan, np.stack([-tan[:, 1], tan[:, 0]], axis=-1)


def _project(base: np.ndarray, tan: np.ndarray, nrm: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Frenet coordinates of points (K, 2) against the base line sampled every 1 m: (nearest sample,
    arc length, lateral offset (left positive), offset along the tangent from the nearest sample)."""
    d2 = (pts[:, None, 0] - base[None, :, 0]) ** 2 + (pts[:, None, 1] - base[None, :, 1]) ** 2
    j = np.argmin(d2, axis=1)
    rel = pts - base[j]
    lon = rel[:, 0] * tan[j, 0] + rel[:, 1] * tan[j, 1]
    return j, j + lon, rel[:, 0] * nrm[j, 0] + rel[:, 1] * nrm[j, 1], lon


def _blend(s: np.ndarray, length: float) -> np.ndarray:
    """A cosine ramp from 0 at s = 0 to 1 at s >= length."""
    u = np.clip(s / max(length, 1e-6), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * u)


def _profiles(
    kinds: list[str], v0: float, target_speed: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Distance travelled and speed (G, 20) at `_T_ALL` for each kind's longitudinal profile: the speed
    goes from v0 to the kind's goal at its rate, then stays."""
    goal, rate = np.empty(len(kinds)), np.empty(len(kinds))
    for i, kind in enumerate(kinds):
        if kind == "faster":
            ref = max(target_speed, v0) if math.isfinite(target_speed) else v0
            goal[i], rate[i] = ref + rng.uniform(*FASTER_MARGIN), ACCEL
        elif kind == "slower":
            goal[i], rate[i] = v0 * rng.uniform(*SLOWER_RATIO), SLOW_DECEL
        elif kind == "stop":
            goal[i], rate[i] = 0.0, min(max(rng.uniform(STOP_DECEL_MIN, BRAKE_DECEL), v0 / 2.0), BRAKE_DECEL)
        elif kind == "keep":
            goal[i], rate[i] = v0, 1.0
        else:  # lane changes, crash
            goal[i], rate[i] = max(v0, MANOEUVRE_SPEED), ACCEL
    sgn = np.where(goal >= v0, 1.0, -1.0)[:, None]
    t_ramp = (np.abs(goal - v0) / rate)[:, None]
    tt = np.minimum(_T_ALL[None], t_ramp)
    speed = v0 + sgn * rate[:, None] * tt
    dist = v0 * tt + 0.5 * sgn * rate[:, None] * tt * tt + goal[:, None] * np.maximum(_T_ALL - t_ramp, 0.0)
    return dist, speed


def _speed_limit(frame, ego: np.ndarray) -> float:
    """max(1.25 x target speed, the expert's speed at the end of its horizon) + tolerance (inf: unknown)."""
    limits = []
    ts = float(getattr(frame, "target_speed", math.nan))
    if math.isfinite(ts):
        limits.append(SPEED_LIMIT_FACTOR * ts)
    wps = frame.speed_waypoints
    wps = None if wps is None else np.asarray(wps, np.float64).reshape(-1, 2)
    if wps is not None and len(wps) >= 2 and np.isfinite(wps[-2:]).all():
        limits.append(math.hypot(*(wps[-1] - wps[-2])) / WAYPOINT_DT)
    else:
        fut = np.asarray(frame.expert_future, np.float64).reshape(-1, 3)[:, :2]
        fut = np.concatenate([ego[None, :2], fut])
        ok = np.flatnonzero(np.isfinite(fut).all(axis=1))
        if len(ok) >= 2 and ok[-1] - ok[-2] == 1:
            limits.append(math.hypot(*(fut[ok[-1]] - fut[ok[-2]])) / FUTURE_DT)
    return max(limits) + SPEED_TOLERANCE if limits else math.inf


@dataclass
class _Neighbour:
    offset: float  # lateral offset (m, left positive) of the neighbour lane's centre from the base line
    same_direction: bool


def _neighbour_lanes(
    frame, ego: np.ndarray, base: np.ndarray, tan: np.ndarray, nrm: np.ndarray, blend: float
) -> dict[int, _Neighbour]:
    """Neighbour lanes by side (+1 left, -1 right) around the end of a lane change of length `blend`
    (see the module docstring); none where the base line turns too much."""
    span = min(math.ceil(blend + 10.0), len(base) - 1)
    turn = np.arctan2(tan[:span + 1, 1], tan[:span + 1, 0])  # the ego frame: the heading now is 0
    if np.abs(turn).max() > LANE_CHANGE_MAX_TURN:
        return {}
    lanes = np.asarray(frame.lanes, np.float64).reshape(-1, 3)
    starts = np.asarray(frame.lane_start, np.int64).reshape(-1)
    if len(lanes) < 2 or len(starts) < 2:
        return {}
    pts = to_ego_frame(lanes[:, :2], ego[0], ego[1], ego[2])
    lo, hi = base[: span + 1].min(0) - 12.0, base[: span + 1].max(0) + 12.0
    idx = np.flatnonzero(((pts >= lo) & (pts <= hi)).all(axis=1))
    if len(idx) == 0:
        return {}
    # Each sample's direction: to the next sample of its lane, from the previous one at the lane's end.
    lane = np.searchsorted(starts, idx, side="right") - 1
    is_last = idx + 1 >= starts[lane + 1]
    nxt = np.where(is_last, idx, idx + 1)
    prv = np.where(is_last, np.maximum(idx - 1, starts[lane]), idx)
    fwd = pts[nxt] - pts[prv]
    norm = np.hypot(fwd[:, 0], fwd[:, 1])
    good = norm > 1e-6  # lanes of one sample have no direction
    idx, fwd, norm = idx[good], fwd[good], norm[good]
    j, s, lat, lon = _project(base[: span + 1], tan, nrm, pts[idx])
    cos = (fwd[:, 0] * tan[j, 0] + fwd[:, 1] * tan[j, 1]) / norm
    hw = lanes[idx, 2]
    inside = (np.abs(lon) <= 1.0) & (j > 0) & (j < span)
    own = inside & (cos >= LANE_ALIGN_COS) & (np.abs(lat) < np.minimum(hw, 1.5)) & (s < blend)
    own_hw = float(np.mean(hw[own])) if own.any() else DEFAULT_HALF_WIDTH
    window = inside & (s >= 0.5 * blend)
    out: dict[int, _Neighbour] = {}
    for side in (1, -1):
        expect = own_hw + hw
        band = window & (side * lat >= LANE_WIDTH_BAND[0] * expect)
        band &= side * lat <= LANE_WIDTH_BAND[1] * expect
        for same, sel in ((True, band & (cos >= LANE_ALIGN_COS)), (False, band & (cos <= -LANE_ALIGN_COS))):
            offsets = lat[sel]
            if len(offsets) >= 2 and np.ptp(offsets) <= LANE_OFFSET_SPREAD:
                out[side] = _Neighbour(float(np.mean(offsets)), same)
                break
    return out


def _crash_target(
    scene: DreamScene, base: np.ndarray, tan: np.ndarray, nrm: np.ndarray, dist_box: np.ndarray
) -> tuple[int, np.ndarray] | None:
    """(agent index, ego-frame point to drive through) of the nearest agent ahead that the ego reaches
    within the horizon, aimed at its recorded position at the first step it is reached; None if none."""
    ego = scene.ego
    box = scene.agent_box
    if len(box) == 0 or len(scene.agent_future) != len(box):
        return None
    p = to_ego_frame(box[:, :2], ego[0], ego[1], ego[2])
    dist = np.hypot(p[:, 0], p[:, 1])
    ahead = np.isfinite(dist) & (p[:, 0] > 0.0) & (dist <= CRASH_RADIUS)
    ahead &= np.abs(np.arctan2(p[:, 1], p[:, 0])) <= CRASH_HALF_ANGLE
    cand = np.flatnonzero(ahead)
    if len(cand) == 0:
        return None
    fut = scene.agent_future[cand, :, :2]  # (C, H, 2)
    fp = to_ego_frame(fut, ego[0], ego[1], ego[2])
    ok = np.isfinite(fp).all(axis=-1)
    flat = np.where(ok[..., None], fp, 0.0).reshape(-1, 2)
    _, s, lat, _ = _project(base, tan, nrm, flat)
    s, lat = s.reshape(ok.shape), lat.reshape(ok.shape)
    reach = dist_box[None, :] + scene.ego_extent[0] + box[cand, 3, None]  # front meets the agent's back
    hit = ok & (reach >= s) & (s >= 1.0) & (np.abs(lat) <= CRASH_MAX_SLOPE * s)
    reachable = hit.any(axis=1)
    if not reachable.any():
        return None
    c = int(np.flatnonzero(reachable)[np.argmin(dist[cand][reachable])])
    return int(cand[c]), fp[c, int(np.argmax(hit[c]))]


def _followers(scene: DreamScene) -> np.ndarray:
    """(N,) bool: agents now behind the ego's centre in its corridor and heading its way."""
    ego, box = scene.ego, scene.agent_box
    if len(box) == 0:
        return np.zeros(0, bool)
    p = to_ego_frame(box[:, :2], ego[0], ego[1], ego[2])
    corridor = scene.ego_extent[1] + box[:, 4] + FOLLOWER_MARGIN
    aligned = np.cos(box[:, 2] - ego[2]) >= FOLLOWER_ALIGN_COS
    return (p[:, 0] < 0.0) & (np.abs(p[:, 1]) < corridor) & aligned


def _lanes_near(lanes: np.ndarray, starts: np.ndarray, traj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lanes (CSR) with a sample within 10 m of the bounding box of the positions traj (..., >=2), so
    that the drivable check scans only those (a point inside a lane is within ~4 m of one of its
    samples, which are <= 2 m apart)."""
    n = np.diff(starts)
    xy = traj[..., :2].reshape(-1, 2)
    lo, hi = xy.min(0) - 10.0, xy.max(0) + 10.0
    inside = ((lanes[:, :2] >= lo) & (lanes[:, :2] <= hi)).all(axis=1)
    keep = np.zeros(len(n), bool)
    nonempty = n > 0
    keep[nonempty] = np.logical_or.reduceat(inside, starts[:-1][nonempty])
    return lanes[np.repeat(keep, n)], np.concatenate([[0], np.cumsum(n[keep])]).astype(np.int32)


# ------------------------------------------------------------------------------------ dreaming
def dream_actions(
    frame, rng: np.random.Generator, kinds: Sequence[str] | None = None, *, ignore_followers: bool = True
) -> list[DreamedAction]:
    """The alternative futures of `frame` for `kinds` (all of `KINDS` by default), in the order asked (a
    kind asked twice is sampled twice). Lane changes without a lane on that side (or on a turning line)
    and "crash" without a reachable agent ahead are skipped. The frame is not modified. Raises ValueError
    for unknown kinds and for frames with neither the expert's path nor a route."""
    kinds = list(KINDS if kinds is None else [kinds] if isinstance(kinds, str) else kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown action dreaming kind(s) {unknown}; valid kinds: {list(KINDS)}")
    scene = DreamScene.from_frame(frame)  # validates the ego state; copies what it keeps
    if len(kinds) == 0:
        return []
    ego = scene.ego
    v0 = max(float(ego[3]), 0.0)
    target_speed = float(getattr(frame, "target_speed", math.nan))
    dist, speed = _profiles(kinds, v0, target_speed, rng)  # at the waypoint times, then the box times
    blend = rng.uniform(*LANE_CHANGE_LENGTH) * max(1.0, v0 / 10.0)
    base, own_path = _base_line(frame, ego, max(float(dist.max()) + 2.0, PATH_POINTS + 2.0, blend + 12.0))
    tan, nrm = _axes(base)
    s_base = np.arange(len(base), dtype=np.float64)
    lane_kinds = any(k.startswith("lane_change") for k in kinds)
    neighbours = _neighbour_lanes(frame, ego, base, tan, nrm, blend) if lane_kinds else {}

    # Geometry: one line per kind (speed kinds share the base line).
    built: list[tuple[int, np.ndarray, bool, str | None]] = []  # kind index, line, rule ok, target kind
    for i, kind in enumerate(kinds):
        line, rule_ok, target_kind = base, True, None
        if kind.startswith("lane_change"):
            nb = neighbours.get(1 if kind.endswith("left") else -1)
            if nb is None:
                continue
            line = base + (nb.offset * _blend(s_base, blend))[:, None] * nrm
            rule_ok = nb.same_direction
        elif kind == "crash":
            aim = _crash_target(scene, base, tan, nrm, dist[i, SPEED_POINTS:])
            if aim is None:
                continue
            a, point = aim
            _, s_t, lat, _ = _project(base, tan, nrm, point[None])
            line = base + (lat[0] * _blend(s_base, max(float(s_t[0]), 2.0)))[:, None] * nrm
            target_kind = _kind_name(scene.agent_kind, a)
        built.append((i, line, rule_ok, target_kind))
    if not built:
        return []
    g = len(built)
    rows = np.array([b[0] for b in built])
    d_box = dist[rows, SPEED_POINTS:]
    # Per candidate: the path's arc lengths, the waypoint and box distances, +-0.5 m around the boxes.
    query = np.concatenate(
        [np.tile(_PATH_S, (g, 1)), dist[rows], d_box + 0.5, np.maximum(d_box - 0.5, 0.0)], axis=1
    )
    on_base = np.array([b[1] is base for b in built])
    pts = np.empty((*query.shape, 2))
    if on_base.any():
        pts[on_base] = _resample(base, query[on_base])
    for k in np.flatnonzero(~on_base):
        pts[k] = _resample(built[k][1], query[k])
    paths, wps, box, ahead, behind = np.split(
        pts, np.cumsum([PATH_POINTS, SPEED_POINTS, FUTURE_STEPS, FUTURE_STEPS]), axis=1
    )
    if own_path:  # speed kinds keep the expert's path itself
        paths[on_base] = np.asarray(frame.path, np.float64).reshape(PATH_POINTS, 2)

    # Safety and drivability of the 5 Hz boxes, all candidates at once.
    c, s = math.cos(ego[2]), math.sin(ego[2])
    traj = np.empty((1, g, FUTURE_STEPS, 4))
    traj[0, :, :, 0] = ego[0] + c * box[..., 0] - s * box[..., 1]
    traj[0, :, :, 1] = ego[1] + s * box[..., 0] + c * box[..., 1]
    traj[0, :, :, 2] = ego[2] + np.arctan2(ahead[..., 1] - behind[..., 1], ahead[..., 0] - behind[..., 0])
    traj[0, :, :, 3] = speed[rows, SPEED_POINTS:]
    if ignore_followers and len(scene.agent_box) == len(scene.agent_future):
        keep = ~_followers(scene)
        scene.agent_box, scene.agent_kind = scene.agent_box[keep], scene.agent_kind[keep]
        scene.agent_future = scene.agent_future[keep]
    has_lanes = len(scene.lanes) >= 2 and len(scene.lane_start) >= 2 and scene.lane_start[-1] >= 2
    if has_lanes:
        scene.lanes, scene.lane_start = _lanes_near(scene.lanes, scene.lane_start, traj)
    batch = DreamBatch.stack([scene])
    hits = overlaps(batch, traj)[0]
    if not has_lanes:  # nothing to check against: not labelled off road
        off_road = np.zeros(g, bool)
    elif batch.lane_start[0, -1] < 2:  # no lane anywhere near the candidates
        off_road = np.ones(g, bool)
    else:
        short = batch.ego_extent * [DRIVABLE_LENGTH_FACTOR, 1.0]
        off_road = drivable(Rollouts(replace(batch, ego_extent=short), traj))[0].any(axis=1)
    limit = _speed_limit(frame, ego)

    out = []
    for k, (i, _, rule_ok, target_kind) in enumerate(built):
        final = float(speed[i, SPEED_POINTS - 1])
        safe = not hits[k].any()
        allowed = bool(not off_road[k] and rule_ok and final <= limit)
        reason = None
        if not safe:
            reason = "collision"
        elif off_road[k]:
            reason = "off_road"
        elif not allowed:
            reason = "not_allowed"
        out.append(DreamedAction(
            kind=kinds[i], path=paths[k].astype(np.float32), speed_waypoints=wps[k].astype(np.float32),
            allowed=allowed, safe=safe,
            collision_kind=None if safe else _first_hit(scene, traj[0, k], int(np.argmax(hits[k]))),
            reason=reason, target_kind=target_kind, final_speed=final,
        ))
    return out


def _first_hit(scene: DreamScene, traj: np.ndarray, h: int) -> str:
    """AgentKind name of the agent the ego box of row h overlaps at step h (the nearest of several)."""
    boxes = scene.agent_future[:, h]
    ok = np.flatnonzero(np.isfinite(boxes).all(axis=1))  # a NaN box would pass the overlap test
    x, y, yaw = traj[h, :3]
    ego_box = np.array([x, y, yaw, scene.ego_extent[0], scene.ego_extent[1]])
    hit = ok[overlap_mask(ego_box, np.ascontiguousarray(boxes[ok]))]
    if len(hit) == 0:
        return "object"
    return _kind_name(scene.agent_kind, int(hit[np.argmin(np.hypot(boxes[hit, 0] - x, boxes[hit, 1] - y))]))
