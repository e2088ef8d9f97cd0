"""Lane-level routing for `envs.routes`: shortest paths over a `LaneGraph` and the dense `Route` builder.

A path is a list of `Piece`s, each a stretch `[s0, s1]` (metres along the lane centre) of one lane.
Consecutive pieces are joined either through the lane graph (the previous piece ends where its lane
ends and the next one starts at 0 on a successor) or by a lane change (`Piece.change` != 0: the next
piece is the left or right neighbour in the same edge, at the same relative position). The dense
builder samples the pieces along lane centres, blends each lane change over `LANE_CHANGE_BLEND` metres,
resamples at `Route.POINTS_PER_METER` and attaches the navigation commands.
"""

from __future__ import annotations

import heapq
import itertools
import math
import weakref
from dataclasses import dataclass

import numpy as np

from envs.maps.network import LaneGraph
from envs.scene import RoadOption, Route

LANE_CHANGE_COST = 10.0  # metres of driving a lane change is worth when ranking paths
LANE_CHANGE_MIN_LANE = 10.0  # no lane change on a lane shorter than this
LANE_CHANGE_BLEND = 15.0  # metres over which a lane change moves across
TURN_THRESHOLD = math.radians(30.0)  # junction turn angle above which the command is LEFT / RIGHT
TARGET_SPACING = 50.0  # metres, the largest gap between sparse target points
BACK_TOLERANCE = 0.5  # metres a target may lie behind the position on the same lane and count as reached
TRIM_INTERNAL = 1.0  # metres: a route's first / last stretch of a junction lane shorter than this is dropped
TANGENT_SMOOTH = 10  # samples either side averaged for the lateral direction of lane-change blends


@dataclass(frozen=True)
class Piece:
    lane: int
    s0: float
    s1: float
    change: int = 0  # +1 / -1 when this piece is entered by a lane change to the left / right


class RouteGraph:
    """Derived per-network data for routing: lane arc lengths, adjacency lists, junction nodes."""

    def __init__(self, lanes: LaneGraph) -> None:
        self.lanes = lanes
        n = len(lanes)
        counts = np.diff(lanes.offsets)
        seg = np.linalg.norm(np.diff(lanes.points, axis=0), axis=1)
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        lane_of_point = np.repeat(np.arange(n), counts)
        self.arc = arc - arc[lanes.offsets[:-1]][lane_of_point]  # arc length from each lane's start
        ends = np.maximum(lanes.offsets[1:] - 1, lanes.offsets[:-1])
        self.length = np.where(counts > 0, self.arc[ends], 0.0)
        self.succ: list[list[int]] = [
            [int(j) for j in lanes.successors(i) if lanes.drivable[j]] for i in range(n)
        ]
        self.left = lanes.left.tolist()
        self.right = lanes.right.tolist()
        self.internal = lanes.is_internal.tolist()
        self.internal_mask = np.asarray(lanes.is_internal, np.bool_)
        self.node_of: dict[int, str] = {}
        for i in range(n):
            if self.internal[i]:
                self.node_of[i] = lanes.edge_of_lane[i][1:].rsplit("_", 1)[0]
        self.junctions = self._decision_nodes()

    def _decision_nodes(self) -> set[str]:
        """Nodes where the road branches or merges (real junctions), not mere joins of two roads."""
        lanes = self.lanes
        outs: dict[tuple[str, str], set[str]] = {}
        ins: dict[tuple[str, str], set[str]] = {}
        for a in range(len(lanes)):
            if self.internal[a] or not lanes.drivable[a]:
                continue
            for v in self.succ[a]:
                if not self.internal[v]:
                    continue
                node = self.node_of[v]
                stack, seen = [v], {v}
                while stack:
                    u = stack.pop()
                    for w in self.succ[u]:
                        if self.internal[w]:
                            if w not in seen:
                                seen.add(w)
                                stack.append(w)
                            continue
                        e_in, e_out = lanes.edge_of_lane[a], lanes.edge_of_lane[w]
                        outs.setdefault((node, e_in), set()).add(e_out)
                        ins.setdefault((node, e_out), set()).add(e_in)
        nodes = {node for (node, _), e in outs.items() if len(e) > 1}
        nodes |= {node for (node, _), e in ins.items() if len(e) > 1}
        return nodes

    # ------------------------------------------------------------------------------ geometry
    def sample(self, lane: int, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points at arc lengths `s` along the lane centre, and the unit tangent there."""
        a, b = self.lanes.offsets[lane], self.lanes.offsets[lane + 1]
        arc, pts = self.arc[a:b], self.lanes.points[a:b]
        xy = np.stack([np.interp(s, arc, pts[:, 0]), np.interp(s, arc, pts[:, 1])], axis=1)
        k = np.clip(np.searchsorted(arc, s, side="right") - 1, 0, max(len(arc) - 2, 0))
        d = pts[np.minimum(k + 1, len(pts) - 1)] - pts[k]
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
        if len(d) > 2 * TANGENT_SMOOTH:  # average over ~2 m so normals turn smoothly at polyline vertices
            kernel = np.ones(2 * TANGENT_SMOOTH + 1)
            padded = np.pad(d, ((TANGENT_SMOOTH, TANGENT_SMOOTH), (0, 0)), mode="edge")
            d = np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in (0, 1)], axis=1)
            d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
        return xy, d

    def project(self, lane: int, xy: np.ndarray) -> float:
        """Arc length of the point on the lane centre nearest to `xy`."""
        a, b = self.lanes.offsets[lane], self.lanes.offsets[lane + 1]
        pts, arc = self.lanes.points[a:b], self.arc[a:b]
        if len(pts) < 2:
            return 0.0
        d = np.diff(pts, axis=0)
        t = np.einsum("ij,ij->i", xy - pts[:-1], d) / np.maximum(np.einsum("ij,ij->i", d, d), 1e-12)
        t = np.clip(t, 0.0, 1.0)
        k = int(np.argmin(np.linalg.norm(pts[:-1] + t[:, None] * d - xy, axis=1)))
        return float(arc[k] + t[k] * (arc[k + 1] - arc[k]))

    def lane_heading(self, lane: int, at_end: bool, reach: float = 2.0) -> float:
        """Heading over the first (or last) `reach` metres of the lane."""
        length = float(self.length[lane])
        s = np.array([length - min(reach, length), length] if at_end else [0.0, min(reach, length)])
        xy, tan = self.sample(lane, s)
        d = xy[1] - xy[0]
        return math.atan2(d[1], d[0]) if np.hypot(*d) > 1e-6 else math.atan2(tan[0, 1], tan[0, 0])

    def can_change(self, lane: int, s: float) -> bool:
        length = self.length[lane]
        return not self.internal[lane] and length >= LANE_CHANGE_MIN_LANE and s < length - 1.0

    # ------------------------------------------------------------------------------- search
    def search(
        self, start: tuple[int, float], targets: list[tuple[int, float]], cutoff: float = math.inf
    ) -> list[tuple[float, list[Piece]] | None]:
        """Cheapest paths from `start` (lane, s) to each target (lane, s): (cost, pieces) or None.

        Dijkstra over (lane, entry s) states: follow a lane to its end and on to a successor, or change
        to a neighbour lane of the same edge at the current position for `LANE_CHANGE_COST`.
        """
        by_lane: dict[int, list[int]] = {}
        for k, (lane, _) in enumerate(targets):
            by_lane.setdefault(lane, []).append(k)
        best = [math.inf] * len(targets)
        best_state: list[tuple[int, float] | None] = [None] * len(targets)
        s_start = round(float(start[1]), 3)
        first = (int(start[0]), s_start)
        cost_of = {first: 0.0}
        parent: dict[tuple[int, float], tuple[tuple[int, float], int] | None] = {first: None}
        heap = [(0.0, first)]
        while heap:
            cost, state = heapq.heappop(heap)
            if cost > cost_of[state]:
                continue
            if cost > cutoff or cost >= max(best, default=math.inf):
                break
            lane, s = state
            for k in by_lane.get(lane, ()):
                st = targets[k][1]
                if st >= s - BACK_TOLERANCE and cost + max(st - s, 0.0) < best[k]:
                    best[k], best_state[k] = cost + max(st - s, 0.0), state
            moves: list[tuple[float, tuple[int, float], int]] = []
            rest = max(float(self.length[lane]) - s, 0.0)
            moves += [(cost + rest, (nxt, 0.0), 0) for nxt in self.succ[lane]]
            if self.can_change(lane, s):
                for nb, side in ((self.left[lane], 1), (self.right[lane], -1)):
                    if nb >= 0:
                        s2 = round(s * float(self.length[nb]) / max(float(self.length[lane]), 1e-9), 3)
                        moves.append((cost + LANE_CHANGE_COST, (nb, s2), side))
            for c, nxt_state, side in moves:
                if c < cost_of.get(nxt_state, math.inf):
                    cost_of[nxt_state] = c
                    parent[nxt_state] = (state, side)
                    heapq.heappush(heap, (c, nxt_state))
        out: list[tuple[float, list[Piece]] | None] = []
        for k, state in enumerate(best_state):
            out.append(None if state is None else (best[k], self._pieces(parent, state, targets[k][1])))
        return out

    def _pieces(self, parent: dict, state: tuple[int, float], s_end: float) -> list[Piece]:
        chain: list[tuple[tuple[int, float], int]] = []
        cur: tuple[tuple[int, float], int] | None = (state, 0)
        side_in = 0
        while cur is not None:
            st, _ = cur
            link = parent[st]
            side_in = 0 if link is None else link[1]
            chain.append((st, side_in))
            cur = link
        chain.reverse()
        pieces: list[Piece] = []
        for i, ((lane, s), side) in enumerate(chain):
            if i + 1 < len(chain):
                nxt_side = chain[i + 1][1]
                s1 = s if nxt_side != 0 else float(self.length[lane])
            else:
                s1 = max(s, float(s_end))
            pieces.append(Piece(lane, s, s1, side))
        return self._spread_changes(pieces)

    def _spread_changes(self, pieces: list[Piece]) -> list[Piece]:
        """Spread each run of lane changes evenly over the stretch of the edge it happens on."""
        out: list[Piece] = []
        i = 0
        while i < len(pieces):
            j = i
            while j + 1 < len(pieces) and pieces[j + 1].change != 0:
                j += 1
            if j == i:
                out.append(pieces[i])
                i += 1
                continue
            run = pieces[i : j + 1]
            u0 = run[0].s0 / max(float(self.length[run[0].lane]), 1e-9)
            u1 = run[-1].s1 / max(float(self.length[run[-1].lane]), 1e-9)
            k = len(run)
            for m, p in enumerate(run):
                length = float(self.length[p.lane])
                a = p.s0 if m == 0 else (u0 + (u1 - u0) * m / k) * length
                b = p.s1 if m == k - 1 else (u0 + (u1 - u0) * (m + 1) / k) * length
                out.append(Piece(p.lane, a, max(a, b), p.change))
            i = j + 1
        return out


_CACHE: dict[int, tuple[weakref.ref, RouteGraph]] = {}


def route_graph(lanes: LaneGraph) -> RouteGraph:
    """The (cached) `RouteGraph` of a lane graph."""
    hit = _CACHE.get(id(lanes))
    if hit is not None and hit[0]() is lanes:
        return hit[1]
    for key in [k for k, (ref, _) in _CACHE.items() if ref() is None]:
        del _CACHE[key]
    graph = RouteGraph(lanes)
    _CACHE[id(lanes)] = (weakref.ref(lanes), graph)
    return graph


def join_pieces(parts: list[list[Piece]], graph: RouteGraph | None = None) -> list[Piece]:
    """Concatenate sub-paths, merging the shared stretch where one ends and the next begins.

    With `graph`, a route that only touches a junction (its first or last piece is under
    `TRIM_INTERNAL` metres of a junction-internal lane) is trimmed to the lane before (after) it.
    """
    out: list[Piece] = []
    for part in parts:
        for p in part:
            if out and p.change == 0 and out[-1].lane == p.lane and p.s0 >= out[-1].s0 - BACK_TOLERANCE:
                last = out[-1]
                out[-1] = Piece(last.lane, last.s0, max(last.s1, p.s1), last.change)
            else:
                out.append(p)
    if graph is not None:
        while len(out) > 1 and graph.internal[out[-1].lane] and out[-1].s1 - out[-1].s0 < TRIM_INTERNAL:
            out.pop()
        while len(out) > 1 and graph.internal[out[0].lane] and out[0].s1 - out[0].s0 < TRIM_INTERNAL:
            out.pop(0)
            out[0] = Piece(out[0].lane, out[0].s0, out[0].s1, 0)
    return out


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def build_route(graph: RouteGraph, pieces: list[Piece], route_id: str, town: str = "") -> Route:
    """Dense `Route` along `pieces`: lane centres, blended lane changes, commands and target points."""
    lanes = graph.lanes
    step = 1.0 / Route.POINTS_PER_METER
    pts, tangents, lane_ix, along, changes = [], [], [], [], []  # changes: first raw index on a new lane
    dist = 0.0
    n_raw = 0
    for p in pieces:
        if n_raw and p.change != 0:  # start the new lane level with the old one: the step is purely lateral
            s0 = min(graph.project(p.lane, pts[-1][-1]), p.s1)
            p = Piece(p.lane, s0, p.s1, p.change)
        n = max(math.ceil((p.s1 - p.s0) / step), 1)
        s = np.linspace(p.s0, p.s1, n + 1)
        xy, tan = graph.sample(p.lane, s)
        if n_raw and p.change == 0:  # the joint duplicates the previous piece's last point
            xy, tan, s = xy[1:], tan[1:], s[1:]
        if n_raw and p.change != 0:
            changes.append(n_raw)
        pts.append(xy)
        tangents.append(tan)
        lane_ix.append(np.full(len(xy), p.lane, np.int32))
        along.append(dist + (s - p.s0))
        dist += p.s1 - p.s0
        n_raw += len(xy)
    raw = np.concatenate(pts)
    lane_raw = np.concatenate(lane_ix)
    along_raw = np.concatenate(along)
    command = np.full(len(raw), int(RoadOption.LANEFOLLOW), np.int8)

    # Lane changes: shift points on either side along their normals so the route crosses smoothly.
    tangent = np.concatenate(tangents)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    changes = sorted(set(changes))
    shifted = raw.copy()
    for c, k in enumerate(changes):
        lat = float(np.dot(raw[k] - raw[k - 1], normal[k - 1]))
        prev_at = along_raw[changes[c - 1]] if c > 0 else None
        next_at = along_raw[changes[c + 1]] if c + 1 < len(changes) else None
        here = along_raw[k]
        before = min(LANE_CHANGE_BLEND / 2, here - along_raw[0] if prev_at is None else (here - prev_at) / 2)
        after = min(LANE_CHANGE_BLEND / 2, along_raw[-1] - here if next_at is None else (next_at - here) / 2)
        lo = int(np.searchsorted(along_raw, here - before, side="left"))
        hi = int(np.searchsorted(along_raw, here + after, side="right"))
        lo = min(lo, k - 1)
        if before + after <= 0:
            continue
        idx = np.arange(lo, hi)
        w = _smoothstep((along_raw[idx] - (here - before)) / (before + after))
        sign = np.where(idx < k, w, w - 1.0)
        shifted[idx] += (sign * lat)[:, None] * normal[idx]
        side = RoadOption.CHANGELANELEFT if lat > 0 else RoadOption.CHANGELANERIGHT
        command[idx] = int(side)

    # Junctions: LEFT / RIGHT / STRAIGHT over each run of internal lanes at a decision node, from the
    # heading change between the 2 m before the run and the 2 m after it (= the internal lanes' entry and
    # exit headings, measured on the neighbouring lanes so that tiny internal lanes do not matter).
    internal = graph.internal_mask[lane_raw]
    i = 0
    while i < len(raw):
        if not internal[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(raw) and internal[j + 1]:
            j += 1
        if graph.node_of.get(int(lane_raw[i])) in graph.junctions:
            if i > 0 and j < len(raw) - 1:
                entry = _heading(raw, along_raw, along_raw[i], -2.0)
                exit_ = _heading(raw, along_raw, along_raw[j], 2.0)
            else:  # the route starts or ends inside the junction: the internal lanes' own geometry
                entry = graph.lane_heading(int(lane_raw[i]), False)
                exit_ = graph.lane_heading(int(lane_raw[j]), True)
            turn = exit_ - entry
            turn = math.atan2(math.sin(turn), math.cos(turn))
            option = RoadOption.STRAIGHT
            if turn > TURN_THRESHOLD:
                option = RoadOption.LEFT
            elif turn < -TURN_THRESHOLD:
                option = RoadOption.RIGHT
            command[i : j + 1] = int(option)
        i = j + 1

    # Resample at exactly POINTS_PER_METER along the (blended) polyline.
    seg = np.linalg.norm(np.diff(shifted, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-6])
    shifted, lane_raw, command = shifted[keep], lane_raw[keep], command[keep]
    cum_raw = np.concatenate([[0.0], np.cumsum(seg[seg > 1e-6])])
    total = float(cum_raw[-1])
    cum = np.arange(0.0, total, step)
    if len(cum) == 0 or total - cum[-1] > 1e-6:
        cum = np.append(cum, total)
    points = np.stack([np.interp(cum, cum_raw, shifted[:, c]) for c in (0, 1)], axis=1)
    src = np.clip(np.searchsorted(cum_raw, cum + 1e-9, side="right") - 1, 0, len(cum_raw) - 1)
    lane_out = lane_raw[src].astype(np.int32)
    cmd_out = command[src].astype(np.int8)
    if len(points) > 1:
        d = np.gradient(points, axis=0)
        yaw = np.arctan2(d[:, 1], d[:, 0])
    else:
        yaw = np.zeros(len(points))
    tp_idx = target_indices(cmd_out, cum)
    return Route(
        route_id=route_id,
        points=points,
        yaw=yaw,
        command=cmd_out,
        lane=lane_out,
        speed_limit=lanes.speed_limit[lane_out].astype(np.float64),
        cum_length=np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))]),
        target_points=points[tp_idx],
        target_commands=cmd_out[tp_idx],
        town=town,
    )


def _heading(points: np.ndarray, along: np.ndarray, at: float, reach: float) -> float:
    """Heading of the polyline between `at` and `at + reach` metres along it (clamped to its ends)."""
    a, b = sorted((at, at + reach))
    a, b = max(a, along[0]), min(b, along[-1])
    i = min(int(np.searchsorted(along, a, side="left")), len(points) - 1)
    j = max(int(np.searchsorted(along, b, side="right")) - 1, 0)
    d = points[j] - points[i]
    return math.atan2(d[1], d[0])


def target_indices(command: np.ndarray, cum: np.ndarray, spacing: float = TARGET_SPACING) -> np.ndarray:
    """Sparse target points: the start, every command change, the end, and no gap over `spacing`."""
    if len(command) == 0:
        return np.zeros(0, np.int64)
    keys = [0, *np.flatnonzero(command[1:] != command[:-1]) + 1, len(command) - 1]
    keys = sorted(set(int(k) for k in keys))
    out = [keys[0]]
    for a, b in itertools.pairwise(keys):
        gap = cum[b] - cum[a]
        n = math.ceil(gap / spacing - 1e-9)
        for m in range(1, n):
            out.append(int(np.searchsorted(cum, cum[a] + gap * m / n)))
        out.append(b)
    return np.asarray(sorted(set(out)), np.int64)
