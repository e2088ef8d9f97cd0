"""Records of driving data: one `Frame` per recorded tick and `TakeoverSegment`s of frames.

Both expert driving (pre-training data) and takeovers are stored as frames, so one on-disk format
(`envs.dataset`) serves both. A takeover segment holds frames t - T_pre .. t + T_take around a trigger
at tick t: the pre-takeover frames carry language labels but no action labels (`path` / `speed_waypoints`
are None), the takeover frames carry the expert's waypoints. Every frame has a scene snapshot with the
agents' recorded future boxes (2 s at 5 Hz) and the expert's future trajectory, which is what the
pseudo-simulator needs to rebuild the scene.

Each frame also carries the local map, so that a vector-space scene can be rebuilt from one frame alone:
- `ego_extent`: the ego's half length and half width;
- `route`: the route's centreline from ROUTE_BEHIND m behind the ego's progress point (its projection
  on the route) to ROUTE_AHEAD m ahead of it, every ROUTE_SPACING m, clipped to the route's ends;
- `lanes` / `lane_start`: the drivable lanes (junction-internal ones included) whose centreline comes
  within LANE_RADIUS m of the ego, as rows (x, y, half_width) resampled every ~LANE_SPACING m, in CSR
  layout (lane k is `lanes[lane_start[k]:lane_start[k + 1]]`). Each lane keeps the stretch from one
  sample before its first sample within the radius to one after its last, so long lanes are clipped
  to the neighbourhood but stay one connected polyline.
All in the world frame. Scenes without a lane graph (hand-made test scenes) give no lanes.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import numpy as np

from envs.geometry import from_ego_frame, polyline_frenet

FUTURE_STEPS = 10  # future boxes / trajectory samples per frame
FUTURE_DT = 0.2  # seconds between them (5 Hz, 2 s)
ROUTE_BEHIND = 10.0  # metres of route kept behind the ego's progress point
ROUTE_AHEAD = 80.0  # metres of route kept ahead of it
ROUTE_SPACING = 1.0  # metres between route samples
LANE_RADIUS = 60.0  # lanes whose centreline comes this close to the ego are kept
LANE_SPACING = 2.0  # metres between lane centreline samples (at most; evenly spaced along each lane)
EGO_EXTENT = (2.45, 1.06)  # half length, half width: EgoState's defaults


@dataclass
class Frame:
    tick: int
    route_id: str
    town: str
    # Observation (what a policy sees)
    image: np.ndarray | None  # (H, W, 3) uint8 camera image, None when not rendered
    speed: float
    target_points: np.ndarray  # (2, 2) ego frame
    command: int  # RoadOption
    # Labels
    language: str = ""
    path: np.ndarray | None = None  # (20, 2) expert path, ego frame, 1 m apart; None = no action label
    speed_waypoints: np.ndarray | None = None  # (10, 2) expert positions every 0.25 s, ego frame
    target_speed: float = float("nan")  # expert's target speed, m/s
    # What was driven
    control: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))  # applied [thr, brk, steer]
    driver: str = "expert"  # "expert" | "policy"
    policy_path: np.ndarray | None = None  # (20, 2) the policy's own path, when it has one
    # Scene snapshot (world frame)
    ego: np.ndarray = field(default_factory=lambda: np.zeros(4))  # x, y, yaw, speed
    agent_ids: list[str] = field(default_factory=list)
    agent_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    agent_box: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))  # x, y, yaw, hl, hw
    agent_speed: np.ndarray = field(default_factory=lambda: np.zeros(0))
    agent_future: np.ndarray = field(default_factory=lambda: np.zeros((0, FUTURE_STEPS, 5)))  # NaN = gone
    expert_future: np.ndarray = field(default_factory=lambda: np.zeros((FUTURE_STEPS, 3)))  # x, y, yaw
    buckets: list[str] = field(default_factory=list)  # SimLingo-style bucket tags
    hazards: list[str] = field(default_factory=list)
    cause: str = ""  # cause object kind of the expert's largest speed reduction ("" = none)
    # Local map (world frame; see the module docstring)
    ego_extent: np.ndarray = field(default_factory=lambda: np.array(EGO_EXTENT))  # half_length, half_width
    route: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (R, 2) route ahead, 1 m apart
    lanes: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (P, 3) x, y, half_width
    lane_start: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int32))  # (L + 1,) CSR offsets


@dataclass
class TakeoverSegment:
    segment_id: str
    trigger: str  # "follow" | "collision" | "restart" | a user trigger's name
    trigger_tick: int
    route_id: str
    town: str
    frames: list[Frame]
    pre_takeover: np.ndarray  # (F,) bool, True on the T_pre frames before the trigger
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.pre_takeover) != len(self.frames):
            raise ValueError(
                f"segment {self.segment_id}: pre_takeover mask has {len(self.pre_takeover)} entries "
                f"for {len(self.frames)} frames"
            )


# ------------------------------------------------------------------------------ building frames
def scene_frame(scene, obs, route_id: str, town: str, with_image: bool = True, **fields: object) -> Frame:
    """A Frame of the tick `scene` / `obs` show: the observation, the scene snapshot and the local map
    (ego size, route ahead, lanes around), futures NaN until `fill_agent_futures`; `fields` sets labels,
    control, driver, ..."""
    ego, agents = scene.ego, scene.agents
    n = len(agents)
    image = obs.image if with_image else None
    lanes, lane_start = local_lanes(scene)
    return Frame(
        tick=int(scene.tick),
        route_id=str(route_id),
        town=town,
        image=None if image is None else np.asarray(image).copy(),
        speed=float(obs.speed),
        target_points=np.asarray(obs.target_points, np.float32).copy(),
        command=int(obs.command),
        ego=np.array([ego.x, ego.y, ego.yaw, ego.speed], np.float64),
        agent_ids=list(agents.ids),
        agent_kind=np.asarray(agents.kind, np.int8).copy(),
        agent_box=np.asarray(agents.box, np.float64).reshape(-1, 5).copy(),
        agent_speed=np.asarray(agents.speed, np.float64).copy(),
        agent_future=np.full((n, FUTURE_STEPS, 5), np.nan),
        expert_future=np.full((FUTURE_STEPS, 3), np.nan),
        ego_extent=np.array([ego.half_length, ego.half_width], np.float64),
        route=route_ahead(scene),
        lanes=lanes,
        lane_start=lane_start,
        **fields,
    )


# ------------------------------------------------------------------------------------- local map
def route_ahead(scene) -> np.ndarray:
    """The route's centreline (R, 2) from ROUTE_BEHIND m behind the ego's progress point to ROUTE_AHEAD m
    ahead of it, every ROUTE_SPACING m (clipped to the route's ends).

    The progress point is the ego's projection on the route, searched near `scene.route_index` (the
    tracker's monotonic progress) and over the whole route when the ego is far from that stretch.
    """
    route = getattr(scene, "route", None)
    if route is None or len(route.points) == 0:
        return np.zeros((0, 2))
    pts = np.ascontiguousarray(route.points, dtype=np.float64)
    cum = np.ascontiguousarray(route.cum_length, dtype=np.float64)
    x, y = float(scene.ego.x), float(scene.ego.y)
    per_m = max(int(getattr(route, "POINTS_PER_METER", 10)), 1)
    start = max(int(getattr(scene, "route_index", 0)) - int(2 * ROUTE_BEHIND * per_m), 0)
    _, s, lat = polyline_frenet(pts, cum, x, y, start, int(4 * ROUTE_BEHIND * per_m))
    if abs(lat) > 5.0:  # off the expected stretch (or a hand-made scene without progress): whole route
        _, s_all, lat_all = polyline_frenet(pts, cum, x, y, 0, len(pts))
        if abs(lat_all) < abs(lat):
            s = s_all
    lo = max(s - ROUTE_BEHIND, float(cum[0]))
    hi = min(s + ROUTE_AHEAD, float(cum[-1]))
    if len(pts) == 1 or hi < lo:
        return pts[:1].copy()
    sq = lo + ROUTE_SPACING * np.arange(math.floor((hi - lo) / ROUTE_SPACING + 1e-9) + 1)
    # Interpolate on the stretch of route points that covers [lo, hi] only.
    i0 = max(int(np.searchsorted(cum, lo, side="right")) - 1, 0)
    i1 = min(int(np.searchsorted(cum, hi, side="left")) + 1, len(cum))
    c, p = cum[i0:i1], pts[i0:i1]
    return np.stack([np.interp(sq, c, p[:, 0]), np.interp(sq, c, p[:, 1])], axis=1)


@dataclass
class _LaneSamples:
    """Every drivable lane of a lane graph resampled every <= LANE_SPACING m, packed (built once a graph)."""

    rows: np.ndarray  # (N, 3) x, y, half_width
    start: np.ndarray  # (K + 1,) int64: lane k is rows[start[k]:start[k + 1]]
    bbox: np.ndarray  # (K, 4) xmin, ymin, xmax, ymax of each lane's samples


_LANE_CACHE: dict[int, tuple[weakref.ref, _LaneSamples]] = {}


def _resample_lanes(lanes) -> _LaneSamples:
    rows, counts = [], []
    for i in np.flatnonzero(np.asarray(lanes.drivable, bool)).tolist():
        pl = np.asarray(lanes.polyline(i), np.float64)
        if len(pl) == 0:
            continue
        cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pl, axis=0).T))])
        n = max(math.ceil(cum[-1] / LANE_SPACING - 1e-9), 1) if cum[-1] > 0 else 0
        sq = np.linspace(0.0, cum[-1], n + 1)
        xy = np.stack([np.interp(sq, cum, pl[:, 0]), np.interp(sq, cum, pl[:, 1])], axis=1) if n else pl[:1]
        rows.append(np.column_stack([xy, np.full(len(xy), 0.5 * float(lanes.width[i]))]))
        counts.append(len(xy))
    if not rows:
        return _LaneSamples(np.zeros((0, 3)), np.zeros(1, np.int64), np.zeros((0, 4)))
    packed = np.concatenate(rows)
    start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    bbox = np.stack(
        [
            np.minimum.reduceat(packed[:, 0], start[:-1]),
            np.minimum.reduceat(packed[:, 1], start[:-1]),
            np.maximum.reduceat(packed[:, 0], start[:-1]),
            np.maximum.reduceat(packed[:, 1], start[:-1]),
        ],
        axis=1,
    )
    return _LaneSamples(packed, start, bbox)


def _lane_samples(lanes) -> _LaneSamples:
    """The resampled lanes of `lanes`, cached per lane-graph object (dropped when the graph is freed)."""
    key = id(lanes)
    hit = _LANE_CACHE.get(key)
    if hit is not None and hit[0]() is lanes:
        return hit[1]
    samples = _resample_lanes(lanes)
    _LANE_CACHE[key] = (weakref.ref(lanes, lambda _ref, k=key: _LANE_CACHE.pop(k, None)), samples)
    return samples


def local_lanes(scene, radius: float = LANE_RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """(rows (P, 3) x, y, half_width; lane_start (L + 1,) int32) of the drivable lanes whose centreline
    comes within `radius` of the ego, each clipped to one sample beyond its first and last sample in the
    radius. Empty when the scene has no lane graph."""
    graph = getattr(scene, "lanes", None)
    if graph is None or not hasattr(graph, "polyline") or not hasattr(graph, "drivable"):
        return np.zeros((0, 3)), np.zeros(1, np.int32)
    ls = _lane_samples(graph)
    x, y = float(scene.ego.x), float(scene.ego.y)
    # Lanes whose bounding box comes within the radius, then their samples.
    b = ls.bbox
    dx = np.maximum(np.maximum(b[:, 0] - x, x - b[:, 2]), 0.0)
    dy = np.maximum(np.maximum(b[:, 1] - y, y - b[:, 3]), 0.0)
    cand = np.flatnonzero(dx * dx + dy * dy <= radius * radius)
    if len(cand) == 0:
        return np.zeros((0, 3)), np.zeros(1, np.int32)
    a, e = ls.start[cand], ls.start[cand + 1]
    n = e - a
    first = np.concatenate([[0], np.cumsum(n)[:-1]])  # where each candidate starts in `idx`
    idx = np.repeat(a - first, n) + np.arange(int(n.sum()))  # rows of the candidates, concatenated
    p = ls.rows[idx]
    inside = (p[:, 0] - x) ** 2 + (p[:, 1] - y) ** 2 <= radius * radius
    pos = np.arange(len(idx))
    lo = np.minimum.reduceat(np.where(inside, pos, len(idx)), first)
    hi = np.maximum.reduceat(np.where(inside, pos, -1), first)
    keep = hi >= 0
    lo = np.maximum(lo[keep] - 1, first[keep])
    hi = np.minimum(hi[keep] + 1, first[keep] + n[keep] - 1)
    m = hi - lo + 1
    out_first = np.concatenate([[0], np.cumsum(m)])
    sel = np.repeat(lo - out_first[:-1], m) + np.arange(int(out_first[-1]))
    return p[sel], out_first.astype(np.int32)


@dataclass
class SceneSnapshot:
    """What later frames need of one tick: the ego pose and every agent's box by id."""

    ego: np.ndarray  # x, y, yaw, speed
    boxes: dict[str, np.ndarray]


def snapshot(scene) -> SceneSnapshot:
    e = scene.ego
    box = np.asarray(scene.agents.box, np.float64).reshape(-1, 5)
    boxes = {i: box[k].copy() for k, i in enumerate(scene.agents.ids)}
    return SceneSnapshot(np.array([e.x, e.y, e.yaw, e.speed]), boxes)


def future_ticks(tick: int, tick_dt: float = 0.05) -> np.ndarray:
    """The ticks of a frame's FUTURE_STEPS future samples (every FUTURE_DT seconds)."""
    every = max(round(FUTURE_DT / tick_dt), 1)
    return tick + every * np.arange(1, FUTURE_STEPS + 1)


def fill_agent_futures(frame: Frame, snapshots: dict[int, SceneSnapshot]) -> None:
    """`frame.agent_future` from the snapshots of its future ticks (NaN where an agent is gone or the
    episode ended)."""
    fut = np.full((len(frame.agent_ids), FUTURE_STEPS, 5), np.nan)
    for j, t in enumerate(future_ticks(frame.tick).tolist()):
        snap = snapshots.get(t)
        if snap is None:
            continue
        for k, aid in enumerate(frame.agent_ids):
            b = snap.boxes.get(aid)
            if b is not None:
                fut[k, j] = b
    frame.agent_future = fut


def driven_future(frame: Frame, snapshots: dict[int, SceneSnapshot]) -> np.ndarray:
    """The ego's recorded poses (x, y, yaw) at the frame's future ticks (NaN past the episode's end)."""
    out = np.full((FUTURE_STEPS, 3), np.nan)
    for j, t in enumerate(future_ticks(frame.tick).tolist()):
        snap = snapshots.get(t)
        if snap is not None:
            out[j] = snap.ego[:3]
    return out


def planned_future(frame: Frame, speed_waypoints: np.ndarray | None) -> np.ndarray | None:
    """The trajectory a planner intended at `frame`: its speed waypoints (0.25 s apart, ego frame)
    interpolated to the frame's future times and put in the world frame, yaw along the motion (the ego's
    yaw while standing). None without at least two waypoints (callers fall back to `driven_future`)."""
    if speed_waypoints is None or len(speed_waypoints) < 2:
        return None
    x, y, yaw = float(frame.ego[0]), float(frame.ego[1]), float(frame.ego[2])
    sw = np.asarray(speed_waypoints, np.float64)
    t_wp = np.concatenate([[0.0], 0.25 * np.arange(1, len(sw) + 1)])
    pts = np.concatenate([[[0.0, 0.0]], sw], axis=0)
    tq = FUTURE_DT * np.arange(1, FUTURE_STEPS + 1)
    local = np.stack([np.interp(tq, t_wp, pts[:, 0]), np.interp(tq, t_wp, pts[:, 1])], axis=-1)
    world = from_ego_frame(local, x, y, yaw)
    out = np.full((FUTURE_STEPS, 3), np.nan)
    prev, heading = np.array([x, y]), yaw
    for j in range(FUTURE_STEPS):
        d = world[j] - prev
        if math.hypot(d[0], d[1]) > 0.05:
            heading = math.atan2(d[1], d[0])
            prev = world[j]
        out[j] = (world[j, 0], world[j, 1], heading)
    return out
