"""Road-topology queries scenarios need to place their actors: junctions along the route, the other
approaches of a junction, lanes upstream / downstream of a point, the opposite-direction lane.

Everything works on `LaneGraph` (SUMO lanes: normal lanes link to normal lanes through junction-internal
lanes, whose edge ids are ':<junction>_<n>').
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from envs.scene import Route


def wrap(angle: float) -> float:
    return math.atan2(math.sin(angle), math.cos(angle))


def junction_of(lanes, lane: int) -> str | None:
    """Junction id of an internal lane (None for a normal lane)."""
    if lane < 0 or not lanes.is_internal[lane]:
        return None
    return lanes.edge_of_lane[lane][1:].rsplit("_", 1)[0]


def lane_heading(lanes, lane: int, at_end: bool) -> float:
    pl = lanes.polyline(lane)
    d = pl[-1] - pl[-2] if at_end else pl[1] - pl[0]
    return math.atan2(d[1], d[0])


def turn_direction(yaw_in: float, yaw_out: float) -> str:
    """'left', 'right' or 'straight' for a heading change (30 degree threshold)."""
    d = wrap(yaw_out - yaw_in)
    if d > math.radians(30):
        return "left"
    if d < -math.radians(30):
        return "right"
    return "straight"


def predecessors(lanes, lane: int) -> list[int]:
    """Lanes whose successor list contains `lane` (cached per LaneGraph)."""
    cache = getattr(lanes, "_pred_cache", None)
    if cache is None:
        cache = [[] for _ in range(len(lanes))]
        for a in range(len(lanes)):
            for b in lanes.successors(a):
                cache[int(b)].append(a)
        lanes._pred_cache = cache
    return cache[lane]


def normal_successors(lanes, lane: int) -> list[tuple[int, int]]:
    """(internal via lane or -1, next normal lane) pairs reachable from a normal lane."""
    out = []
    for nxt in lanes.successors(lane):
        nxt = int(nxt)
        if lanes.is_internal[nxt]:
            for after in lanes.successors(nxt):
                after = int(after)
                while lanes.is_internal[after]:  # internal lanes may chain (split junction lanes)
                    succ = lanes.successors(after)
                    if len(succ) == 0:
                        break
                    after = int(succ[0])
                if not lanes.is_internal[after]:
                    out.append((nxt, after))
        else:
            out.append((-1, nxt))
    return out


def normal_predecessors(lanes, lane: int) -> list[int]:
    """Normal lanes that lead into `lane` (directly or through a junction)."""
    return sorted(set(normal_predecessors_found(lanes, lane)))


def normal_predecessors_found(lanes, lane: int, through=None) -> list[int]:
    """Normal lanes that lead into `lane`, in the order the walk back finds them (may repeat); with
    `through`, only through junction-internal lanes `through(first internal lane before lane)` allows."""
    out: list[int] = []
    for p in predecessors(lanes, lane):
        if not lanes.is_internal[p]:
            out.append(p)
            continue
        if through is not None and not through(p):
            continue
        stack, seen = [p], set()
        while stack:
            q = stack.pop()
            if q in seen:
                continue
            seen.add(q)
            for pp in predecessors(lanes, q):
                (stack.append(pp) if lanes.is_internal[pp] else out.append(pp))
    return out


def straightest(lanes, options: list[int], yaw: float, at_end: bool = False) -> int:
    """The option lane whose heading (at its start, or end) is closest to `yaw`."""
    return min(options, key=lambda ln: abs(wrap(lane_heading(lanes, ln, at_end) - yaw)))


def upstream(lanes, lane: int, pos: float, distance: float) -> tuple[int, float]:
    """(lane, position) `distance` metres before (`lane`, `pos`) against the direction of travel,
    following the straightest predecessors; stops at the network's edge."""
    remaining = distance - pos
    while remaining > 0:
        preds = [p for p in normal_predecessors(lanes, lane) if lanes.drivable[p]]
        if not preds:
            return lane, 0.0
        lane = straightest(lanes, preds, lane_heading(lanes, lane, at_end=False), at_end=True)
        if remaining <= lanes.length[lane]:
            return lane, float(lanes.length[lane] - remaining)
        remaining -= float(lanes.length[lane])
    return lane, -remaining


def downstream_edges(lanes, lane: int, length: float, prefer: str = "straight") -> list[str]:
    """Edges from `lane`'s edge onwards covering at least `length` metres, choosing at each junction the
    successor that turns as `prefer` says ('straight', 'left' or 'right') when there is one."""
    edges = [lanes.edge_of_lane[lane]]
    covered = float(lanes.length[lane])
    seen = {lane}
    while covered < length:
        succ = [(v, n) for v, n in normal_successors(lanes, lane) if lanes.drivable[n] and n not in seen]
        if not succ:
            break
        yaw = lane_heading(lanes, lane, at_end=True)
        wanted = [n for _, n in succ if turn_direction(yaw, lane_heading(lanes, n, False)) == prefer]
        lane = wanted[0] if wanted else straightest(lanes, [n for _, n in succ], yaw)
        seen.add(lane)
        if lanes.edge_of_lane[lane] != edges[-1]:
            edges.append(lanes.edge_of_lane[lane])
        covered += float(lanes.length[lane])
    return edges


def opposite_lane(lanes, x: float, y: float, yaw: float, radius: float = 8.0) -> tuple[int, float]:
    """(lane, position) of the nearest drivable lane running against `yaw` near (x, y), or (-1, 0)."""
    for lane, _dist, s, lyaw in lanes.nearest_lanes(x, y, radius=radius):
        if not lanes.is_internal[lane] and abs(wrap(lyaw - yaw)) > math.radians(150):
            return int(lane), float(s)
    return -1, 0.0


@dataclass
class JunctionPass:
    """The route's way through one junction."""

    junction: str
    entry_index: int  # first dense route index inside the junction
    exit_index: int  # first dense route index after it
    entry_s: float
    exit_s: float
    in_lane: int  # normal lane the route arrives on
    out_lane: int  # normal lane the route leaves on
    turn: str  # 'left' | 'right' | 'straight'


def junction_passes(route: Route, lanes) -> list[JunctionPass]:
    """Every junction the route drives through, in order."""
    lane = np.asarray(route.lane)
    internal = np.zeros(len(lane), np.bool_)
    valid = lane >= 0
    internal[valid] = lanes.is_internal[lane[valid]]
    out: list[JunctionPass] = []
    k = 0
    n = len(lane)
    while k < n:
        if not internal[k]:
            k += 1
            continue
        start = k
        while k < n and internal[k]:
            k += 1
        before = next(
            (int(lane[j]) for j in range(start - 1, -1, -1) if lane[j] >= 0 and not internal[j]), -1
        )
        after = next((int(lane[j]) for j in range(k, n) if lane[j] >= 0 and not internal[j]), -1)
        if before < 0 or after < 0:
            continue
        yaw_in = lane_heading(lanes, before, at_end=True)
        yaw_out = lane_heading(lanes, after, at_end=False)
        out.append(
            JunctionPass(
                junction=junction_of(lanes, int(lane[start])) or "",
                entry_index=start,
                exit_index=min(k, n - 1),
                entry_s=float(route.cum_length[start]),
                exit_s=float(route.cum_length[min(k, n - 1)]),
                in_lane=before,
                out_lane=after,
                turn=turn_direction(yaw_in, yaw_out),
            )
        )
    return out


@dataclass
class Approach:
    """A normal lane entering a junction, described relative to the ego's arrival heading."""

    lane: int
    relation: str  # 'same' (ego's road), 'opposite' (oncoming), 'from_left', 'from_right'
    exits: list[tuple[int, int, str]]  # (via internal lane, out lane, turn) reachable from it


def junction_approaches(lanes, jp: JunctionPass) -> list[Approach]:
    """All drivable lanes entering the junction of `jp`, tagged by where they come from for the ego."""
    ego_yaw = lane_heading(lanes, jp.in_lane, at_end=True)
    out: list[Approach] = []
    seen: set[int] = set()
    for i in np.flatnonzero(lanes.is_internal):
        if junction_of(lanes, int(i)) != jp.junction:
            continue
        for p in predecessors(lanes, int(i)):
            if lanes.is_internal[p] or p in seen or not lanes.drivable[p]:
                continue
            seen.add(p)
            yaw = lane_heading(lanes, p, at_end=True)
            d = wrap(yaw - ego_yaw)
            if abs(d) < math.radians(45):
                rel = "same"
            elif abs(d) > math.radians(135):
                rel = "opposite"
            else:
                # heading towards the ego's left means it comes from the ego's right
                rel = "from_right" if d > 0 else "from_left"
            exits = [
                (via, nxt, turn_direction(yaw, lane_heading(lanes, nxt, at_end=False)))
                for via, nxt in normal_successors(lanes, p)
                if via >= 0 and junction_of(lanes, via) == jp.junction and lanes.drivable[nxt]
            ]
            out.append(Approach(p, rel, exits))
    return out
