"""SimLingo-style bucket tags for recorded frames, used to balance sampling during training.

`bucket_tags(frames, i)` tags frame `i` of a sequence recorded along one drive (neighbouring frames
give the measured acceleration and whether the ego moves off); `tag_frames(frames)` fills
`Frame.buckets` for a whole sequence. A frame can carry several tags. Tags and thresholds:

- `acceleration`: longitudinal acceleration >= ACCEL_THRESHOLD (1.0 m/s^2). Measured as the central
  difference of the ego speed over the neighbouring frames; a lone frame uses the planned one (speed of
  its speed waypoints around 1 s ahead minus the current speed, per second).
- `braking`: acceleration <= -BRAKE_THRESHOLD (1.5 m/s^2) or the applied brake >= BRAKE_PEDAL (0.5)
  while moving faster than STOP_SPEED.
- `stopped`: speed < STOP_SPEED (0.3 m/s).
- `start_from_stop`: stopped, and the ego moves off: a frame within START_HORIZON (2 s) later is faster
  than START_SPEED (1.0 m/s), or the speed waypoints travel more than START_DISTANCE (0.5 m) in 1 s.
- `lateral_control`: |steer| >= STEER_THRESHOLD (0.1) or the label path leaves the straight line ahead
  by >= PATH_OFFSET (1.0 m) within its first 10 m.
- `junction`: the route command is a turn or straight through a junction (LEFT / RIGHT / STRAIGHT).
- `lane_change`: the command is CHANGELANELEFT / CHANGELANERIGHT, or the expert reports a lane change /
  bypass among its hazards (SimLingo's "changed route": leaving the route's lane around an obstacle).
- `lead_vehicle` / `lead_pedestrian` / `lead_bicycle` / `lead_static` / `lead_light` / `lead_sign`: the
  leading object. The expert's cause (the object behind its largest speed reduction) when it names one;
  otherwise the nearest agent whose centre lies within LEAD_LATERAL (1.8 m) of the label path (or the
  straight line ahead) and within LEAD_DISTANCE (30 m) along it.
- `recovery`: set by expert collection with noise injection (`envs.perturbation`), not here: the frame
  lies in a window where the executed control was perturbed, or within its recovery time after it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from envs.geometry import to_ego_frame
from envs.scene import AgentKind, RoadOption
from envs.segments import Frame

TICK_DT = 0.05
ACCEL_THRESHOLD = 1.0
BRAKE_THRESHOLD = 1.5
BRAKE_PEDAL = 0.5
STOP_SPEED = 0.3
START_HORIZON = 2.0
START_SPEED = 1.0
START_DISTANCE = 0.5
STEER_THRESHOLD = 0.1
PATH_OFFSET = 1.0
LEAD_LATERAL = 1.8
LEAD_DISTANCE = 30.0

RECOVERY = "recovery"  # set by collection, not by `tag_frames`: in or just after a perturbation window
BUCKETS = (
    "acceleration",
    "braking",
    "stopped",
    "start_from_stop",
    "lateral_control",
    "junction",
    "lane_change",
    "lead_vehicle",
    "lead_pedestrian",
    "lead_bicycle",
    "lead_static",
    "lead_light",
    "lead_sign",
    RECOVERY,
)

_KIND_TAG = {
    int(AgentKind.VEHICLE): "lead_vehicle",
    int(AgentKind.EMERGENCY): "lead_vehicle",
    int(AgentKind.PARKED_VEHICLE): "lead_vehicle",
    int(AgentKind.PEDESTRIAN): "lead_pedestrian",
    int(AgentKind.BICYCLE): "lead_bicycle",
    int(AgentKind.STATIC): "lead_static",
    int(AgentKind.CONE): "lead_static",
}
_CAUSE_TAG = {
    "vehicle": "lead_vehicle",
    "emergency": "lead_vehicle",
    "parked_vehicle": "lead_vehicle",
    "pedestrian": "lead_pedestrian",
    "bicycle": "lead_bicycle",
    "static": "lead_static",
    "cone": "lead_static",
    "red_light": "lead_light",
    "yellow_light": "lead_light",
    "stop_sign": "lead_sign",
}
_JUNCTION = {int(RoadOption.LEFT), int(RoadOption.RIGHT), int(RoadOption.STRAIGHT)}
_LANE_CHANGE = {int(RoadOption.CHANGELANELEFT), int(RoadOption.CHANGELANERIGHT)}


def acceleration(frames: Sequence[Frame], i: int) -> float:
    """m/s^2 at frame i: central difference over the neighbours, else the planned one (NaN if neither)."""
    lo, hi = max(i - 1, 0), min(i + 1, len(frames) - 1)
    if hi > lo and frames[hi].tick != frames[lo].tick:
        return (frames[hi].speed - frames[lo].speed) / ((frames[hi].tick - frames[lo].tick) * TICK_DT)
    wp = frames[i].speed_waypoints
    if wp is not None:
        v1 = float(np.hypot(*(wp[4] - wp[2]))) / 0.5  # speed around 1 s ahead
        return v1 - frames[i].speed
    return float("nan")


def _moves_off(frames: Sequence[Frame], i: int) -> bool:
    f = frames[i]
    for g in frames[i + 1 :]:
        if (g.tick - f.tick) * TICK_DT > START_HORIZON:
            break
        if g.speed > START_SPEED:
            return True
    wp = f.speed_waypoints
    return wp is not None and float(np.hypot(*wp[3])) > START_DISTANCE


def leading_object(frame: Frame) -> str | None:
    """The leading-object tag of a frame (see the module docstring), or None."""
    if frame.cause in _CAUSE_TAG:
        return _CAUSE_TAG[frame.cause]
    if not len(frame.agent_ids):
        return None
    centres = to_ego_frame(np.asarray(frame.agent_box)[:, :2], *np.asarray(frame.ego, float)[:3])
    line = np.vstack([[0.0, 0.0], frame.path]) if frame.path is not None else None
    if line is None:
        line = np.stack([np.arange(0.0, LEAD_DISTANCE + 1.0), np.zeros(int(LEAD_DISTANCE) + 1)], axis=1)
    seg_len = np.hypot(*np.diff(line, axis=0).T)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    best, best_s = None, np.inf
    for k, c in enumerate(centres):
        d = np.hypot(line[:, 0] - c[0], line[:, 1] - c[1])
        j = int(np.argmin(d))
        s = cum[j]
        if j == 0 and c[0] <= 0.0:  # behind the ego
            continue
        if d[j] <= LEAD_LATERAL and 0.0 < s <= LEAD_DISTANCE and s < best_s:
            best, best_s = _KIND_TAG.get(int(frame.agent_kind[k])), s
    return best


def bucket_tags(frames: Sequence[Frame], i: int) -> list[str]:
    """Bucket tags of frame i of a sequence recorded along one drive (in `BUCKETS` order)."""
    f = frames[i]
    tags: set[str] = set()
    a = acceleration(frames, i)
    if a >= ACCEL_THRESHOLD:
        tags.add("acceleration")
    moving = f.speed >= STOP_SPEED
    if a <= -BRAKE_THRESHOLD or (float(f.control[1]) >= BRAKE_PEDAL and moving):
        tags.add("braking")
    if not moving:
        tags.add("stopped")
        if _moves_off(frames, i):
            tags.add("start_from_stop")
    if abs(float(f.control[2])) >= STEER_THRESHOLD or (
        f.path is not None and float(np.abs(f.path[:10, 1]).max()) >= PATH_OFFSET
    ):
        tags.add("lateral_control")
    if int(f.command) in _JUNCTION:
        tags.add("junction")
    if int(f.command) in _LANE_CHANGE or any(h.startswith(("lane_change", "bypass")) for h in f.hazards):
        tags.add("lane_change")
    lead = leading_object(f)
    if lead:
        tags.add(lead)
    return [t for t in BUCKETS if t in tags]


def tag_frames(frames: Sequence[Frame]) -> None:
    """Fill `Frame.buckets` of every frame of a sequence (replacing what was there)."""
    tags = [bucket_tags(frames, i) for i in range(len(frames))]
    for f, t in zip(frames, tags, strict=True):
        f.buckets = t
